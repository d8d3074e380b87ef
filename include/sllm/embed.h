// Embed layer: one vector per text, pooled from a model's final hidden states. Encoders (BERT:
// bge, all-MiniLM, ...) are what embedding models usually are; decoders (the llama family) can
// embed too, with a pooling chosen by the caller. Vectors equal llama.cpp's
// llama_get_embeddings_seq() for the same file, tokens and pooling (before normalization).
//
// - Tokens: tokenizer().encode(text, add_special = true, parse_special = false): [CLS] text
//   [SEP] in BERT, BOS text in llama. An empty text is embedded as those special tokens alone;
//   a text that has no token at all (empty, and a vocabulary that adds none) is an Error.
// - Length: a text of more tokens than the model has positions (<arch>.context_length) is an
//   Error naming its length and the limit. Nothing is truncated silently; split long texts
//   into passages first.
// - Batching: texts are evaluated several at a time, whole, up to batch_tokens tokens per
//   forward pass (a longer text goes alone). Each text attends only to itself, so a text's
//   vector does not depend on the texts batched with it.
// - Thread safety: embed() and embed_tokens() only read the Model; each call has its own
//   activations and KV cache, so any number of threads may embed with one Model at once.
namespace sllm {

// How the final hidden states of a text's tokens become one vector.
enum class Pooling : uint8_t {
  kModel,  // the model's own choice (<arch>.pooling_type); Error when it has none
  kMean,   // "mean": the average over every token, [CLS]/[SEP] or BOS included (as llama.cpp)
  kCls,    // "cls": the first token's ([CLS])
  kLast,   // "last": the last token's (decoder embedding models)
};
const char* pooling_name(Pooling pooling);  // "model", "mean", "cls", "last"
// The pooling named "mean", "cls" or "last"; nothing for other names.
std::optional<Pooling> pooling_from_name(std::string_view name);
// The pooling that the model's metadata asks for: <arch>.pooling_type 1 (mean), 2 (cls) or 3
// (last); kModel when the key is absent or 0 (none). Error for other types (4: rank, for
// rerankers).
Pooling model_pooling(const Model& model);

struct EmbedOptions {
  Pooling pooling = Pooling::kModel;
  bool normalize = true;      // scale each vector to unit length (L2), as embedding users expect
  size_t batch_tokens = 512;  // tokens per forward pass at most (whole texts; 1: one at a time)
};

// Row i is the vector of text i.
struct Embeddings {
  size_t n_texts = 0;
  size_t n_embd = 0;
  std::vector<float> data;  // n_texts rows of n_embd floats
  const float* row(size_t i) const { return data.data() + i * n_embd; }
};

// The vectors of texts (see above for tokens, length and batching). Error for a model without
// a pooling choice, a text that is too long or has no tokens (the message names the text), or a
// batch_tokens of 0.
Embeddings embed(const Model& model, const std::vector<std::string>& texts,
                 const EmbedOptions& options = {});
// The same from token ids (special tokens included as the caller wants them).
Embeddings embed_tokens(const Model& model, const std::vector<std::vector<int32_t>>& texts,
                        const EmbedOptions& options = {});

// a . b / (|a| |b|) over n floats; 0 when either vector is all zeros.
float cosine_similarity(const float* a, const float* b, size_t n);

}  // namespace sllm
