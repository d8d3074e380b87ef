// Session layer: the API users see. A Model is a GGUF file opened with its
// transformer and tokenizer; a Session is one conversation's context (KV cache)
// over a Model: prompt in, pieces of text out.
#include <chrono>

namespace sllm {

struct ModelOptions {
  int n_threads = 0;  // 0: OpenMP's default (OMP_NUM_THREADS, else the cores)
};

// Cheap to copy: copies share the file, weights and tokenizer, which are
// read-only.
class Model {
 public:
  static Model open(const std::string& path, const ModelOptions& options = {});
  const Gguf& gguf() const { return *gguf_; }
  const Transformer& transformer() const { return *transformer_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelConfig& config() const { return transformer_->config(); }

 private:
  std::shared_ptr<const Gguf> gguf_;
  std::shared_ptr<const Transformer> transformer_;
  std::shared_ptr<const Tokenizer> tokenizer_;
};

struct SessionOptions {
  size_t n_ctx = 0;                      // tokens the context holds; 0: the model's context length,
                                         // at most 4096
  TensorType kv_type = TensorType::F32;  // KV cache entries: F32 or F16
};

struct GenerateOptions : SamplerOptions {
  int32_t max_tokens = 128;       // tokens to generate at most
  std::vector<std::string> stop;  // stop before the first of these strings (not emitted)
  bool add_special = true;        // BOS etc. as the model's metadata asks (only at the start)
  bool parse_special = false;     // match control tokens like "<|im_end|>" written in the prompt
};

enum class StopReason { kEndOfGeneration, kStopString, kMaxTokens, kContextFull };
const char* stop_reason_name(StopReason reason);

struct GenerateStats {
  size_t n_prompt = 0;  // prompt tokens evaluated
  size_t n_generated = 0;
  double prompt_seconds = 0;
  double generate_seconds = 0;
  StopReason stop_reason = StopReason::kMaxTokens;
  uint64_t seed = 0;  // the sampler's seed (chosen at random when the options had none)
};

using PieceFn = std::function<void(std::string_view piece)>;

class Session {
 public:
  explicit Session(const Model& model, const SessionOptions& options = {});
  // Not copyable or movable: the sequence points into the session's own KV pool.
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const { return model_; }
  size_t n_ctx() const { return seq_.max_tokens(); }
  size_t n_past() const { return seq_.size(); }  // tokens in the context
  void reset();                                  // empties the context

  // add_special: BOS etc. per the model's metadata; parse_special: control
  // tokens in the text.
  std::vector<int32_t> tokenize(std::string_view text, bool add_special = true,
                                bool parse_special = false) const;
  // Evaluates tokens after those in the context; logits() then holds the last
  // position's. Error (context unchanged) when a token is out of range or the
  // context would overflow.
  void evaluate(const std::vector<int32_t>& tokens);
  // Same, returning the logits of every position: tokens.size() rows of
  // n_vocab.
  std::vector<float> evaluate_all(const std::vector<int32_t>& tokens);
  const std::vector<float>& logits() const { return logits_; }

  // Tokenizes prompt, evaluates it after the context, and generates until the
  // end of generation token, a stop string, max_tokens, or a full context
  // (never silently wrapping). on_piece receives the text as it is generated
  // (whole UTF-8 characters).
  GenerateStats generate(std::string_view prompt, const GenerateOptions& options,
                         const PieceFn& on_piece);

 private:
  void check_fits(size_t n_tokens) const;
  Model model_;
  KvPool pool_;
  KvSequence seq_;
  ForwardScratch scratch_;
  std::vector<float> logits_;
};

}  // namespace sllm
