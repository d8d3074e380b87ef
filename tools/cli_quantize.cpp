// `sllm quantize IN.gguf OUT.gguf TYPE`: offline quantization of a GGUF file's weights, with the
// type names, per-tensor rules and general.file_type values of llama.cpp's llama-quantize.
#include <sys/stat.h>
#include <omp.h>
#include <unistd.h>

#include <cctype>
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
    "Writes a copy of IN with its weight matrices quantized, keeping all metadata and recording\n"
    "TYPE in general.file_type as llama.cpp numbers it. Vectors (norms, biases) stay F32.\n"
    "TYPE (as llama-quantize names them; upper case works too):\n"
    "  q8_0    Q8_0\n"
    "  q4_0    Q4_0; the output matrix (or the tied token embedding that serves as it) Q6_K\n"
    "  q5_0    Q5_0; the output matrix Q6_K\n"
    "  q2_k    Q2_K; Q6_K for the output matrix, Q3_K for ffn_down and attn_output, and for\n"
    "          attn_v Q4_K (Q3_K where fewer than 4 query heads share a KV head)\n"
    "  q3_k_s  Q3_K; the output matrix Q6_K\n"
    "  q3_k_m  Q3_K; Q6_K for the output matrix, Q4_K for attn_output, fused attn_qkv, attn_v\n"
    "          (Q5_K in the first 2 layers) and ffn_down (Q5_K in the first sixteenth)\n"
    "  q3_k    the same as q3_k_m\n"
    "  q3_k_l  Q3_K; Q6_K for the output matrix, Q5_K for attn_v, ffn_down and attn_output,\n"
    "          Q4_K for fused attn_qkv\n"
    "  q4_k_m  Q4_K; Q6_K for the output matrix and for attn_v and ffn_down in the first and\n"
    "          last eighth of the layers and every third layer between; Q5_K for fused\n"
    "          attn_qkv\n"
    "  q4_k    the same as q4_k_m\n"
    "  q4_k_s  Q4_K; Q6_K for the output matrix, Q5_K for attn_v in the first 4 layers and\n"
    "          for ffn_down in the first eighth of the layers\n"
    "  q5_k_m  Q5_K; Q6_K for the output matrix, for fused attn_qkv, and for attn_v and\n"
    "          ffn_down in the layers where q4_k_m gives them Q6_K\n"
    "  q5_k    the same as q5_k_m\n"
    "  q5_k_s  Q5_K; the output matrix Q6_K\n"
    "  q6_k    Q6_K\n"
    "These are llama-quantize's choices without an importance matrix, for models with one\n"
    "expert per layer and under 70B parameters.\n"
    "A matrix whose rows are not whole blocks of its type falls back: Q2_K and Q3_K to Q4_0,\n"
    "Q4_K to Q5_0, Q5_K and Q6_K to Q8_0 (rows of 32s), else F16; each tensor's type and any\n"
    "fallback is printed.\n"
    "The output is written under a temporary name and renamed when complete; OUT may not be\n"
    "IN.\n"
    "\n"
    "options:\n"
    "  -t, --threads N   threads (default: OMP_NUM_THREADS, else all cores)\n"
    "  -q, --quiet       do not list the tensors\n"
    "  -h, --help        show this help\n";

// Which tensors of a mix get more bits than its base type.
enum class Rule { kUniform, kQ2K, kQ3KM, kQ3KL, kQ4KS, kKM };

// A quantization type of the command line.
struct Mix {
  const char* name;
  TensorType base;     // the type of most weight matrices
  TensorType output;   // the type of the output matrix
  uint32_t file_type;  // general.file_type (llama.cpp's LLAMA_FTYPE_MOSTLY_*)
  Rule rule;
};

const Mix kMixes[] = {
    {"q8_0", TensorType::Q8_0, TensorType::Q8_0, 7, Rule::kUniform},
    {"q4_0", TensorType::Q4_0, TensorType::Q6_K, 2, Rule::kUniform},
    {"q5_0", TensorType::Q5_0, TensorType::Q6_K, 8, Rule::kUniform},
    {"q2_k", TensorType::Q2_K, TensorType::Q6_K, 10, Rule::kQ2K},
    {"q3_k_s", TensorType::Q3_K, TensorType::Q6_K, 11, Rule::kUniform},
    {"q3_k_m", TensorType::Q3_K, TensorType::Q6_K, 12, Rule::kQ3KM},
    {"q3_k", TensorType::Q3_K, TensorType::Q6_K, 12, Rule::kQ3KM},
    {"q3_k_l", TensorType::Q3_K, TensorType::Q6_K, 13, Rule::kQ3KL},
    {"q4_k_m", TensorType::Q4_K, TensorType::Q6_K, 15, Rule::kKM},
    {"q4_k", TensorType::Q4_K, TensorType::Q6_K, 15, Rule::kKM},
    {"q4_k_s", TensorType::Q4_K, TensorType::Q6_K, 14, Rule::kQ4KS},
    {"q5_k_m", TensorType::Q5_K, TensorType::Q6_K, 17, Rule::kKM},
    {"q5_k", TensorType::Q5_K, TensorType::Q6_K, 17, Rule::kKM},
    {"q5_k_s", TensorType::Q5_K, TensorType::Q6_K, 16, Rule::kUniform},
    {"q6_k", TensorType::Q6_K, TensorType::Q6_K, 18, Rule::kUniform},
};

