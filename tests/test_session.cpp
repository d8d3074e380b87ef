// The session API end to end on stories260K, against llama2.c's output (an independent
// implementation): greedy text, stop strings, seeds, and context limits.
#include <algorithm>
#include <cmath>
#include <atomic>
#include <fstream>
#include <memory>
#include <sstream>

#include "test_support.h"

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string kExpected = "models/stories260K/expected/";

struct Generated {
  std::string text;
  sllm::GenerateStats stats;
};

Generated generate(sllm::Session& session, const std::string& prompt,
                   const sllm::GenerateOptions& options) {
  Generated g;
  g.stats = session.generate(prompt, options, [&](std::string_view piece) { g.text += piece; });
  return g;
}

sllm::GenerateOptions greedy(int32_t max_tokens) {
  sllm::GenerateOptions o;
  o.temperature = 0;
  o.max_tokens = max_tokens;
  return o;
}

}  // namespace

TEST_CASE("greedy generation equals llama2.c's text") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);

  const std::string bos_txt = sllm_test::fixture(kExpected + "greedy_bos_n256.txt");
  if (!bos_txt.empty()) {
    const Generated g = generate(session, "", greedy(256));
    CHECK(g.stats.n_prompt == 1);  // BOS alone
    CHECK(g.stats.n_generated == 256);
    CHECK(g.text + "\n" == read_text(bos_txt));
  }

  const std::string lily_txt = sllm_test::fixture(kExpected + "greedy_prompt_lily_tom_n64.txt");
  if (!lily_txt.empty()) {
    session.reset();
    const std::string prompt = "Lily and Tom went to the park";
    const Generated g = generate(session, prompt, greedy(64 - 11));  // run.c: 64 positions
    CHECK(g.stats.n_prompt == 12);
    CHECK(prompt + g.text + "\n" == read_text(lily_txt));
  }
}

TEST_CASE("the context continues across generate calls") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session whole(model), split(model);
  const Generated all = generate(whole, "Once upon a time", greedy(40));
  const Generated first = generate(split, "Once upon a time", greedy(15));
  CHECK(split.n_past() == first.stats.n_prompt + 15);
  const Generated rest = generate(split, "", greedy(25));
  CHECK(rest.stats.n_prompt == 0);
  CHECK(first.text + rest.text == all.text);
}

TEST_CASE("stop strings end the text before them, even across pieces") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  const Generated full = generate(session, "", greedy(64));
  // Stop at the first "park" and at a stop string spanning several tokens.
  for (const char* stop : {"park", "little girl named"}) {
    CAPTURE(stop);
    const size_t at = full.text.find(stop);
    REQUIRE(at != std::string::npos);
    session.reset();
    sllm::GenerateOptions o = greedy(64);
    o.stop = {"never appears in the text", stop};
    const Generated g = generate(session, "", o);
    CHECK(g.text == full.text.substr(0, at));
    CHECK(g.stats.stop_reason == sllm::StopReason::kStopString);
  }
}

TEST_CASE("the same seed gives the same text; another seed another") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  sllm::GenerateOptions o;
  o.max_tokens = 48;
  o.temperature = 1.0f;
  o.seed = 1234;
  const Generated a = generate(session, "Once upon a time", o);
  session.reset();
  const Generated b = generate(session, "Once upon a time", o);
  session.reset();
  o.seed = 4321;
  const Generated c = generate(session, "Once upon a time", o);
  CHECK(a.stats.seed == 1234);
  CHECK(a.text == b.text);
  CHECK(a.text != c.text);
}

TEST_CASE("context limits: a prompt that does not fit is an error; a full context stops") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::SessionOptions so;
  so.n_ctx = 24;
  sllm::Session session(model, so);
  const std::string long_prompt =
      "Lily and Tom went to the park and played with a ball and a dog and a cat all day long";
  REQUIRE(session.tokenize(long_prompt).size() > 24);
  CHECK_THROWS_WITH_AS(generate(session, long_prompt, greedy(8)),
                       doctest::Contains("context has room for 24"), sllm::Error);
  CHECK(session.n_past() == 0);

  const Generated g = generate(session, "Once upon a time", greedy(100));
  CHECK(g.stats.stop_reason == sllm::StopReason::kContextFull);
  CHECK(session.n_past() == 24);
  CHECK(g.stats.n_prompt + g.stats.n_generated == 25);  // the last token did not fit
}

TEST_CASE("gpt2's context is at most its learned positions; filling it stops generation") {
  const std::string path = sllm_test::fixture("ref/d_gpt2.F32.gguf");
  if (path.empty()) return;
  const sllm::Model model = sllm::Model::open(path);
  sllm::SessionOptions so;
  so.n_ctx = 129;
  CHECK_THROWS_WITH_AS(sllm::Session(model, so),
                       doctest::Contains("exceeds the 128 positions that this gpt2 model"),
                       sllm::Error);
  sllm::Session session(model);  // the default: all 128
  const Generated g = generate(session, "Once upon a time", greedy(200));
  CHECK(g.stats.stop_reason == sllm::StopReason::kContextFull);
  CHECK(session.n_past() == 128);
}

