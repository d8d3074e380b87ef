#include <cmath>
#include <map>
#include <set>
#include <vector>

#include "test_support.h"

namespace {

sllm::SamplerOptions options_with_seed(uint64_t seed) {
  sllm::SamplerOptions o;
  o.seed = seed;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0;
  o.temperature = 1.0f;
  return o;
}

std::map<int32_t, int> histogram(sllm::Sampler& s, const std::vector<float>& logits, int draws) {
  std::map<int32_t, int> h;
  for (int i = 0; i < draws; ++i) ++h[s.sample(logits.data(), logits.size())];
  return h;
}

}  // namespace

TEST_CASE("Rng: same seed gives the same sequence; uniform lies in [0, 1)") {
  sllm::Rng a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t x = a.next();
    CHECK(x == b.next());
    differs |= x != c.next();
    const float u = a.uniform();
    b.uniform();
    CHECK(u >= 0.0f);
    CHECK(u < 1.0f);
  }
  CHECK(differs);
}

TEST_CASE("greedy picks the largest logit, lowest id on ties") {
  sllm::SamplerOptions o = options_with_seed(1);
  o.temperature = 0;
  sllm::Sampler s(o);
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  CHECK(s.sample(logits.data(), logits.size()) == 1);
  const std::vector<float> single = {-7.0f};
  CHECK(s.sample(single.data(), 1) == 0);
}

TEST_CASE("temperature 1 samples in proportion to softmax probabilities") {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f};
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += p[i] = std::exp(double(logits[i]));
  sllm::Sampler s(options_with_seed(7));
  const int draws = 200000;
  const auto h = histogram(s, logits, draws);
  for (size_t i = 0; i < logits.size(); ++i) {
    const double want = p[i] / total;
    const double got = double(h.count(int32_t(i)) ? h.at(int32_t(i)) : 0) / draws;
    // 5 standard deviations of a binomial proportion.
    CHECK(std::fabs(got - want) < 5 * std::sqrt(want * (1 - want) / draws));
  }
}

TEST_CASE("low temperature sharpens, high temperature flattens") {
  const std::vector<float> logits = {0.0f, 1.0f};
  auto share_of_best = [&](float temperature) {
    sllm::SamplerOptions o = options_with_seed(3);
    o.temperature = temperature;
    sllm::Sampler s(o);
    return histogram(s, logits, 20000)[1] / 20000.0;
  };
  const double want_cold = 1 / (1 + std::exp(-1 / 0.25));
  const double want_hot = 1 / (1 + std::exp(-1 / 4.0));
  CHECK(share_of_best(0.25f) == doctest::Approx(want_cold).epsilon(0.02));
  CHECK(share_of_best(4.0f) == doctest::Approx(want_hot).epsilon(0.03));
}

TEST_CASE("top-k, top-p and min-p never return a filtered token") {
  // Probabilities ~ 0.5, 0.25, 0.125, 0.0625, ... (logits step by ln 2).
  std::vector<float> logits(10);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = -float(i) * std::log(2.0f);

  sllm::SamplerOptions k = options_with_seed(11);
  k.top_k = 3;
  sllm::Sampler sk(k);
  for (const auto& [id, n] : histogram(sk, logits, 5000)) CHECK(id < 3);

  sllm::SamplerOptions tp = options_with_seed(12);
  tp.top_p = 0.8f;  // 0.5 + 0.25 = 0.75 < 0.8, so three tokens are needed
  sllm::Sampler sp(tp);
  const auto hp = histogram(sp, logits, 5000);
  for (const auto& [id, n] : hp) CHECK(id < 3);
  CHECK(hp.count(2) == 1);

  sllm::SamplerOptions mp = options_with_seed(13);
  mp.min_p = 0.2f;  // keeps p >= 0.1: tokens 0, 1, 2 (0.125)
  sllm::Sampler sm(mp);
  const auto hm = histogram(sm, logits, 5000);
  for (const auto& [id, n] : hm) CHECK(id < 3);
  CHECK(hm.count(2) == 1);
}

TEST_CASE("the same seed gives the same choices; reset replays them") {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = float(std::sin(double(i)));
  sllm::Sampler a(options_with_seed(99)), b(options_with_seed(99)), c(options_with_seed(100));
  std::vector<int32_t> first;
  bool differs = false;
  for (int i = 0; i < 200; ++i) {
    const int32_t x = a.sample(logits.data(), logits.size());
    first.push_back(x);
    CHECK(x == b.sample(logits.data(), logits.size()));
    differs |= x != c.sample(logits.data(), logits.size());
  }
  CHECK(differs);
  a.reset();
  for (int i = 0; i < 200; ++i) CHECK(a.sample(logits.data(), logits.size()) == first[size_t(i)]);
}

TEST_CASE("penalties: repeat divides positive and multiplies negative logits; window is bounded") {
  sllm::SamplerOptions o = options_with_seed(5);
  o.temperature = 0;
  o.repeat_penalty = 2.0f;
  o.penalty_last_n = 2;
  sllm::Sampler s(o);
  // Token 0 at 3.0 beats token 1 at 2.0 until it is penalised to 1.5.
  const std::vector<float> logits = {3.0f, 2.0f, -0.5f};
  CHECK(s.sample(logits.data(), 3) == 0);
  s.accept(0);
  CHECK(s.sample(logits.data(), 3) == 1);
  // After two other tokens the window (size 2) no longer holds token 0.
  s.accept(2);
  s.accept(2);
  CHECK(s.sample(logits.data(), 3) == 0);

  // A negative logit gets more negative: -0.5 * 2 = -1 < -0.9.
  const std::vector<float> negative = {-0.9f, -0.5f};
  sllm::Sampler n(o);
  n.accept(1);
  CHECK(n.sample(negative.data(), 2) == 0);

  sllm::SamplerOptions f = options_with_seed(6);
  f.temperature = 0;
  f.frequency_penalty = 0.4f;
  f.presence_penalty = 0.3f;
  sllm::Sampler fs(f);
  const std::vector<float> close = {2.0f, 1.0f};
  fs.accept(0);
  CHECK(fs.sample(close.data(), 2) == 0);  // 2 - 0.4 - 0.3 = 1.3 > 1
  fs.accept(0);
  CHECK(fs.sample(close.data(), 2) == 1);  // 2 - 0.8 - 0.3 = 0.9 < 1
}
