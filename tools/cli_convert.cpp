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
    "(byte-level BPE or WordPiece), with tokenizer_config.json and generation_config.json for\n"
    "special tokens and the chat template. Architectures: LlamaForCausalLM,\n"
    "MistralForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel,\n"
    "GemmaForCausalLM, BertModel (embedding models; a sentence-transformers folder's\n"
    "pooling from its Pooling module's config.json).\n"
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
