// Tokenizers of Hugging Face model folders, turned into the tokenizer.ggml.* metadata that
// llama.cpp and sllm read:
//  - tokenizer.model, a SentencePiece model (protobuf, parsed here), as tokenizer model "llama";
//  - tokenizer.json with a byte-level BPE model, as tokenizer model "gpt2", its pre-tokenizer
//    (tokenizer.ggml.pre) named by matching the tokenizer's own pre_tokenizer (split regexes,
//    digit and punctuation splits) against those of known families;
//  - tokenizer.json with an uncased WordPiece model (BERT's), as tokenizer model "bert", its
//    tokens in GGUF's form (word starts marked with U+2581, "##" continuations without it);
// with special tokens from tokenizer_config.json, config.json and generation_config.json.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "sllm.h"

namespace sllm {
namespace hf {

// The fields of a SentencePiece ModelProto that a converter needs.
struct SentencePieceModel {
  enum ModelType { kUnigram = 1, kBpe = 2, kWord = 3, kChar = 4 };
  struct Piece {
    std::string piece;
    float score = 0;
    int32_t type = 1;  // NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
  };
  std::vector<Piece> pieces;
  int32_t model_type = kUnigram;                            // trainer_spec.model_type
  int32_t unk_id = 0, bos_id = 1, eos_id = 2, pad_id = -1;  // trainer_spec; -1: none
  bool add_dummy_prefix = true;                             // normalizer_spec
  // Error names origin and the offset of a malformed field.
  static SentencePieceModel parse(const uint8_t* data, uint64_t size, const std::string& origin);
};

// The most tokens a vocabulary may have (the largest in use have about 256K): ids and sizes in
// files past it are errors rather than allocations.
constexpr uint64_t kMaxTokens = uint64_t(1) << 24;

// A tokenizer read from a model folder.
struct HfTokenizer {
  Vocabulary vocab;  // all the tokenizer layer reads; add_bos/add_eos resolved
  int32_t sep = -1, cls = -1, mask = -1;
  std::string chat_template;                                              // "" when there is none
  std::vector<std::pair<std::string, std::string>> named_chat_templates;  // (name, template)
  std::vector<std::string> files;                                         // the files read
};

// Reads the tokenizer of the model folder dir: tokenizer.model when it exists (as llama.cpp's
// converter prefers it), else tokenizer.json. n_vocab: the model's vocabulary size (its
// embedding rows), to which the token list is padded with unused "[PADn]" tokens; 0 to use the
// tokenizer's own size. Error names the file and what is wrong or unsupported.
HfTokenizer read_hf_tokenizer(const std::string& dir, uint64_t n_vocab);

// The tokenizer.ggml.* and tokenizer.chat_template keys, as llama.cpp's converter writes them.
void add_tokenizer_metadata(GgufWriter& writer, const HfTokenizer& tokenizer);

}  // namespace hf
}  // namespace sllm
