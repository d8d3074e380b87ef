// Figures of the paged KV cache on a model (e.g. make_random_gguf's tinyllama-1.1b):
//   bench_paged MODEL.gguf [--threads N] [--prefix N] [--depth N] [--steps N]
// 1. aggregate decode tokens/s of 4 sequences decoded as one batch vs one sequence;
// 2. time to first token of a request whose first --prefix tokens another request computed
//    (second request vs first);
// 3. decode tokens/s at context depth --depth vs 0, for F16 and int8 KV (the cache is filled
//    with random keys and values: decode speed does not depend on them);
// 4. KV bytes per token, F16 and int8.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::vector<int32_t> some_tokens(size_t n, int32_t first, int32_t n_vocab) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = int32_t((first + 13 * int64_t(i)) % (n_vocab - 300) + 300);
  return t;
}

// Decode tokens/s of n_seqs sequences stepped together, after a short prompt each.
double batch_decode_rate(const sllm::Model& model, size_t n_seqs, size_t steps) {
  sllm::EngineOptions eo;
  eo.pool_tokens = n_seqs * (steps + 64);
  const sllm::Engine engine(model, eo);
  std::vector<std::unique_ptr<sllm::Session>> owned;
  std::vector<sllm::Session*> sessions;
  const int32_t n_vocab = int32_t(model.config().n_vocab);
  for (size_t i = 0; i < n_seqs; ++i) {
    owned.push_back(std::make_unique<sllm::Session>(engine));
    sessions.push_back(owned.back().get());
    sessions.back()->evaluate(some_tokens(4, int32_t(7 * i + 1), n_vocab));
  }
  const auto t0 = Clock::now();
  for (size_t s = 0; s < steps; ++s) {
    engine.step(sessions, some_tokens(n_seqs, int32_t(s), n_vocab));
  }
  return double(n_seqs * steps) / seconds_since(t0);
}

// Decode tokens/s of one sequence whose cache already holds depth tokens.
double depth_decode_rate(const sllm::Transformer& tf, sllm::TensorType kv_type, size_t depth,
                         size_t steps) {
  const sllm::KvShape shape = tf.kv_shape();
  sllm::KvPool pool = sllm::KvPool::for_tokens(shape, depth + steps, 16, kv_type);
  sllm::KvSequence seq(pool, depth + steps);
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
  tf.forward(&token, 1, seq, scratch, logits.data());  // warm up
  const auto t0 = Clock::now();
  for (size_t s = 1; s < steps; ++s) tf.forward(&token, 1, seq, scratch, logits.data());
  return double(steps - 1) / seconds_since(t0);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_paged MODEL.gguf [--threads N] [--prefix N] [--depth N] "
                 "[--steps N]\n");
    return 2;
  }
  int threads = 2;
  size_t prefix = 1000, depth = 2048, steps = 16;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    const size_t v = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--threads") {
      threads = int(v);
    } else if (a == "--prefix") {
      prefix = v;
    } else if (a == "--depth") {
      depth = v;
    } else if (a == "--steps") {
      steps = v;
    } else {
      std::fprintf(stderr, "bench_paged: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    sllm::ModelOptions mo;
    mo.n_threads = threads;
    const sllm::Model model = sllm::Model::open(argv[1], mo);
    const int32_t n_vocab = int32_t(model.config().n_vocab);
    std::printf("model %s, %d threads, %s\n", argv[1], model.transformer().n_threads(),
                sllm::detail::simd_target_name(sllm::detail::simd_targets().front()));

    const double one = batch_decode_rate(model, 1, steps);
    const double four = batch_decode_rate(model, 4, steps);
    std::printf(
        "decode, F16 KV: 1 sequence %.2f tok/s; 4 sequences in one batch %.2f tok/s "
        "together (%.2fx)\n",
        one, four, four / one);

    const sllm::Engine engine(model);
    std::vector<int32_t> first = some_tokens(prefix, 1, n_vocab), second = first;
    const std::vector<int32_t> tail_a = some_tokens(8, 5, n_vocab),
                               tail_b = some_tokens(8, 9, n_vocab);
    first.insert(first.end(), tail_a.begin(), tail_a.end());
    second.insert(second.end(), tail_b.begin(), tail_b.end());
    sllm::Session a(engine), b(engine);
    auto t0 = Clock::now();
    a.evaluate(first);
    const double ttft_first = seconds_since(t0);
    t0 = Clock::now();
    const size_t reused = b.evaluate(second);
    const double ttft_second = seconds_since(t0);
    std::printf(
        "time to first token, %zu-token shared prefix: first request %.3f s, second %.3f s "
        "(%.1f%%; %zu tokens reused)\n",
        prefix, ttft_first, ttft_second, 100 * ttft_second / ttft_first, reused);

    for (sllm::TensorType type : {sllm::TensorType::F16, sllm::TensorType::I8}) {
      const double shallow = depth_decode_rate(model.transformer(), type, 0, steps);
      const double deep = depth_decode_rate(model.transformer(), type, depth, steps);
      std::printf("decode, %s KV: depth 0 %.2f tok/s, depth %zu %.2f tok/s (%.0f%%)\n",
                  sllm::tensor_type_name(type), shallow, depth, deep, 100 * deep / shallow);
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
