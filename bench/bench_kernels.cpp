// Kernel speed: GB/s of data read per call.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <benchmark/benchmark.h>

static void BM_dot_f32(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  std::vector<float> a(n, 0.5f), b(n, 0.25f);
  for (auto _ : state) benchmark::DoNotOptimize(sllm::detail::dot_f32(a.data(), b.data(), n));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(2 * n * sizeof(float)));
}
BENCHMARK(BM_dot_f32)->Arg(2048)->Arg(1 << 20);

// Weight-times-activations: decode (n = 1, bound by reading the weights) and prefill (n = 64,
// bound by multiply-adds). Reports weight bytes read per second and, as a counter, GFLOP/s.
static void BM_matmul(benchmark::State& state) {
  const auto type = static_cast<sllm::TensorType>(state.range(0));
  const size_t rows = 2048, cols = 2048, n = size_t(state.range(1));
  const int threads = int(state.range(2));
  const size_t elem = type == sllm::TensorType::F32 ? 4 : 2;
  std::vector<uint8_t> w(rows * cols * elem, 0x3c);  // 0x3c3c...: finite in all three types
  std::vector<float> x(n * cols, 0.5f), y(n * rows);
  const sllm::detail::MatrixView view{type, w.data(), rows, cols, cols * elem};
  for (auto _ : state) {
    sllm::detail::matmul(view, x.data(), n, cols, y.data(), rows, threads);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(w.size()));
  state.counters["GFLOP/s"] = benchmark::Counter(double(2 * rows * cols * n) * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(sllm::tensor_type_name(type));
}
BENCHMARK(BM_matmul)
    ->ArgNames({"type", "n", "threads"})
    ->ArgsProduct({{int(sllm::TensorType::F32), int(sllm::TensorType::F16),
                    int(sllm::TensorType::BF16)},
                   {1, 64},
                   {1, 2}})
    ->UseRealTime();

// The attention of one decode step of tinyllama-1.1b (22 layers, 4 KV heads, each with a group
// of 8 query heads of 64) over a paged cache of n tokens in blocks of 16: every KV head of every
// layer once, the heads of a layer spread over the threads as the forward pass does, so that the
// 22 layers' keys and values stream from memory (F16: 46 MB at n = 2048). Reports KV bytes read
// per second and, as a counter, decode steps per second.
static void BM_attention(benchmark::State& state) {
  const auto type = static_cast<sllm::TensorType>(state.range(0));
  const size_t n = size_t(state.range(1));
  const int threads = int(state.range(2));
  const sllm::KvShape shape{22, 4, 64, 64};
  const size_t group = 8;
  sllm::KvPool pool = sllm::KvPool::for_tokens(shape, n, 16, type);
  sllm::KvSequence seq(pool, n);
  sllm::Rng rng(1);
  std::vector<float> k(4 * 64), v(4 * 64), q(group * 64), out(4 * group * 64);
  for (float& x : q) x = 2 * rng.uniform() - 1;
  seq.reserve(n);
  for (size_t pos = 0; pos < n; ++pos) {
    for (float& x : k) x = 2 * rng.uniform() - 1;
    for (float& x : v) x = 2 * rng.uniform() - 1;
    for (size_t l = 0; l < shape.n_layers; ++l) seq.write(l, pos, k.data(), v.data());
  }
  seq.commit(n);
  for (auto _ : state) {
    for (size_t l = 0; l < shape.n_layers; ++l) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
      for (size_t h = 0; h < shape.n_kv_heads; ++h) {
        sllm::detail::attention(q.data(), group, 64, seq.keys(l, h), seq.values(l, h), 0, n, 0.125f,
                                out.data() + h * group * 64);
      }
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n * pool.token_bytes()));
  state.counters["steps/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(sllm::tensor_type_name(type));
}
BENCHMARK(BM_attention)
    ->ArgNames({"type", "n", "threads"})
    ->ArgsProduct({{int(sllm::TensorType::F16), int(sllm::TensorType::I8)}, {2048}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
