// Quantized matmul speed at the shapes of a 1.1B Llama (TinyLlama): GB/s of weights read for
// decode (1 token), GOP/s (2 * rows * cols * tokens per second) for prefill.
//   bench_matmul_q --benchmark_filter=Q4_0
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <benchmark/benchmark.h>

#include <random>

namespace {

struct Weights {
  sllm::TensorType type;
  size_t rows, cols;
  std::vector<uint8_t> data;
};

// Random weights quantized with the reference quantizer, made once per shape and type.
const Weights& weights(sllm::TensorType type, size_t rows, size_t cols) {
  static std::vector<std::unique_ptr<Weights>> cache;
  for (const auto& w : cache) {
    if (w->type == type && w->rows == rows && w->cols == cols) return *w;
  }
  const size_t row_bytes = cols / 32 * (type == sllm::TensorType::Q8_0 ? 34 : 18);
  auto w = std::make_unique<Weights>(Weights{type, rows, cols, {}});
  w->data.resize(rows * row_bytes);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> row(cols);
  for (size_t r = 0; r < rows; ++r) {
    for (float& v : row) v = normal(rng);
    sllm::quantize_row(type, row.data(), w->data.data() + r * row_bytes, cols);
  }
  cache.push_back(std::move(w));
  return *cache.back();
}

// Args: rows, cols, threads, tokens.
void BM_matmul_q(benchmark::State& state, sllm::TensorType type) {
  const size_t rows = size_t(state.range(0)), cols = size_t(state.range(1));
  const int threads = int(state.range(2));
  const size_t tokens = size_t(state.range(3));
  const Weights& w = weights(type, rows, cols);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(tokens * cols);
  for (float& v : x) v = normal(rng);
  sllm::detail::QuantizedActivations qx;
  sllm::detail::quantize_activations(x.data(), tokens, cols, cols, qx, threads);
  std::vector<float> y(tokens * rows);
  const sllm::detail::MatrixView m{type, w.data.data(), rows, cols, w.data.size() / rows};
  for (auto _ : state) {
    sllm::detail::matmul_q(m, qx, y.data(), rows, threads);
    benchmark::DoNotOptimize(y.data());
  }
  const double iters = double(state.iterations());
  state.counters["GB/s"] =
      benchmark::Counter(iters * double(w.data.size()) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GOP/s"] =
      benchmark::Counter(iters * 2.0 * rows * cols * tokens / 1e9, benchmark::Counter::kIsRate);
}

// Args: tokens, cols, threads.
void BM_quantize_activations(benchmark::State& state) {
  const size_t tokens = size_t(state.range(0)), cols = size_t(state.range(1));
  std::vector<float> x(tokens * cols);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (float& v : x) v = normal(rng);
  sllm::detail::QuantizedActivations qx;
  for (auto _ : state) {
    sllm::detail::quantize_activations(x.data(), tokens, cols, cols, qx, int(state.range(2)));
    benchmark::DoNotOptimize(qx.q.data());
  }
  state.counters["Gvalues/s"] = benchmark::Counter(
      double(state.iterations()) * double(tokens * cols) / 1e9, benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t tokens : {1, 512}) {
    for (int64_t threads : {1, 2}) {
      for (auto shape :
           {std::pair<int64_t, int64_t>{2048, 2048}, {5632, 2048}, {2048, 5632}, {32000, 2048}}) {
        b->Args({shape.first, shape.second, threads, tokens});
      }
    }
  }
  b->ArgNames({"rows", "cols", "threads", "tokens"})->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK_CAPTURE(BM_matmul_q, Q8_0, sllm::TensorType::Q8_0)->Apply(shapes);
BENCHMARK_CAPTURE(BM_matmul_q, Q4_0, sllm::TensorType::Q4_0)->Apply(shapes);
BENCHMARK(BM_quantize_activations)
    ->Args({1, 2048, 1})
    ->Args({512, 2048, 1})
    ->Args({512, 2048, 2})
    ->ArgNames({"tokens", "cols", "threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