TEST_CASE("a token id outside the vocabulary is an error and leaves the context unchanged") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  session.evaluate({1, 403});
  CHECK_THROWS_AS(session.evaluate({407, 512}), sllm::Error);
  CHECK(session.n_past() == 2);
}

TEST_CASE("tokens() lists the context; truncate() keeps a prefix to continue differently") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model), fresh(model);
  const std::vector<int32_t> prompt = session.tokenize("Once upon a time");
  const Generated g = generate(session, "Once upon a time", greedy(10));
  // The prompt, then every generated token but the last (sampled, not yet evaluated).
  REQUIRE(session.tokens().size() == prompt.size() + 10);
  CHECK(std::equal(prompt.begin(), prompt.end(), session.tokens().begin()));
  CHECK(session.n_past() == session.tokens().size());

  // Cut back to the prompt's first three tokens and continue with other text: the same text as a
  // fresh session given the whole prompt.
  session.truncate(3);
  CHECK(session.n_past() == 3);
  CHECK(session.logits().empty());
  const std::vector<int32_t> other = session.tokenize("Once upon a dog", true);
  REQUIRE(std::equal(other.begin(), other.begin() + 3, prompt.begin()));
  std::string continued, whole;
  session.generate(std::vector<int32_t>(other.begin() + 3, other.end()), greedy(12),
                   [&](std::string_view piece) { continued += piece; });
  fresh.generate(other, greedy(12), [&](std::string_view piece) { whole += piece; });
  CHECK(continued == whole);
  CHECK(session.tokens() == fresh.tokens());
  CHECK_THROWS_AS(session.truncate(session.n_past() + 1), sllm::Error);
  session.reset();
  CHECK(session.tokens().empty());
}

TEST_CASE("a cancel flag stops generation before the next token") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  std::atomic<bool> cancel{false};
  sllm::GenerateOptions o = greedy(50);
  o.cancel = &cancel;
  size_t pieces = 0;
  const sllm::GenerateStats s = session.generate("Once upon a time", o, [&](std::string_view) {
    if (++pieces == 5) cancel.store(true);
  });
  CHECK(s.stop_reason == sllm::StopReason::kCancelled);
  CHECK(s.n_generated == 5);
  CHECK(std::string(sllm::stop_reason_name(s.stop_reason)) == "cancelled");
}

namespace {
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(double(a[i]) - b[i]));
  return d;
}
}  // namespace

TEST_CASE("sessions of one engine reuse a shared prompt prefix; logits equal a full recompute") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::EngineOptions eo;
  eo.kv_type = sllm::TensorType::F32;
  const sllm::Engine engine(model, eo);
  std::vector<int32_t> system(40);
  for (size_t i = 0; i < system.size(); ++i) system[i] = int32_t(1 + 11 * i % 500);
  std::vector<int32_t> first = system, second = system;
  first.insert(first.end(), {5, 6, 7});
  second.insert(second.end(), {300, 301});
  {
    sllm::Session a(engine);
    CHECK(a.evaluate(first) == 0);
  }
  sllm::Session b(engine);
  CHECK(b.evaluate(second) == 32);  // two whole blocks of the 40 shared tokens
  CHECK(b.n_past() == second.size());
  CHECK(b.tokens() == second);
  sllm::SessionOptions so;
  so.kv_type = sllm::TensorType::F32;
  sllm::Session fresh(model, so);
  CHECK(fresh.evaluate(second) == 0);
  CHECK(max_abs_diff(b.logits(), fresh.logits()) < 1e-4);
  // generate() reports the split.
  sllm::Session c(engine);
  const sllm::GenerateStats stats = c.generate(first, greedy(2), [](std::string_view) {});
  CHECK(stats.n_prompt == first.size());
  CHECK(stats.n_prompt_reused == 32);
}

TEST_CASE("Engine::step decodes several sessions in one batch, each as if alone") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  const sllm::Engine engine(model);
  sllm::Session a(engine), b(engine), c(engine);
  a.evaluate({1, 40, 41});
  b.evaluate({1, 90});
  c.evaluate({1, 200, 201, 202, 203});
  engine.step({&a, &b, &c}, {7, 8, 9});
  engine.step({&c, &a}, {10, 11});  // b leaves
  sllm::SessionOptions so;
  so.kv_type = sllm::TensorType::F16;  // as the engine's default
  for (const auto& expect : std::vector<std::pair<sllm::Session*, std::vector<int32_t>>>{
           {&a, {1, 40, 41, 7, 11}}, {&b, {1, 90, 8}}, {&c, {1, 200, 201, 202, 203, 9, 10}}}) {
    sllm::Session alone(model, so);
    const std::vector<int32_t> prompt(expect.second.begin(), expect.second.end() - 1);
    alone.evaluate(prompt);
    alone.evaluate({expect.second.back()});
    CHECK(expect.first->tokens() == expect.second);
    CHECK(max_abs_diff(expect.first->logits(), alone.logits()) < 1e-4);
  }
  sllm::Session other(model);
  CHECK(sllm_test::error_message([&] {
          engine.step({&a, &other}, {1, 2});
        }).find("another engine") != std::string::npos);
}

