// Session layer: the API users see. A Model is a GGUF file opened with its
// transformer and tokenizer; an Engine is a model's KV cache pool, shared by many Sessions; a
// Session is one conversation's context (a sequence in that pool): prompt in, pieces of text
// out. Sessions of one Engine share cached prompt prefixes (a system prompt is computed once)
// and can decode together in one batch (Engine::step).
//
// Thread safety: a Model may be used from any number of threads. An Engine and all Sessions
// over it are one unit: calls on them must not overlap (use one thread, or a lock around
// them); Sessions of different Engines may run in different threads at the same time.
#include <atomic>
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
  TensorType kv_type = TensorType::F16;  // KV cache entries: F16, I8 or F32 (a session over its
                                         // own pool; over an Engine, the engine's type applies)
};

struct EngineOptions {
  size_t pool_tokens = 0;  // tokens the KV pool holds, all sessions together; 0: 4 contexts of
                           // the model's context length (at most 4096)
  size_t block_tokens = KvPool::kDefaultBlockTokens;
  TensorType kv_type = TensorType::F16;  // KV cache entries: F16, I8 (int8, a scale per token
                                         // and head: half the bytes) or F32
};

struct GenerateOptions : SamplerOptions {
  int32_t max_tokens = 128;       // tokens to generate at most
  std::vector<std::string> stop;  // stop before the first of these strings (not emitted)
  bool add_special = true;        // BOS etc. as the model's metadata asks (only at the start)
  bool parse_special = false;     // match control tokens like "<|im_end|>" written in the prompt
  // Generation stops before the next token once this is true; a signal handler may set it (a
  // lock-free atomic), e.g. to stop an answer on Ctrl-C. The prompt is evaluated regardless.
  const std::atomic<bool>* cancel = nullptr;
};

// kPoolFull: in a batch (Engine::generate), the engine's KV pool had no block left for this
// session's next token; the others went on.
enum class StopReason {
  kEndOfGeneration,
  kStopString,
  kMaxTokens,
  kContextFull,
  kCancelled,
  kPoolFull
};
const char* stop_reason_name(StopReason reason);

struct GenerateStats {
  size_t n_prompt = 0;         // prompt tokens evaluated
  size_t n_prompt_reused = 0;  // of those, the ones taken from the prefix cache, not computed
  size_t n_generated = 0;
  double prompt_seconds = 0;
  double generate_seconds = 0;
  StopReason stop_reason = StopReason::kMaxTokens;
  uint64_t seed = 0;  // the sampler's seed (chosen at random when the options had none)
};

using PieceFn = std::function<void(std::string_view piece)>;
// A piece of the text of completion i of a batch.
using BatchPieceFn = std::function<void(size_t i, std::string_view piece)>;

class Session;

// The KV cache pool of a model, shared by the Sessions made over it. Cheap to copy: copies are
// the same engine. The pool and the model stay alive while a copy or a session holds them.
class Engine {
 public:
  explicit Engine(const Model& model, const EngineOptions& options = {});
  const Model& model() const;
  KvPool& pool() const;
  // One decode step of several sessions of this engine in one forward pass (every weight read
  // once for all): sessions[i] evaluates tokens[i], and its logits() are then the next ones.
  // Sessions may join or leave between steps. Error when one cannot take its token (a full
  // context, an exhausted pool): then no session has changed, and the message names it.
  void step(const std::vector<Session*>& sessions, const std::vector<int32_t>& tokens) const;
  // Session::generate for several sessions of this engine at once: each evaluates the prompt
  // tokens (the first computes them, the others take its cached blocks), then they decode in
  // batched steps, each leaving the batch when it stops. Sampling seeds are options.seed + i
  // when set (else random). on_piece gets each session's text as it is generated.
  std::vector<GenerateStats> generate(const std::vector<Session*>& sessions,
                                      const std::vector<int32_t>& prompt_tokens,
                                      const GenerateOptions& options,
                                      const BatchPieceFn& on_piece) const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

class Session {
 public:
  // A session over a pool of its own, sized for one context.
  explicit Session(const Model& model, const SessionOptions& options = {});
  // A session over the engine's shared pool.
  explicit Session(const Engine& engine, const SessionOptions& options = {});
  // Not copyable or movable: Engine::step and Chat refer to sessions by address.
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Model& model() const { return model_; }
  // The engine whose pool holds this session's KV blocks (a session made from a Model has an
  // engine of its own).
  const Engine& engine() const { return engine_; }
  size_t n_ctx() const { return seq_.max_tokens(); }
  size_t n_past() const { return seq_.size(); }                   // tokens in the context
  const std::vector<int32_t>& tokens() const { return tokens_; }  // the context's tokens, in order
  void reset();                                                   // empties the context
  // Keeps the first n tokens of the context (n <= n_past()) and forgets the rest, so that a
  // different continuation can be evaluated; logits() is empty until the next evaluate.
  void truncate(size_t n);
  // A new session of the same engine holding this one's context and logits: it shares every KV
  // block with this session (nothing is copied or computed; a shared block is copied only when
  // one of them writes into it), and the two go on independently, e.g. as different
  // continuations of one prompt that compute only their own tokens. Sessions are not movable,
  // so the fork is made in place: `Session child = session.fork();` (or
  // `std::unique_ptr<Session> child(new Session(session.fork()));`). A session made from a
  // Model shares its own pool, sized for one context, with its forks; an Engine's pool has
  // room for several.
  Session fork() const;

  // add_special: BOS etc. per the model's metadata; parse_special: control
  // tokens in the text.
  std::vector<int32_t> tokenize(std::string_view text, bool add_special = true,
                                bool parse_special = false) const;
  // Evaluates tokens after those in the context; logits() then holds the last
  // position's. Whole KV blocks found in the engine's prefix cache are taken instead of
  // computed; returns how many tokens were (the last token is always computed). Error
  // (context unchanged) when a token is out of range, the context would overflow or the pool
  // is exhausted.
  size_t evaluate(const std::vector<int32_t>& tokens);
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
  // The same from prompt tokens (add_special and parse_special do not apply). The repetition
  // penalties look at the whole context, earlier calls' tokens included.
  GenerateStats generate(const std::vector<int32_t>& prompt_tokens, const GenerateOptions& options,
                         const PieceFn& on_piece);

 private:
  friend class Engine;
  struct ForkOf {
    const Session& parent;
  };
  explicit Session(ForkOf fork);
  void check_fits(size_t n_tokens) const;
  Engine engine_;
  Model model_;
  KvSequence seq_;
  ForwardScratch scratch_;
  std::vector<int32_t> tokens_;  // what seq_ holds
  std::vector<float> logits_;
};

}  // namespace sllm
