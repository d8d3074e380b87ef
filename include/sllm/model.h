// Model layer: architecture config from GGUF metadata, weight views into the map, and the
// forward pass (batched prefill and one-token decode share one code path, and every
// architecture shares it: what differs between them is data, ArchitectureTraits).
namespace sllm {

// How activations are normalized before attention, the FFN and the output.
enum class NormType {
  kRms,    // x / rms(x) * weight
  kLayer,  // (x - mean) / stddev * weight + bias (LayerNorm, GPT-2)
};
// How token positions enter the model.
enum class PositionType {
  kRope,     // rotary embedding of Q and K, in the architecture's RopeStyle
  kLearned,  // a learned embedding per position added to the token embedding (GPT-2)
};
// The feed-forward block between down(...) and the normalized input x.
enum class FfnType {
  kSwiGlu,  // silu(gate x) * (up x)
  kGeGlu,   // gelu(gate x) * (up x)
  kGelu,    // gelu(up x)
};

// What sets one architecture's transformer apart from the others. Every supported
// architecture is one entry of the table in model_impl.h (detail::architecture_traits); adding
// one that combines these features is a new entry there and a test.
struct ArchitectureTraits {
  std::string name;  // general.architecture
  NormType norm = NormType::kRms;
  PositionType positions = PositionType::kRope;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  FfnType ffn = FfnType::kSwiGlu;
  bool fused_qkv = false;               // blk.N.attn_qkv.weight holds the Q, then K, then V rows
  bool fused_gate_up = false;           // blk.N.ffn_up.weight holds the gate, then the up rows
  bool qkv_bias = false;                // the Q, K, V projections must have biases
  bool all_biases = false;              // every projection must have a bias
  bool scaled_embedding = false;        // token embeddings are multiplied by sqrt(n_embd)
  bool honours_sliding_window = false;  // attention.sliding_window limits attention
  bool token_types = false;             // token_types.weight's row 0 (the first segment) is added
                                        // to every embedding (BERT)
  bool embedding_norm = false;          // token_embd_norm normalizes the summed embeddings
  // The layers normalize after each residual addition (attn_output_norm, layer_output_norm)
  // instead of before attention and the FFN, so there is no output norm (BERT's post-LN).
  bool post_norm = false;
  // false: an encoder. Each token attends to the whole text, before and after it, and the
  // model has no LM head: it gives hidden states (embeddings), not next-token logits.
  bool causal = true;
};

// Hyperparameters of a transformer, read from GGUF metadata (keys under "ARCH.").
struct ModelConfig {
  std::string architecture;   // general.architecture
  ArchitectureTraits traits;  // what that architecture's layers do
  size_t n_embd = 0;          // embedding_length
  size_t n_layers = 0;        // block_count
  size_t n_heads = 0;         // attention.head_count
  size_t n_kv_heads = 0;      // attention.head_count_kv (default: n_heads)
  size_t key_dim = 0;         // attention.key_length (default: n_embd / n_heads)
  size_t value_dim = 0;       // attention.value_length (default: n_embd / n_heads)
  size_t n_ff = 0;            // feed_forward_length
  size_t n_vocab = 0;         // tokenizer.ggml.tokens, else token_embd.weight rows
  size_t context_length = 0;  // context_length (training context; learned positions: their
                              // number, and the most a sequence may hold)
  size_t rope_dim = 0;        // rope.dimension_count (default: key_dim; 0 without rope)
  float rope_base = 10000.f;  // rope.freq_base
  float norm_eps = 1e-5f;     // attention.layer_norm_rms_epsilon (RMSNorm) or
                              // attention.layer_norm_epsilon (LayerNorm)
  size_t sliding_window = 0;  // attention.sliding_window: a token attends to itself and the
                              // sliding_window - 1 before it (0: to all before it)

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
// Grows to the largest batch seen. One per concurrently running sequence.
class ForwardScratch {
  friend class Transformer;
  size_t n_tokens_ = 0;
  detail::AlignedBuffer<float> x_, xb_, qkv_, att_, ffn_;
  detail::AlignedBuffer<float> rope_cos_, rope_sin_;
  std::vector<KvSequence*> seqs_;  // the sequence and position of each token of the batch
  std::vector<size_t> pos_;
  std::vector<size_t> end_;  // the token attends to its sequence's positions before end_
};

// A transformer (decoder, or encoder where !traits.causal) whose weights are views into an open
// GGUF (which must outlive it).
// Thread safety: it is read-only after load(), so forward passes may run at the same time in
// several threads, each with its own ForwardScratch and sequences of a pool no other thread uses.
class Transformer {
 public:
  static Transformer load(const Gguf& gguf, const TransformerOptions& options = {});

  const ModelConfig& config() const { return config_; }
  KvShape kv_shape() const { return config_.kv_shape(); }
  int n_threads() const { return n_threads_; }

