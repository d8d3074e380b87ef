// Figures of the paged KV cache on a model (e.g. make_random_gguf's tinyllama-1.1b quantized to
// Q4_0 by `sllm quantize`):
//   bench_paged MODEL.gguf [--threads N] [--reps N] [--prefix N] [--depth N] [--steps N]
// 1. aggregate decode tokens/s of 4 sequences decoded as one batch vs one sequence;
// 2. time to first token of a request whose first --prefix tokens another request computed
//    (second request vs first);
// 3. decode tokens/s at context depth --depth vs 0, for F16 and int8 KV (the cache is filled
//    with random keys and values: decode speed does not depend on them);
// 4. KV bytes per token, F16 and int8.
// Each figure is measured --reps times (the measurements of one repetition back to back, so
// that a change of the machine's load hits both sides of a ratio alike); the median is printed
// with every value and the load average before and after, to tell disturbed runs.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// The 1-minute load average (Linux), or "?".
std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string first;
  return in >> first ? first : "?";
}

// Tokens from the model's made-up pieces (past the byte tokens); different seeds give
// different sequences, so that no repetition finds another's blocks in the prefix cache.
std::vector<int32_t> random_tokens(size_t n, uint64_t seed, int32_t n_vocab) {
  sllm::Rng rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& id : t) id = int32_t(300 + rng.next() % uint64_t(n_vocab - 300));
  return t;
}

// Decode tokens/s of n_seqs sequences stepped together, after a short prompt each and one
// untimed step.
double batch_decode_rate(const sllm::Model& model, size_t n_seqs, size_t steps, uint64_t seed) {
  sllm::EngineOptions eo;
  eo.pool_tokens = n_seqs * (steps + 64);
  const sllm::Engine engine(model, eo);
  std::vector<std::unique_ptr<sllm::Session>> owned;
  std::vector<sllm::Session*> sessions;
  const int32_t n_vocab = int32_t(model.config().n_vocab);
  for (size_t i = 0; i < n_seqs; ++i) {
    owned.push_back(std::make_unique<sllm::Session>(engine));
    sessions.push_back(owned.back().get());
    sessions.back()->evaluate(random_tokens(4, seed + i, n_vocab));
  }
  engine.step(sessions, random_tokens(n_seqs, seed + 100, n_vocab));
  const auto t0 = Clock::now();
  for (size_t s = 0; s < steps; ++s) {
    engine.step(sessions, random_tokens(n_seqs, seed + 200 + s, n_vocab));
  }
  return double(n_seqs * steps) / seconds_since(t0);
}

// Decode tokens/s of one sequence whose cache already holds depth tokens, after one untimed
// step.
double depth_decode_rate(const sllm::Transformer& tf, sllm::TensorType kv_type, size_t depth,
                         size_t steps) {
  const sllm::KvShape shape = tf.kv_shape();
  sllm::KvPool pool = sllm::KvPool::for_tokens(shape, depth + steps + 1, 16, kv_type);
  sllm::KvSequence seq(pool, depth + steps + 1);
  std::vector<float> k(shape.n_kv_heads * shape.key_dim), v(shape.n_kv_heads * shape.value_dim);
  sllm::Rng rng(1);
  for (float& x : k) x = 2 * rng.uniform() - 1;
  for (float& x : v) x = 2 * rng.uniform() - 1;
  seq.reserve(depth);
  for (size_t pos = 0; pos < depth; ++pos) {
    for (size_t l = 0; l < shape.n_layers; ++l) seq.write(l, pos, k.data(), v.data());
  }
  seq.commit(depth);
  sllm::ForwardScratch scratch;
  std::vector<float> logits(tf.config().n_vocab);
  const int32_t token = 500;
  tf.forward(&token, 1, seq, scratch, logits.data());
  const auto t0 = Clock::now();
  for (size_t s = 0; s < steps; ++s) tf.forward(&token, 1, seq, scratch, logits.data());
  return double(steps) / seconds_since(t0);
}

