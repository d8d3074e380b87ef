// `sllm convert DIR -o OUT.gguf`: a Hugging Face checkpoint folder to a GGUF file.
#include <chrono>
#include <cstdio>
#include <string>
#include <unistd.h>

#include "cli.h"
#include "hf_convert.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

const char kConvertUsage[] =
    "usage: sllm convert [options] DIR -o OUT.gguf\n"
    "\n"
    "Converts a Hugging Face checkpoint folder to a GGUF file that sllm and llama.cpp load:\n"
    "config.json, model.safetensors (or shards with model.safetensors.index.json) holding\n"
    "F32, F16 or BF16 tensors, and tokenizer.model (SentencePiece) or tokenizer.json\n"
    "(byte-level BPE), with tokenizer_config.json and generation_config.json for special\n"
    "tokens and the chat template. Architectures: LlamaForCausalLM, MistralForCausalLM,\n"
    "Qwen2ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel, GemmaForCausalLM.\n"
    "\n"
    "The output is written under a temporary name and renamed when complete, so a failure\n"
    "leaves no partial file and an existing OUT is only ever replaced whole. OUT may not be\n"
    "one of the input files.\n"
    "\n"
    "options:\n"
    "  -o, --output FILE   the GGUF file to write (required)\n"
    "  -t, --type TYPE     type of the weight matrices: f32, f16, bf16, or auto (default:\n"
    "                      the checkpoint's own); norms, biases and vectors stay f32\n"
    "      --vocab-only    write only the tokenizer (and, with config.json, the\n"
    "                      hyperparameters); DIR then needs no safetensors, nor config.json\n"
    "  -h, --help          show this help\n";

hf::OutputType parse_type(const std::string& s) {
  if (s == "auto") return hf::OutputType::kAuto;
  if (s == "f32") return hf::OutputType::kF32;
  if (s == "f16") return hf::OutputType::kF16;
  if (s == "bf16") return hf::OutputType::kBF16;
  throw UsageError("option --type: '" + s + "' is not a type (f32, f16, bf16 or auto)");
}

// "1.13 MiB" for a byte count.
std::string human_bytes(uint64_t n) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

// A one-line bar on stderr, redrawn at most ten times a second.
class ProgressBar {
 public:
  void update(uint64_t done, uint64_t total) {
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const int width = 40;
    const int filled = total ? int(double(done) / double(total) * width) : width;
    std::fprintf(stderr, "\r[%s%s] %3d%% %s / %s", std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(width - filled), ' ').c_str(),
                 total ? int(100.0 * double(done) / double(total)) : 100, human_bytes(done).c_str(),
                 human_bytes(total).c_str());
    if (done >= total) std::fputc('\n', stderr);
    std::fflush(stderr);
  }

 private:
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace

int cmd_convert(int argc, char** argv) {
  ArgReader args(argc, argv);
  std::string dir, out, type = "auto";
  hf::ConvertOptions options;
  while (!args.done()) {
    if (args.flag("-h", "--help")) {
      std::fputs(kConvertUsage, stdout);
      return 0;
    } else if (args.option("-o", "--output", out)) {
    } else if (args.option("-t", "--type", type)) {
    } else if (args.flag(nullptr, "--vocab-only")) {
      options.vocab_only = true;
    } else if (dir.empty() && args.positional(dir)) {
    } else {
      args.reject();
    }
  }
  if (dir.empty()) throw UsageError("missing DIR");
  if (out.empty()) throw UsageError("missing -o OUT.gguf");
  options.type = parse_type(type);
  ProgressBar bar;
  if (::isatty(STDERR_FILENO)) {
    options.progress = [&](uint64_t done, uint64_t total) { bar.update(done, total); };
  }
  const hf::ConvertResult r = hf::convert_checkpoint(dir, out, options);
  if (options.vocab_only) {
    std::printf(
        "wrote %s: the tokenizer (%zu tokens)%s\n", out.c_str(), r.n_tokens,
        r.architecture.empty() ? "" : (" and " + r.architecture + " hyperparameters").c_str());
  } else {
    std::printf("wrote %s: %s, %zu tensors, %s matrices, %s of tensor data, %zu tokens\n",
                out.c_str(), r.architecture.c_str(), r.n_tensors, tensor_type_name(r.type),
                human_bytes(r.n_bytes).c_str(), r.n_tokens);
  }
  return 0;
}

}  // namespace cli
}  // namespace sllm
