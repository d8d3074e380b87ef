#include <algorithm>
#include <cmath>
#include <random>
#include <unordered_map>

namespace sllm {

namespace detail {
size_t argmax(const float* x, size_t n) {
  size_t best = 0;
  for (size_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

inline uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace detail

Rng::Rng(uint64_t seed) {
  for (uint64_t& s : s_) s = detail::splitmix64(seed);
}

uint64_t Rng::next() {
  const auto rotl = [](uint64_t x, int k) { return (x << k) | (x >> (64 - k)); };
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

float Rng::uniform() {
  return float(next() >> 40) * (1.0f / 16777216.0f);
}

Sampler::Sampler(const SamplerOptions& options)
    : options_(options),
      seed_(options.seed ? *options.seed : std::random_device{}()),
      rng_(seed_) {}

void Sampler::accept(int32_t token) {
  if (options_.penalty_last_n <= 0) return;
  if (window_.size() == size_t(options_.penalty_last_n)) window_.erase(window_.begin());
  window_.push_back(token);
}

void Sampler::reset() {
  window_.clear();
  rng_ = Rng(seed_);
}

int32_t Sampler::sample(const float* logits, size_t n_vocab) {
  if (n_vocab == 0) detail::fail("cannot sample from an empty vocabulary");
  candidates_.resize(n_vocab);
  for (size_t i = 0; i < n_vocab; ++i) candidates_[i] = {int32_t(i), logits[i]};

  // Penalties, as llama.cpp and the OpenAI API define them: the repeat penalty divides a
  // positive logit (multiplies a negative one); frequency/presence subtract.
  const bool penalise = options_.repeat_penalty != 1.0f || options_.frequency_penalty != 0 ||
                        options_.presence_penalty != 0;
  if (penalise && !window_.empty()) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : window_)
      if (t >= 0 && size_t(t) < n_vocab) ++counts[t];
    for (const auto& [id, count] : counts) {
      float& l = candidates_[size_t(id)].logit;
      l = l > 0 ? l / options_.repeat_penalty : l * options_.repeat_penalty;
      l -= float(count) * options_.frequency_penalty + options_.presence_penalty;
    }
  }

  const auto by_logit = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  if (options_.temperature <= 0) {
    return std::min_element(candidates_.begin(), candidates_.end(), by_logit)->id;
  }

  // Top-k, then sort what is left (top-p and min-p need the order).
  size_t n = n_vocab;
  if (options_.top_k > 0 && size_t(options_.top_k) < n) {
    n = size_t(options_.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + n, candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }

  // Probabilities at temperature 1 decide the top-p and min-p cut, as in llama.cpp.
  std::vector<float> p(n);
  const float max_logit = candidates_[0].logit;
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += p[i] = std::exp(candidates_[i].logit - max_logit);
  if (options_.top_p < 1.0f) {
    double cum = 0;
    for (size_t i = 0; i < n; ++i) {
      cum += p[i] / total;
      if (cum >= options_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (options_.min_p > 0) {
    size_t keep = 1;
    while (keep < n && p[keep] >= options_.min_p * p[0]) ++keep;
    n = keep;
  }

  // Sample from the survivors at the requested temperature.
  total = 0;
  for (size_t i = 0; i < n; ++i)
    total += p[i] = std::exp((candidates_[i].logit - max_logit) / options_.temperature);
  const double r = double(rng_.uniform()) * total;
  double cum = 0;
  for (size_t i = 0; i < n; ++i) {
    cum += p[i];
    if (r < cum) return candidates_[i].id;
  }
  return candidates_[n - 1].id;
}

}  // namespace sllm
