// Model layer: architecture config from GGUF metadata, weight views into the map, and the
// forward pass (batched prefill and one-token decode share one code path).
namespace sllm {

// Hyperparameters of a llama-family transformer, read from GGUF metadata.
struct ModelConfig {
  std::string architecture;   // general.architecture
  size_t n_embd = 0;          // embedding_length
  size_t n_layers = 0;        // block_count
  size_t n_heads = 0;         // attention.head_count
  size_t n_kv_heads = 0;      // attention.head_count_kv (default: n_heads)
  size_t key_dim = 0;         // attention.key_length (default: n_embd / n_heads)
  size_t value_dim = 0;       // attention.value_length (default: n_embd / n_heads)
  size_t n_ff = 0;            // feed_forward_length
  size_t n_vocab = 0;         // tokenizer.ggml.tokens, else token_embd.weight rows
  size_t context_length = 0;  // context_length (training context)
  size_t rope_dim = 0;        // rope.dimension_count (default: key_dim)
  float rope_base = 10000.f;  // rope.freq_base
  float rms_eps = 1e-5f;      // attention.layer_norm_rms_epsilon

  // Error names the missing or inconsistent key, or the unsupported architecture.
  static ModelConfig from_gguf(const Gguf& gguf);
  KvShape kv_shape() const { return KvShape{n_layers, n_kv_heads, key_dim, value_dim}; }
};

struct TransformerOptions {
  int n_threads = 0;  // 0: OpenMP's default (OMP_NUM_THREADS, else the cores)
};

// Which positions of a forward batch get logits.
enum class LogitsFor { kNone, kLast, kAll };

// The activations of one forward pass, kept between calls so that decoding allocates nothing.
// Grows to the largest batch and context seen. One per concurrently running sequence.
class ForwardScratch {
  friend class Transformer;
  size_t n_tokens_ = 0, n_ctx_ = 0, n_threads_ = 0;
  detail::AlignedBuffer<float> x_, xb_, q_, k_, v_, att_, gate_, up_;
  detail::AlignedBuffer<float> rope_cos_, rope_sin_, scores_;
};

// A llama-family transformer whose weights are views into an open GGUF (which must outlive it).
class Transformer {
 public:
  static Transformer load(const Gguf& gguf, const TransformerOptions& options = {});

  const ModelConfig& config() const { return config_; }
  KvShape kv_shape() const { return config_.kv_shape(); }
  int n_threads() const { return n_threads_; }

  // Evaluates tokens[0..n) at the positions after those already in seq, appends their keys and
  // values to seq, and writes logits: n_vocab floats for the last position (kLast), n * n_vocab,
  // row per position (kAll), or nothing (kNone; logits may be null). Error, with seq unchanged,
  // for a token id outside the vocabulary, a KV pool of another shape, context overflow or an
  // exhausted pool.
  void forward(const int32_t* tokens, size_t n, KvSequence& seq, ForwardScratch& scratch,
               float* logits, LogitsFor which = LogitsFor::kLast) const;

 private:
  Transformer() = default;  // made by load()
  struct Layer {
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    detail::MatrixView wq, wk, wv, wo, gate, up, down;
  };
  void prepare(ForwardScratch& s, size_t n, size_t n_ctx) const;
  void attention_block(const Layer& layer, size_t l, size_t n, size_t pos0, KvSequence& seq,
                       ForwardScratch& s) const;
  void ffn_block(const Layer& layer, size_t n, ForwardScratch& s) const;

  ModelConfig config_;
  int n_threads_ = 1;
  detail::MatrixView token_embd_, output_;
  const float* output_norm_ = nullptr;
  const float* rope_freqs_ = nullptr;  // Llama 3.1 rope frequency factors, when present
  std::vector<Layer> layers_;
};

}  // namespace sllm
