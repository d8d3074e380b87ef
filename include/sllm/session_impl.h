#include <algorithm>

namespace sllm {

Model Model::open(const std::string& path, const ModelOptions& options) {
  Model m;
  m.gguf_ = std::make_shared<const Gguf>(Gguf::open(path));
  TransformerOptions t;
  t.n_threads = options.n_threads;
  m.transformer_ = std::make_shared<const Transformer>(Transformer::load(*m.gguf_, t));
  m.tokenizer_ = std::make_shared<const Tokenizer>(Tokenizer::from_gguf(*m.gguf_));
  if (size_t(m.tokenizer_->n_vocab()) != m.config().n_vocab) {
    detail::fail(path + ": the tokenizer has " + std::to_string(m.tokenizer_->n_vocab()) +
                 " tokens but the output layer has " + std::to_string(m.config().n_vocab));
  }
  return m;
}

const char* stop_reason_name(StopReason reason) {
  switch (reason) {
    case StopReason::kEndOfGeneration:
      return "end of generation";
    case StopReason::kStopString:
      return "stop string";
    case StopReason::kMaxTokens:
      return "token limit";
    case StopReason::kContextFull:
      return "context full";
    case StopReason::kCancelled:
      return "cancelled";
  }
  return "?";
}

namespace detail {
inline size_t session_context(const Model& model, const SessionOptions& options) {
  const size_t trained = model.config().context_length;
  if (model.config().traits.positions == PositionType::kLearned && options.n_ctx > trained) {
    fail("a context of " + std::to_string(options.n_ctx) + " tokens exceeds the " +
         std::to_string(trained) + " positions that this " + model.config().architecture +
         " model has learned");
  }
  if (options.n_ctx != 0) return options.n_ctx;
  return trained == 0 ? 4096 : std::min<size_t>(trained, 4096);
}

// Length of the longest suffix of text that is a proper prefix of some stop
// string: that much text must be held back, because the next piece may complete
// the stop string.
inline size_t stop_prefix_overlap(std::string_view text, const std::vector<std::string>& stop) {
  size_t keep = 0;
  for (const std::string& s : stop) {
    if (s.empty()) continue;
    for (size_t n = std::min(text.size(), s.size() - 1); n > keep; --n) {
      if (text.substr(text.size() - n) == std::string_view(s).substr(0, n)) {
        keep = n;
        break;
      }
    }
  }
  return keep;
}
}  // namespace detail

struct Engine::State {
  Model model;
  KvPool pool;
  ForwardScratch scratch;  // of batched steps
};

Engine::Engine(const Model& model, const EngineOptions& options) {
  size_t tokens = options.pool_tokens;
  if (tokens == 0) {
    tokens = detail::checked_mul(detail::session_context(model, SessionOptions{}), 4, "KV pool");
  }
  state_ = std::make_shared<State>(State{model,
                                         KvPool::for_tokens(model.transformer().kv_shape(), tokens,
                                                            options.block_tokens, options.kv_type),
                                         ForwardScratch{}});
}

const Model& Engine::model() const {
  return state_->model;
}

KvPool& Engine::pool() const {
  return state_->pool;
}

void Engine::step(const std::vector<Session*>& sessions, const std::vector<int32_t>& tokens) const {
  if (sessions.size() != tokens.size()) {
    detail::fail("Engine::step: " + std::to_string(sessions.size()) + " sessions but " +
                 std::to_string(tokens.size()) + " tokens");
  }
  std::vector<KvSequence*> seqs;
  for (size_t i = 0; i < sessions.size(); ++i) {
    Session& s = *sessions[i];
    if (s.engine_.state_ != state_) {
      detail::fail("Engine::step: session " + std::to_string(i) + " belongs to another engine");
    }
    s.check_fits(1);
    seqs.push_back(&s.seq_);
  }
  const size_t n_vocab = state_->model.config().n_vocab;
  std::vector<float> logits(sessions.size() * n_vocab);
  state_->model.transformer().forward_batch(tokens.data(), seqs.data(), seqs.size(),
                                            state_->scratch, logits.data());
  for (size_t i = 0; i < sessions.size(); ++i) {
    Session& s = *sessions[i];
    s.tokens_.push_back(tokens[i]);
    s.logits_.assign(logits.begin() + ptrdiff_t(i * n_vocab),
                     logits.begin() + ptrdiff_t((i + 1) * n_vocab));
  }
}

Session::Session(const Model& model, const SessionOptions& options)
    : Session(Engine(model, EngineOptions{detail::session_context(model, options),
                                          KvPool::kDefaultBlockTokens, options.kv_type}),
              options) {}

Session::Session(const Engine& engine, const SessionOptions& options)
    : engine_(engine),
      model_(engine.model()),
      seq_(engine.pool(), detail::session_context(engine.model(), options)) {}

void Session::reset() {
  truncate(0);
}

void Session::truncate(size_t n) {
  if (n > n_past()) {
    detail::fail("cannot keep " + std::to_string(n) + " tokens of a context that holds " +
                 std::to_string(n_past()));
  }
  seq_.truncate(n);
  tokens_.resize(n);
  logits_.clear();
}

std::vector<int32_t> Session::tokenize(std::string_view text, bool add_special,
                                       bool parse_special) const {
  return model_.tokenizer().encode(text, add_special, parse_special);
}

void Session::check_fits(size_t n_tokens) const {
  if (n_tokens > n_ctx() - n_past()) {
    detail::fail("the input is " + std::to_string(n_tokens) +
                 " tokens but the context has room for " + std::to_string(n_ctx() - n_past()) +
                 " (" + std::to_string(n_ctx()) + " tokens, " + std::to_string(n_past()) +
                 " used); use a larger context or a shorter prompt");
  }
}

size_t Session::evaluate(const std::vector<int32_t>& tokens) {
  if (tokens.empty()) return 0;
  check_fits(tokens.size());
  const size_t before = seq_.size();
  const size_t reused = seq_.reuse_prefix(tokens.data(), tokens.size() - 1);
  logits_.resize(model_.config().n_vocab);
  try {
    model_.transformer().forward(tokens.data() + reused, tokens.size() - reused, seq_, scratch_,
                                 logits_.data(), LogitsFor::kLast);
  } catch (...) {
    seq_.truncate(before);
    throw;
  }
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  return reused;
}

std::vector<float> Session::evaluate_all(const std::vector<int32_t>& tokens) {
  check_fits(tokens.size());
  const size_t n_vocab = model_.config().n_vocab;
  std::vector<float> all(tokens.size() * n_vocab);
  if (tokens.empty()) return all;
  model_.transformer().forward(tokens.data(), tokens.size(), seq_, scratch_, all.data(),
                               LogitsFor::kAll);
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
  logits_.assign(all.end() - std::ptrdiff_t(n_vocab), all.end());
  return all;
}

GenerateStats Session::generate(std::string_view prompt, const GenerateOptions& options,
                                const PieceFn& on_piece) {
  return generate(model_.tokenizer().encode(prompt, options.add_special && n_past() == 0,
                                            options.parse_special),
                  options, on_piece);
}

GenerateStats Session::generate(const std::vector<int32_t>& prompt_tokens,
                                const GenerateOptions& options, const PieceFn& on_piece) {
  using Clock = std::chrono::steady_clock;
  const auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  const Tokenizer& tokenizer = model_.tokenizer();
  const bool at_start = n_past() == 0;
  if (prompt_tokens.empty() && logits_.empty()) {
    detail::fail(
        "the prompt is empty and the model adds no BOS token: nothing "
        "to continue from");
  }

  GenerateStats stats;
  Sampler sampler(options);
  stats.seed = sampler.seed();
  const auto t0 = Clock::now();
  stats.n_prompt_reused = evaluate(prompt_tokens);
  const size_t window = size_t(std::max(options.penalty_last_n, 0));
  for (size_t i = tokens_.size() - std::min(tokens_.size(), window); i < tokens_.size(); ++i) {
    sampler.accept(tokens_[i]);
  }
  stats.n_prompt = prompt_tokens.size();
  stats.prompt_seconds = seconds_since(t0);

  const auto t1 = Clock::now();
  Detokenizer detok(tokenizer, at_start && prompt_tokens.size() <= 1);
  std::string pending;  // generated text not yet passed on (may begin a stop string)
  // Every generated token is evaluated, so that the context stays whole for a
  // next call.
  stats.stop_reason = StopReason::kMaxTokens;
  while (stats.n_generated < size_t(std::max(options.max_tokens, 0))) {
    if (options.cancel != nullptr && options.cancel->load(std::memory_order_relaxed)) {
      stats.stop_reason = StopReason::kCancelled;
      break;
    }
    const int32_t token = sampler.sample(logits_.data(), logits_.size());
    if (tokenizer.is_eog(token)) {
      stats.stop_reason = StopReason::kEndOfGeneration;
      break;
    }
    sampler.accept(token);
    ++stats.n_generated;
    pending += detok.push(token);
    size_t stop_at = std::string::npos;
    for (const std::string& s : options.stop)
      if (!s.empty()) stop_at = std::min(stop_at, pending.find(s));
    if (stop_at != std::string::npos) {
      on_piece(std::string_view(pending).substr(0, stop_at));
      pending.clear();
      stats.stop_reason = StopReason::kStopString;
      break;
    }
    const size_t hold = detail::stop_prefix_overlap(pending, options.stop);
    if (pending.size() > hold) {
      on_piece(std::string_view(pending).substr(0, pending.size() - hold));
      pending.erase(0, pending.size() - hold);
    }
    if (n_past() == n_ctx()) {
      stats.stop_reason = StopReason::kContextFull;
      break;
    }
    evaluate({token});
  }
  if (stats.stop_reason != StopReason::kStopString) {
    pending += detok.flush();
    if (!pending.empty()) on_piece(pending);
  }
  stats.generate_seconds = seconds_since(t1);
  return stats;
}

}  // namespace sllm