const Mix& find_mix(const std::string& name) {
  std::string lower;
  for (char c : name) lower += char(std::tolower(static_cast<unsigned char>(c)));
  std::string known;
  for (const Mix& mix : kMixes) {
    if (lower == mix.name) return mix;
    known += std::string(known.empty() ? "" : ", ") + mix.name;
  }
  throw UsageError("unknown quantization type '" + name + "' (known: " + known + ")");
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

bool contains(const std::string& s, const char* part) {
  return s.find(part) != std::string::npos;
}

bool ends_with(const std::string& s, const std::string& end) {
  return s.size() >= end.size() && s.compare(s.size() - end.size(), end.size(), end) == 0;
}

// N of a tensor named "blk.N....", else -1.
int layer_of(const std::string& name) {
  if (name.compare(0, 4, "blk.") != 0) return -1;
  int layer = 0;
  size_t i = 4;
  for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])) && layer < 1000000;
       ++i) {
    layer = layer * 10 + (name[i] - '0');
  }
  return i > 4 && i < name.size() && name[i] == '.' ? layer : -1;
}

// Whether a tensor is a weight matrix that the mixes quantize: not a vector, a norm, a position
// or token-type embedding, or a mixture-of-experts router (as llama-quantize decides).
bool is_weight_matrix(const TensorInfo& t) {
  return t.n_dims >= 2 && ends_with(t.name, "weight") && !contains(t.name, "_norm.weight") &&
         !contains(t.name, "ffn_gate_inp.weight") && t.name != "position_embd.weight" &&
         t.name != "token_types.weight";
}