// Seconds to the first token of two requests of one engine that share prefix tokens: the
// first computes them, the second takes their whole blocks from the cache.
struct Ttft {
  double first = 0, second = 0;
  size_t reused = 0;
};
Ttft shared_prefix_ttft(const sllm::Model& model, size_t prefix, uint64_t seed) {
  const int32_t n_vocab = int32_t(model.config().n_vocab);
  const sllm::Engine engine(model);
  std::vector<int32_t> first = random_tokens(prefix, seed, n_vocab), second = first;
  const std::vector<int32_t> tail_a = random_tokens(8, seed + 1, n_vocab);
  const std::vector<int32_t> tail_b = random_tokens(8, seed + 2, n_vocab);
  first.insert(first.end(), tail_a.begin(), tail_a.end());
  second.insert(second.end(), tail_b.begin(), tail_b.end());
  sllm::Session a(engine), b(engine);
  Ttft r;
  auto t0 = Clock::now();
  a.evaluate(first);
  r.first = seconds_since(t0);
  t0 = Clock::now();
  r.reused = b.evaluate(second);
  r.second = seconds_since(t0);
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// "median (a, b, c)" with the given printf format for each number.
std::string summary(const std::vector<double>& v, const char* format) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), format, median(v));
  std::string s = std::string(buf) + " (";
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof(buf), format, v[i]);
    s += (i ? ", " : "") + std::string(buf);
  }
  return s + ")";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_paged MODEL.gguf [--threads N] [--reps N] [--prefix N] "
                 "[--depth N] [--steps N]\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each repetition's line as it ends
  int threads = 2;
  size_t reps = 3, prefix = 1000, depth = 2048, steps = 16;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const size_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--threads") {
      threads = int(v);
    } else if (a == "--reps") {
      reps = std::max<size_t>(v, 1);
    } else if (a == "--prefix") {
      prefix = v;
    } else if (a == "--depth") {
      depth = v;
    } else if (a == "--steps") {
      steps = std::max<size_t>(v, 1);
    } else {
      std::fprintf(stderr, "bench_paged: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    sllm::ModelOptions mo;
    mo.n_threads = threads;
    const sllm::Model model = sllm::Model::open(argv[1], mo);
    std::printf("model %s, %d threads, %s, %zu repetitions, %zu decode steps each\n", argv[1],
                model.transformer().n_threads(),
                sllm::detail::simd_target_name(sllm::detail::simd_targets().front()), reps, steps);
    batch_decode_rate(model, 1, 2, 0);  // warm-up: the weights paged in, buffers sized

    std::vector<double> one, four, ratio, ttft1, ttft2, ttft_share;
    std::vector<double> shallow[2], deep[2], kept[2];
    size_t reused = 0;
    const sllm::TensorType kv_types[2] = {sllm::TensorType::F16, sllm::TensorType::I8};
    for (size_t r = 0; r < reps; ++r) {
      const std::string load_before = load_average();
      one.push_back(batch_decode_rate(model, 1, steps, 1000 * r));
      four.push_back(batch_decode_rate(model, 4, steps, 1000 * r + 10));
      ratio.push_back(four.back() / one.back());
      const Ttft t = shared_prefix_ttft(model, prefix, 1000 * r + 500);
      ttft1.push_back(t.first);
      ttft2.push_back(t.second);
      ttft_share.push_back(100 * t.second / t.first);
      reused = t.reused;
      for (size_t k = 0; k < 2; ++k) {
        shallow[k].push_back(depth_decode_rate(model.transformer(), kv_types[k], 0, steps));
        deep[k].push_back(depth_decode_rate(model.transformer(), kv_types[k], depth, steps));
        kept[k].push_back(100 * deep[k].back() / shallow[k].back());
      }
      std::printf("repetition %zu: load average %s before, %s after\n", r + 1, load_before.c_str(),
                  load_average().c_str());
    }
    std::printf("medians (each repetition's value in parentheses):\n");
    std::printf("decode, F16 KV, 1 sequence: %s tok/s\n", summary(one, "%.2f").c_str());
    std::printf("decode, F16 KV, 4 sequences in one batch: %s tok/s together\n",
                summary(four, "%.2f").c_str());
    std::printf("  4 sequences / 1: %s\n", summary(ratio, "%.2fx").c_str());
    std::printf("time to first token, %zu-token shared prefix (%zu tokens reused):\n", prefix,
                reused);
    std::printf("  first request %s s\n", summary(ttft1, "%.3f").c_str());
    std::printf("  second request %s s\n", summary(ttft2, "%.3f").c_str());
    std::printf("  second / first: %s\n", summary(ttft_share, "%.1f%%").c_str());
    for (size_t k = 0; k < 2; ++k) {
      const char* name = sllm::tensor_type_name(kv_types[k]);
      std::printf("decode, %s KV, depth 0: %s tok/s\n", name, summary(shallow[k], "%.2f").c_str());
      std::printf("decode, %s KV, depth %zu: %s tok/s\n", name, depth,
                  summary(deep[k], "%.2f").c_str());
      std::printf("  depth %zu / depth 0: %s\n", depth, summary(kept[k], "%.0f%%").c_str());
    }
    const sllm::KvShape shape = model.transformer().kv_shape();
    const sllm::KvPool f16(shape, 1, 16, sllm::TensorType::F16);
    const sllm::KvPool i8(shape, 1, 16, sllm::TensorType::I8);
    std::printf("KV bytes per token: F16 %zu, int8 %zu\n", f16.token_bytes(), i8.token_bytes());
  } catch (const sllm::Error& e) {
    std::fprintf(stderr, "bench_paged: %s\n", e.what());
    return 1;
  }
  return 0;
}
