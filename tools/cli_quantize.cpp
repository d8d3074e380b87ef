// `sllm quantize IN.gguf OUT.gguf TYPE`: offline quantization of a GGUF file's weights.
#include <sys/stat.h>
#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

const char kQuantizeUsage[] =
    "usage: sllm quantize [options] IN.gguf OUT.gguf TYPE\n"
    "\n"
    "Writes a copy of IN with its weight matrices quantized to TYPE (q8_0 or q4_0), keeping\n"
    "all metadata and recording the type in general.file_type. Vectors (norms, biases) stay\n"
    "F32. With q4_0 the output matrix (or the tied token embedding that serves as it) is\n"
    "Q8_0, since it matters most to the result. A matrix whose rows are not whole blocks of\n"
    "32 values keeps its type (F16 if it was F32); each tensor's choice is printed.\n"
    "The output is written under a temporary name and renamed when complete; OUT may not be\n"
    "IN.\n"
    "\n"
    "options:\n"
    "  -t, --threads N   threads (default: OMP_NUM_THREADS, else all cores)\n"
    "  -q, --quiet       do not list the tensors\n"
    "  -h, --help        show this help\n";

// general.file_type values, as llama.cpp numbers them.
constexpr uint32_t kFileTypeQ4_0 = 2, kFileTypeQ8_0 = 7;

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// The type a tensor is stored in: TYPE for weight matrices whose rows are whole blocks.
TensorType choose_type(const TensorInfo& t, TensorType target, bool is_output) {
  const bool matrix = t.n_dims >= 2 && t.type != TensorType::Q8_0 && t.type != TensorType::Q4_0;
  if (!matrix || t.ne[0] < 32) return t.type;
  if (t.ne[0] % kQuantBlock != 0) return t.type == TensorType::F32 ? TensorType::F16 : t.type;
  if (target == TensorType::Q4_0 && is_output) return TensorType::Q8_0;
  return target;
}

}  // namespace

int cmd_quantize(int argc, char** argv) {
  ArgReader args(argc, argv);
  std::vector<std::string> positional;
  int threads = 0;
  bool quiet = false;
  while (!args.done()) {
    std::string value;
    if (args.flag("-h", "--help")) {
      std::fputs(kQuantizeUsage, stdout);
      return 0;
    } else if (args.option("-t", "--threads", threads)) {
    } else if (args.flag("-q", "--quiet")) {
      quiet = true;
    } else if (args.positional(value)) {
      positional.push_back(value);
    } else {
      args.reject();
    }
  }
  if (positional.size() != 3) throw UsageError("expected IN.gguf OUT.gguf TYPE");
  const std::string &in = positional[0], &out = positional[1], &type_name = positional[2];
  TensorType target;
  if (type_name == "q8_0" || type_name == "Q8_0") {
    target = TensorType::Q8_0;
  } else if (type_name == "q4_0" || type_name == "Q4_0") {
    target = TensorType::Q4_0;
  } else {
    throw UsageError("unknown quantization type '" + type_name + "' (this build: q8_0, q4_0)");
  }
  if (in == out || same_file(in, out)) {
    detail::fail("OUT is the input file " + in + "; write the quantized model to another path");
  }

  const Gguf src = Gguf::open(in);
  const bool tied = src.find_tensor("output.weight") == nullptr;
  GgufWriter w(src.alignment());
  for (const auto& [key, value] : src.metadata()) {
    if (key != "general.alignment") w.set(key, value);
  }
  w.set("general.file_type",
        GgufValue::u32(target == TensorType::Q8_0 ? kFileTypeQ8_0 : kFileTypeQ4_0));
  w.set("general.quantization_version", GgufValue::u32(2));

  uint64_t total = 0, done = 0;
  for (const TensorInfo& t : src.tensors()) total += t.n_bytes;
  ProgressBar bar;
  const bool show_bar = ::isatty(STDERR_FILENO);
  uint64_t in_bytes = 0, out_bytes = 0;
  for (const TensorInfo& t : src.tensors()) {
    const bool is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
    const TensorType type = choose_type(t, target, is_output);
    std::vector<uint64_t> dims(t.ne, t.ne + t.n_dims);
    const uint64_t rows = t.n_rows(), cols = t.ne[0];
    const uint64_t src_row = tensor_row_bytes(t.type, cols), dst_row = tensor_row_bytes(type, cols);
    in_bytes += t.n_bytes;
    out_bytes += dst_row * rows;
    if (!quiet) {
      std::printf("%-32s %-16s %5s -> %-5s%s\n", t.name.c_str(), t.shape_string().c_str(),
                  tensor_type_name(t.type), tensor_type_name(type),
                  type != target && t.n_dims >= 2 && t.ne[0] % kQuantBlock != 0
                      ? "  (rows are not whole blocks of 32)"
                      : "");
    }
    if (type == t.type) {
      w.add_tensor(t.name, type, dims, t.data, t.n_bytes);
      continue;
    }
    w.add_tensor(t.name, type, dims, [&, type, rows, cols, src_row, dst_row](uint8_t* dst) {
    // Rows are independent: quantize them in parallel, each from its own f32 copy.
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads())
      {
        std::vector<float> row(cols);
#pragma omp for schedule(dynamic, 16)
        for (uint64_t r = 0; r < rows; ++r) {
          dequantize_row(t.type, t.data + r * src_row, row.data(), cols);
          quantize_row(type, row.data(), dst + r * dst_row, cols);
        }
      }
      done += t.n_bytes;
      if (show_bar) bar.update(done, total);
    });
  }
  w.write(out);
  std::printf("wrote %s: %s of tensor data -> %s (%s)\n", out.c_str(),
              human_bytes(in_bytes).c_str(), human_bytes(out_bytes).c_str(),
              tensor_type_name(target));
  return 0;
}

}  // namespace cli
}  // namespace sllm
