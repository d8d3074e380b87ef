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
    case StopReason::kPoolFull:
      return "KV pool full";
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

Session::Session(ForkOf fork)
    : engine_(fork.parent.engine_),
      model_(fork.parent.model_),
      seq_(fork.parent.seq_.fork()),
      tokens_(fork.parent.tokens_),
      logits_(fork.parent.logits_) {}

Session Session::fork() const {
  return Session(ForkOf{*this});
}

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

namespace detail {

// The generation of one session after its prompt: samples each next token from the logits,
// streams the text, and decides when to stop. Shared by Session::generate and
// Engine::generate (which steps many of these in one batch).
class Generation {
 public:
  Generation(const Session& session, const GenerateOptions& options, bool at_start, size_t n_prompt,
             size_t n_reused)
      : session_(session),
        options_(options),
        sampler_(options),
        detok_(session.model().tokenizer(), at_start && n_prompt <= 1) {
    stats_.seed = sampler_.seed();
    stats_.n_prompt = n_prompt;
    stats_.n_prompt_reused = n_reused;
    const std::vector<int32_t>& context = session.tokens();
    const size_t window = size_t(std::max(options.penalty_last_n, 0));
    for (size_t i = context.size() - std::min(context.size(), window); i < context.size(); ++i) {
      sampler_.accept(context[i]);
    }
  }
  GenerateStats& stats() { return stats_; }

  // The next token to evaluate, from the session's logits, after passing on its text; false
  // when generation stops instead (then the rest of the text has been passed on).
  bool next(const PieceFn& on_piece, int32_t& token) {
    if (stats_.n_generated >= size_t(std::max(options_.max_tokens, 0))) {
      return stop(StopReason::kMaxTokens, on_piece);
    }
    if (options_.cancel != nullptr && options_.cancel->load(std::memory_order_relaxed)) {
      return stop(StopReason::kCancelled, on_piece);
    }
    const std::vector<float>& logits = session_.logits();
    token = sampler_.sample(logits.data(), logits.size());
    if (session_.model().tokenizer().is_eog(token)) {
      return stop(StopReason::kEndOfGeneration, on_piece);
    }
    sampler_.accept(token);
    ++stats_.n_generated;
    pending_ += detok_.push(token);
    size_t stop_at = std::string::npos;
    for (const std::string& s : options_.stop)
      if (!s.empty()) stop_at = std::min(stop_at, pending_.find(s));
    if (stop_at != std::string::npos) {
      on_piece(std::string_view(pending_).substr(0, stop_at));
      pending_.clear();
      stats_.stop_reason = StopReason::kStopString;
      return false;
    }
    const size_t hold = stop_prefix_overlap(pending_, options_.stop);
    if (pending_.size() > hold) {
      on_piece(std::string_view(pending_).substr(0, pending_.size() - hold));
      pending_.erase(0, pending_.size() - hold);
    }
    // Every generated token is evaluated, so that the context stays whole for a next call.
    if (session_.n_past() == session_.n_ctx()) return stop(StopReason::kContextFull, on_piece);
    return true;
  }

 private:
  bool stop(StopReason reason, const PieceFn& on_piece) {
    stats_.stop_reason = reason;
    pending_ += detok_.flush();
    if (!pending_.empty()) on_piece(pending_);
    pending_.clear();
    return false;
  }
  const Session& session_;
  const GenerateOptions& options_;
  Sampler sampler_;
  Detokenizer detok_;
  std::string pending_;  // generated text not yet passed on (may begin a stop string)
  GenerateStats stats_;
};

inline double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace detail

GenerateStats Session::generate(const std::vector<int32_t>& prompt_tokens,
                                const GenerateOptions& options, const PieceFn& on_piece) {
  if (prompt_tokens.empty() && logits_.empty()) {
    detail::fail(
        "the prompt is empty and the model adds no BOS token: nothing "
        "to continue from");
  }
  const bool at_start = n_past() == 0;
  const auto t0 = std::chrono::steady_clock::now();
  const size_t reused = evaluate(prompt_tokens);
  detail::Generation gen(*this, options, at_start, prompt_tokens.size(), reused);
  gen.stats().prompt_seconds = detail::seconds_since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  int32_t token = 0;
  while (gen.next(on_piece, token)) evaluate({token});
  gen.stats().generate_seconds = detail::seconds_since(t1);
  return gen.stats();
}

std::vector<GenerateStats> Engine::generate(const std::vector<Session*>& sessions,
                                            const std::vector<int32_t>& prompt_tokens,
                                            const GenerateOptions& options,
                                            const BatchPieceFn& on_piece) const {
  if (prompt_tokens.empty()) detail::fail("Engine::generate: the prompt is empty");
  std::vector<std::unique_ptr<detail::Generation>> gens;
  std::vector<GenerateOptions> each(sessions.size(), options);
  std::vector<PieceFn> pieces;
  for (size_t i = 0; i < sessions.size(); ++i) {
    if (options.seed) each[i].seed = *options.seed + i;
    pieces.push_back([&on_piece, i](std::string_view piece) { on_piece(i, piece); });
  }
  // Prompts one by one: after the first, the prompt's whole blocks come from the cache.
  for (size_t i = 0; i < sessions.size(); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const bool at_start = sessions[i]->n_past() == 0;
    const size_t reused = sessions[i]->evaluate(prompt_tokens);
    gens.push_back(std::make_unique<detail::Generation>(*sessions[i], each[i], at_start,
                                                        prompt_tokens.size(), reused));
    gens.back()->stats().prompt_seconds = detail::seconds_since(t0);
  }
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<size_t> active(sessions.size());
  for (size_t i = 0; i < active.size(); ++i) active[i] = i;
  while (!active.empty()) {
    std::vector<Session*> batch;
    std::vector<int32_t> tokens;
    std::vector<size_t> still;
    for (size_t i : active) {
      int32_t token = 0;
      bool go_on = gens[i]->next(pieces[i], token);
      if (go_on) {
        // A session the pool has no block for leaves the batch; the others go on.
        try {
          sessions[i]->seq_.reserve(1);
        } catch (const Error&) {
          gens[i]->stats().stop_reason = StopReason::kPoolFull;
          go_on = false;
        }
      }
      if (go_on) {
        batch.push_back(sessions[i]);
        tokens.push_back(token);
        still.push_back(i);
      } else {
        gens[i]->stats().generate_seconds = detail::seconds_since(t1);
      }
    }
    if (!batch.empty()) step(batch, tokens);
    active = still;
  }
  std::vector<GenerateStats> stats;
  for (const auto& g : gens) stats.push_back(g->stats());
  return stats;
}

}  // namespace sllm
