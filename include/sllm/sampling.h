// Sampling layer: turns a row of logits into the next token id. Deterministic for a seed.
#include <optional>

namespace sllm {

struct SamplerOptions {
  float temperature = 0.8f;      // <= 0: greedy (argmax after penalties)
  int32_t top_k = 40;            // <= 0: off
  float top_p = 0.95f;           // >= 1: off
  float min_p = 0.05f;           // <= 0: off; drop tokens below min_p * p(best)
  float repeat_penalty = 1.0f;   // 1: off; >1 discourages tokens seen in the window
  float frequency_penalty = 0;   // subtracted once per occurrence in the window
  float presence_penalty = 0;    // subtracted once if present in the window
  int32_t penalty_last_n = 64;   // window of recent tokens the penalties look at (0: off)
  std::optional<uint64_t> seed;  // unset: a random seed (see Sampler::seed())
};

// xoshiro256** seeded through splitmix64: the same seed gives the same numbers everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  float uniform();  // [0, 1) with 24 random bits

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& options = {});
  // Picks a token from logits[0..n_vocab) (not modified), with the penalties of the window.
  int32_t sample(const float* logits, size_t n_vocab);
  // Records a token (prompt or generated) in the penalty window.
  void accept(int32_t token);
  void reset();  // clears the window and restarts the random sequence from the seed
  uint64_t seed() const { return seed_; }
  const SamplerOptions& options() const { return options_; }

 private:
  struct Candidate {
    int32_t id;
    float logit;
  };
  SamplerOptions options_;
  uint64_t seed_;
  Rng rng_;
  std::vector<int32_t> window_;  // last penalty_last_n accepted tokens, oldest first
  std::vector<Candidate> candidates_;
};

namespace detail {
// Index of the largest value; the lowest index wins ties (so greedy output is well defined).
size_t argmax(const float* x, size_t n);
}  // namespace detail

}  // namespace sllm