TEST_CASE("Engine::generate: a session the pool cannot hold stops; the others go on unharmed") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::EngineOptions eo;
  eo.pool_tokens = 48;  // 3 blocks of 16: the prompts take 2, one is left for 2 sessions
  const sllm::Engine engine(model, eo);
  sllm::Session a(engine), b(engine);
  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378, 365, 303, 384, 400, 260};
  std::vector<std::string> texts(2);
  const std::vector<sllm::GenerateStats> stats = engine.generate(
      {&a, &b}, prompt, greedy(20), [&](size_t i, std::string_view piece) { texts[i] += piece; });
  REQUIRE(stats.size() == 2);
  CHECK(stats[0].stop_reason == sllm::StopReason::kMaxTokens);
  CHECK(stats[0].n_generated == 20);
  CHECK(stats[1].stop_reason == sllm::StopReason::kPoolFull);
  CHECK(stats[1].n_generated == 7);  // tokens 10..15 fill its block; the 7th needs another
  sllm::SessionOptions so;
  so.kv_type = sllm::TensorType::F16;
  sllm::Session alone(model, so);
  const Generated want = [&] {
    Generated g;
    g.stats = alone.generate(prompt, greedy(20), [&](std::string_view p) { g.text += p; });
    return g;
  }();
  CHECK(texts[0] == want.text);
  CHECK(want.text.compare(0, texts[1].size(), texts[1]) == 0);
  CHECK(a.n_past() == prompt.size() + 20);
}

TEST_CASE("fork: divergent continuations equal runs from scratch; the parent is unchanged") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  const sllm::Engine engine(model);
  sllm::Session parent(engine);
  // 21 tokens: the second block is shared part-filled, so each first write copies it.
  std::vector<int32_t> prompt =
      parent.tokenize("Lily and Tom went to the park. They saw a big dog");
  prompt.resize(21);
  REQUIRE(prompt.size() == 21);
  parent.evaluate(prompt);
  const std::vector<float> parent_logits = parent.logits();
  const size_t free_before = engine.pool().free_blocks();
  sllm::Session a = parent.fork();
  sllm::Session b = parent.fork();
  CHECK(engine.pool().free_blocks() == free_before);  // the children share every block
  CHECK(a.tokens() == prompt);
  CHECK(a.logits() == parent_logits);
  CHECK(&a.engine().pool() == &engine.pool());

  // Each child continues differently; a fresh session (its own F16 pool, as the engine's) that
  // evaluates the prompt and then the same continuation gives the same text and logits.
  const std::vector<std::vector<int32_t>> continuations = {{}, {403, 407, 261}};
  sllm::Session* children[] = {&a, &b};
  for (size_t i = 0; i < 2; ++i) {
    CAPTURE(i);
    std::string text, want;
    const sllm::GenerateStats s = children[i]->generate(
        continuations[i], greedy(24), [&](std::string_view piece) { text += piece; });
    CHECK(s.n_generated == 24);
    sllm::Session fresh(model);
    fresh.evaluate(prompt);
    fresh.generate(continuations[i], greedy(24), [&](std::string_view piece) { want += piece; });
    CHECK(text == want);
    CHECK(children[i]->tokens() == fresh.tokens());
    CHECK(max_abs_diff(children[i]->logits(), fresh.logits()) < 1e-5);
  }
  CHECK(a.tokens() != b.tokens());

  // The parent still holds the prompt alone, and continues as a fresh session would.
  CHECK(parent.tokens() == prompt);
  CHECK(parent.logits() == parent_logits);
  parent.evaluate({300, 301});
  sllm::Session fresh(model);
  fresh.evaluate(prompt);
  fresh.evaluate({300, 301});
  CHECK(max_abs_diff(parent.logits(), fresh.logits()) < 1e-5);

  // A fork of a session made from a model shares that session's own pool; made on the heap.
  sllm::Session own(model);
  own.evaluate(prompt);
  const std::unique_ptr<sllm::Session> own_child(new sllm::Session(own.fork()));
  own_child->evaluate({300, 301});
  CHECK(max_abs_diff(own_child->logits(), fresh.logits()) < 1e-5);
  CHECK(own.tokens() == prompt);
}