// llama.cpp's layers that get more bits in the _M mixes: the first and last eighth, and every
// third layer between them.
bool more_bits_layer(int layer, int n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

// What the per-layer rules need to know of the model.
struct ModelShape {
  int n_layers = 0;
  int n_gqa = 1;  // query heads per KV head
};

// The type the mix wants for a weight matrix.
TensorType wished_type(const Mix& mix, const std::string& name, bool is_output,
                       const ModelShape& shape) {
  if (is_output) return mix.output;
  const int layer = layer_of(name), n_layers = shape.n_layers;
  const bool attn_v = contains(name, "attn_v.weight"), ffn_down = contains(name, "ffn_down");
  const bool attn_qkv = contains(name, "attn_qkv.weight");
  const bool attn_output = contains(name, "attn_output.weight");
  switch (mix.rule) {
    case Rule::kUniform:
      break;
    case Rule::kQ2K:
      if (attn_v) return shape.n_gqa >= 4 ? TensorType::Q4_K : TensorType::Q3_K;
      if (ffn_down || attn_output) return TensorType::Q3_K;
      break;
    case Rule::kQ3KM:
      if (attn_v) return layer < 2 ? TensorType::Q5_K : TensorType::Q4_K;
      if (ffn_down) return layer < n_layers / 16 ? TensorType::Q5_K : TensorType::Q4_K;
      if (attn_output || attn_qkv) return TensorType::Q4_K;
      break;
    case Rule::kQ3KL:
      if (attn_v || ffn_down || attn_output) return TensorType::Q5_K;
      if (attn_qkv) return TensorType::Q4_K;
      break;
    case Rule::kQ4KS:
      if (attn_v && layer < 4) return TensorType::Q5_K;
      if (ffn_down && layer < n_layers / 8) return TensorType::Q5_K;
      break;
    case Rule::kKM:  // q4_k_m and q5_k_m
      if ((attn_v || ffn_down) && more_bits_layer(layer, n_layers)) return TensorType::Q6_K;
      if (attn_qkv) return mix.base == TensorType::Q4_K ? TensorType::Q5_K : TensorType::Q6_K;
      break;
  }
  return mix.base;
}

uint32_t block_elems(TensorType type) {
  return tensor_type_info(uint32_t(type))->block_elems;
}

// A tensor's type in the output, and why it is not the one the mix wanted.
struct Choice {
  TensorType type;
  std::string fallback;  // empty when the tensor got the wished type or is not quantized
};

// Weight matrices in a float type get the mix's type; other tensors, and matrices already
// quantized, are copied. Rows that are not whole blocks of the wished type fall back to a type
// of 32-value blocks with at least as many bits, as llama-quantize's: Q4_K to Q5_0, Q6_K to
// Q8_0; Q2_K and Q3_K to Q4_0 and Q5_K to Q8_0 (llama-quantize's IQ4_NL and Q5_1 are not
// computed by sllm); then to F16.
Choice choose_type(const TensorInfo& t, const Mix& mix, bool is_output, const ModelShape& shape) {
  const bool float_type =
      t.type == TensorType::F32 || t.type == TensorType::F16 || t.type == TensorType::BF16;
  if (!is_weight_matrix(t) || !float_type) return {t.type, ""};
  const TensorType wish = wished_type(mix, t.name, is_output, shape);
  const uint64_t cols = t.ne[0];
  if (cols % block_elems(wish) == 0) return {wish, ""};
  TensorType type = wish == TensorType::Q4_K                               ? TensorType::Q5_0
                    : wish == TensorType::Q2_K || wish == TensorType::Q3_K ? TensorType::Q4_0
                                                                           : TensorType::Q8_0;
  const bool super_block = block_elems(wish) == kSuperBlock;
  if (cols % kQuantBlock != 0) type = t.type == TensorType::F32 ? TensorType::F16 : t.type;
  std::string why =
      "rows of " + std::to_string(cols) + " are not whole " +
      (super_block && cols % kQuantBlock == 0 ? "super-blocks of 256" : "blocks of 32");
  return {type, why + ": " + tensor_type_name(type) + " for " + tensor_type_name(wish)};
}

// The number of layers ({arch}.block_count, else the tensor names) and the query heads per KV
// head ({arch}.attention.head_count over head_count_kv, where both are single numbers).
ModelShape model_shape(const Gguf& src) {
  ModelShape shape;
  const std::string arch = src.get_or<std::string>("general.architecture", "");
  if (!arch.empty() && src.has(arch + ".block_count")) {
    shape.n_layers = int(src.get<uint32_t>(arch + ".block_count"));
  } else {
    for (const TensorInfo& t : src.tensors())
      shape.n_layers = std::max(shape.n_layers, layer_of(t.name) + 1);
  }
  int64_t heads = 0, kv_heads = 0;
  for (const auto& [key, value] : src.metadata()) {
    if (!value.is_integer()) continue;
    if (key == arch + ".attention.head_count") heads = value.as_i64();
    if (key == arch + ".attention.head_count_kv") kv_heads = value.as_i64();
  }
  if (kv_heads <= 0) kv_heads = heads;
  if (heads > 0 && kv_heads > 0) shape.n_gqa = int(heads / kv_heads);
  return shape;
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
  const std::string &in = positional[0], &out = positional[1];
  const Mix& mix = find_mix(positional[2]);
  if (in == out || same_file(in, out)) {
    detail::fail("OUT is the input file " + in + "; write the quantized model to another path");
  }

  const Gguf src = Gguf::open(in);
  const bool tied = src.find_tensor("output.weight") == nullptr;
  const ModelShape shape = model_shape(src);
  GgufWriter w(src.alignment());
  for (const auto& [key, value] : src.metadata()) {
    if (key != "general.alignment") w.set(key, value);
  }
  w.set("general.file_type", GgufValue::u32(mix.file_type));
  w.set("general.quantization_version", GgufValue::u32(2));

  uint64_t total = 0, done = 0;
  for (const TensorInfo& t : src.tensors()) total += t.n_bytes;
  ProgressBar bar;
  const bool show_bar = ::isatty(STDERR_FILENO);
  uint64_t in_bytes = 0, out_bytes = 0;
  int n_matrices = 0, n_fallbacks = 0;
  for (const TensorInfo& t : src.tensors()) {
    const bool is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
    const Choice choice = choose_type(t, mix, is_output, shape);
    const TensorType type = choice.type;
    n_matrices += is_weight_matrix(t);
    n_fallbacks += !choice.fallback.empty();
    std::vector<uint64_t> dims(t.ne, t.ne + t.n_dims);
    const uint64_t rows = t.n_rows(), cols = t.ne[0];
    const uint64_t src_row = tensor_row_bytes(t.type, cols), dst_row = tensor_row_bytes(type, cols);
    in_bytes += t.n_bytes;
    out_bytes += dst_row * rows;
    if (!quiet && choice.fallback.empty()) {
      std::printf("%-32s %-16s %5s -> %s\n", t.name.c_str(), t.shape_string().c_str(),
                  tensor_type_name(t.type), tensor_type_name(type));
    } else if (!quiet) {
      std::printf("%-32s %-16s %5s -> %-5s  fallback: %s\n", t.name.c_str(),
                  t.shape_string().c_str(), tensor_type_name(t.type), tensor_type_name(type),
                  choice.fallback.c_str());
    }
    if (type == t.type) {
      w.add_tensor(t.name, type, dims, t.data, t.n_bytes);
      continue;
    }
    w.add_tensor(t.name, type, dims, [&, type, rows, cols, src_row, dst_row](uint8_t* dst) {
    // Rows are independent: quantize them in parallel, each from its own f32 copy (small
    // tensors in one thread: a team costs more than their work).
#pragma omp parallel num_threads( \
    threads > 0 ? threads         \
                : omp_get_max_threads()) if (rows > 1 && rows * cols >= (uint64_t(1) << 16))
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
              human_bytes(in_bytes).c_str(), human_bytes(out_bytes).c_str(), mix.name);
  if (n_fallbacks > 0) {
    std::printf(
        "%d of %d weight matrices fell back to another type: their rows are not whole "
        "blocks of the type %s wants\n",
        n_fallbacks, n_matrices, mix.name);
  }
  return 0;
}

}  // namespace cli
}  // namespace sllm