  // Evaluates tokens[0..n) at the positions after those already in seq, appends their keys and
  // values to seq, and writes logits: n_vocab floats for the last position (kLast), n * n_vocab,
  // row per position (kAll), or nothing (kNone; logits may be null). Error, with seq unchanged,
  // for a token id outside the vocabulary, a KV pool of another shape, context overflow (also
  // past the learned positions of a model that has them) or an exhausted pool, and for an
  // encoder (which has no logits).
  void forward(const int32_t* tokens, size_t n, KvSequence& seq, ForwardScratch& scratch,
               float* logits, LogitsFor which = LogitsFor::kLast) const;
  // One decode step of n distinct sequences at once: seqs[i] gets tokens[i] after its own
  // tokens, and row i of logits (n * n_vocab floats) is its next-token logits. Every weight is
  // read once for the whole batch; each row attends over its own block table. Error, with
  // every sequence's size unchanged, as for forward (the message names the sequence); a caller
  // that wants the others to go on reserves each sequence's token first (KvSequence::reserve)
  // and leaves out those that fail.
  void forward_batch(const int32_t* tokens, KvSequence* const* seqs, size_t n,
                     ForwardScratch& scratch, float* logits) const;
  // Several texts in one pass, for their hidden states (embeddings): text i is the next
  // sizes[i] tokens of tokens, evaluated after those already in seqs[i] (distinct sequences).
  // Attention stays within each text's sequence: causal in a decoder, over the whole sequence
  // in an encoder. states gets one row of n_embd floats per token, in order: its final hidden
  // state (the output norm's output; in post-norm encoders the last layer's). Errors as for
  // forward (the message names the text), with every sequence's size unchanged.
  void forward_states(const int32_t* tokens, const size_t* sizes, KvSequence* const* seqs,
                      size_t n_texts, ForwardScratch& scratch, float* states) const;

 private:
  Transformer() = default;  // made by load()
  struct Norm {
    const float* weight = nullptr;  // null: no norm (the output of post-norm models)
    const float* bias = nullptr;    // LayerNorm only
  };
  struct Linear {
    detail::MatrixView weight;
    const float* bias = nullptr;  // none when null
  };
  // A projection whose output is its parts' outputs side by side: one fused matrix or several.
  struct Projection {
    std::vector<detail::MatrixView> weights;  // the parts' weights, side by side for matmul_q_parts
    std::vector<const float*> biases;         // and their biases (null: none)
    size_t rows = 0;                          // all parts' rows
  };
  struct Layer {
    Norm attn_norm, ffn_norm;
    Projection qkv;  // Q, K and V rows
    Linear attn_output;
    Projection ffn_in;  // gate and up rows (GLU FFNs) or the up rows (GELU)
    Linear ffn_down;
  };
  void prepare(ForwardScratch& s, size_t n) const;
  void check_tokens(const int32_t* tokens, size_t n) const;
  void check_sequence(const KvSequence& seq, size_t n) const;
  void check_decoder() const;
  // The batch's layers over scratch's sequences, positions and attention ends (reserved).
  void run(const int32_t* tokens, size_t n, ForwardScratch& s) const;
  // The output norm and the LM head over the rows [first, n) of the batch.
  void output_logits(ForwardScratch& s, size_t first, size_t n, float* logits) const;
  void embed(const int32_t* tokens, size_t n, ForwardScratch& s) const;
  void normalize(const Norm& norm, const float* x, size_t n, float* out) const;
  // y[t * y_stride + r] = (weight x_t)[r] + bias[r] for the n rows x_t = x + t * x_stride, for
  // n_parts linears side by side in y (all quantized in one activation format, or none quantized;
  // a null bias adds nothing).
  void multiply(const detail::MatrixView* weights, const float* const* biases, size_t n_parts,
                const float* x, size_t n, size_t x_stride, float* y, size_t y_stride) const;
  void linear(const Linear& l, const float* x, size_t n, size_t x_stride, float* y,
              size_t y_stride) const;
  // The same for every part, side by side in rows of p.rows floats.
  void project(const Projection& p, const float* x, size_t n, size_t x_stride, float* y) const;
  void attention_block(const Layer& layer, size_t l, size_t n, ForwardScratch& s) const;
  void ffn_block(const Layer& layer, size_t n, ForwardScratch& s) const;

  ModelConfig config_;
  int n_threads_ = 1;
  detail::MatrixView token_embd_;
  detail::MatrixView position_embd_;  // learned positions only
  detail::MatrixView token_types_;    // token types only
  Norm embedding_norm_;
  Norm output_norm_;
  Linear output_;
  const float* rope_freqs_ = nullptr;  // Llama 3.1 rope frequency factors, when present
  std::vector<Layer> layers_;
};

}  // namespace sllm
