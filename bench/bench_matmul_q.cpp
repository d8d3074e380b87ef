// Quantized matmul speed at the shapes of a 1.1B Llama (TinyLlama): GB/s of weights read for
// decode (1 token), GOP/s (2 * rows * cols * tokens per second) for prefill, and tokens per second
// of all the matrix products of a forward pass (BM_tinyllama_matmuls).
//   bench_matmul_q --benchmark_filter=Q4_0
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <benchmark/benchmark.h>

#include <cstring>
#include <map>
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

// The weight matrices of TinyLlama 1.1B (22 layers of q, k, v, o, gate, up and down, then the
// output), separate buffers as in a model file, filled with random codes and a fixed scale.
struct ModelMatrices {
  struct Matrix {
    size_t rows, cols;
    std::vector<uint8_t> data;
  };
  std::vector<Matrix> layers;  // 7 per layer
  Matrix output;
};
const ModelMatrices& tinyllama(sllm::TensorType type) {
  static std::map<sllm::TensorType, ModelMatrices> cache;
  auto it = cache.find(type);
  if (it != cache.end()) return it->second;
  const size_t block = type == sllm::TensorType::Q8_0 ? 34 : 18;
  uint64_t state = 88172645463325252ull;
  const uint16_t scale = sllm::f32_to_fp16(0.01f);
  auto make = [&](size_t rows, size_t cols) {
    ModelMatrices::Matrix m{rows, cols, std::vector<uint8_t>(rows * cols / 32 * block)};
    for (size_t i = 0; i < m.data.size(); i += 8) {
      state ^= state << 13, state ^= state >> 7, state ^= state << 17;
      std::memcpy(m.data.data() + i, &state, std::min<size_t>(8, m.data.size() - i));
    }
    for (size_t i = 0; i < m.data.size(); i += block) std::memcpy(m.data.data() + i, &scale, 2);
    return m;
  };
  ModelMatrices& model = cache[type];
  const size_t dim = 2048, kv = 256, ffn = 5632;
  for (int layer = 0; layer < 22; ++layer) {
    for (auto shape : {std::pair<size_t, size_t>{dim, dim},
                       {kv, dim},
                       {kv, dim},
                       {dim, dim},
                       {ffn, dim},
                       {ffn, dim},
                       {dim, ffn}}) {
      model.layers.push_back(make(shape.first, shape.second));
    }
  }
  model.output = make(32000, dim);
  return model;
}

// Args: threads, tokens. Per layer the activations are quantized as a forward pass does (once
// for q/k/v, once for o, once for gate/up, once for down); the output row is computed for the
// last token only, as for a prompt.
void BM_tinyllama_matmuls(benchmark::State& state, sllm::TensorType type) {
  const int threads = int(state.range(0));
  const size_t tokens = size_t(state.range(1));
  const ModelMatrices& model = tinyllama(type);
  std::vector<float> x(tokens * 5632, 0.5f), y(tokens * 32000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7919 % 255) - 127) / 64.0f;
  sllm::detail::QuantizedActivations qx;
  auto multiply = [&](const ModelMatrices::Matrix& m) {
    sllm::detail::matmul_q({type, m.data.data(), m.rows, m.cols, m.data.size() / m.rows}, qx,
                           y.data(), m.rows, threads);
  };
  size_t weight_bytes = model.output.data.size();
  for (const auto& m : model.layers) weight_bytes += m.data.size();
  for (auto _ : state) {
    for (size_t i = 0; i < model.layers.size(); i += 7) {
      for (size_t j = 0; j < 7; ++j) {
        const auto& m = model.layers[i + j];
        if (j == 0 || j == 3 || j == 4 || j == 6) {  // a new input: q/k/v, o, gate/up, down
          sllm::detail::quantize_activations(x.data(), tokens, m.cols, m.cols, qx, threads);
        }
        multiply(m);
      }
    }
    sllm::detail::quantize_activations(x.data(), 1, 2048, 2048, qx, threads);
    multiply(model.output);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations()) * double(tokens), benchmark::Counter::kIsRate);
  state.counters["GB/s"] = benchmark::Counter(
      double(state.iterations()) * double(weight_bytes) / 1e9, benchmark::Counter::kIsRate);
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
BENCHMARK_CAPTURE(BM_tinyllama_matmuls, Q8_0, sllm::TensorType::Q8_0)
    ->ArgsProduct({{1, 2}, {1, 512}})
    ->ArgNames({"threads", "tokens"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_tinyllama_matmuls, Q4_0, sllm::TensorType::Q4_0)
    ->ArgsProduct({{1, 2}, {1, 4, 512}})
    ->ArgNames({"threads", "tokens"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_quantize_activations)
    ->Args({1, 2048, 1})
    ->Args({512, 2048, 1})
    ->Args({512, 2048, 2})
    ->ArgNames({"tokens", "cols", "threads"})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
