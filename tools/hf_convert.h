// Converts a Hugging Face checkpoint folder (config.json, *.safetensors, a tokenizer) into a GGUF
// file that llama.cpp and sllm load: llama.cpp's tensor names, metadata keys and weight layouts
// for Llama/Mistral, Qwen2, Phi-3, GPT-2, Gemma and BERT encoders (sentence-transformers folders:
// the pooling of 1_Pooling/config.json becomes bert.pooling_type).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "sllm.h"

namespace sllm {
namespace hf {

enum class OutputType {
  kAuto,  // the checkpoint's own float type (that of most of its matrices)
  kF32,
  kF16,
  kBF16,
};

struct ConvertOptions {
  OutputType type = OutputType::kAuto;
  bool vocab_only = false;  // the tokenizer (and hyperparameters, with config.json) only
  // Called as tensor data is written: bytes done of total.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

struct ConvertResult {
  std::string architecture;           // GGUF name ("llama"), "" for a tokenizer without config.json
  TensorType type = TensorType::F32;  // of the matrices
  size_t n_tensors = 0;
  uint64_t n_bytes = 0;  // of tensor data
  size_t n_tokens = 0;
};

// Writes out (atomically: a failure leaves no file, and an existing one as it was) from the
// checkpoint in dir. Every input is read and checked before the output is created: an
// unsupported architecture, a tensor missing or of a shape config.json does not imply, a
// malformed file, or out being one of the input files is an Error.
ConvertResult convert_checkpoint(const std::string& dir, const std::string& out,
                                 const ConvertOptions& options);

}  // namespace hf
}  // namespace sllm
