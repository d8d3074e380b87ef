// The session API end to end on stories260K, against llama2.c's output (an independent
// implementation): greedy text, stop strings, seeds, and context limits.
#include <fstream>
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

TEST_CASE("a token id outside the vocabulary is an error and leaves the context unchanged") {
  const sllm::Model model = sllm::Model::open(sllm_test::test_data("stories260K.gguf"));
  sllm::Session session(model);
  session.evaluate({1, 403});
  CHECK_THROWS_AS(session.evaluate({407, 512}), sllm::Error);
  CHECK(session.n_past() == 2);
}
