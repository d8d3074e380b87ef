// Quantized matmul speed at the shapes of a 1.1B Llama (TinyLlama): GB/s of weights read for
// decode (1 token), GOP/s (2 * rows * cols * tokens per second) for prefill, and tokens per second
// of all the matrix products of a forward pass (BM_tinyllama_matmuls).
//   bench_matmul_q --benchmark_filter=Q4_K
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <benchmark/benchmark.h>

#include <cstring>
#include <map>
#include <random>

namespace {

using sllm::TensorType;

bool is_k_quant(TensorType type) {
  return type == TensorType::Q2_K || type == TensorType::Q3_K || type == TensorType::Q4_K ||
         type == TensorType::Q5_K || type == TensorType::Q6_K;
}

// Blocks of random codes and sub-block scales with fixed f16 block scales, for the K-quants
// (sllm has no K-quant quantizer) and for whole models.
void random_blocks(TensorType type, uint64_t& state, uint8_t* data, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 8) {
    state ^= state << 13, state ^= state >> 7, state ^= state << 17;
    std::memcpy(data + i, &state, std::min<size_t>(8, bytes - i));
  }
  const sllm::TensorTypeInfo& info = *sllm::tensor_type_info(uint32_t(type));
  const uint16_t scale = sllm::f32_to_fp16(type == TensorType::Q4_K   ? 0.001f
                                           : type == TensorType::Q5_K ? 0.0005f
                                           : type == TensorType::Q6_K ? 0.0005f
                                           : type == TensorType::Q3_K ? 0.002f
                                           : type == TensorType::Q2_K ? 0.004f
                                                                      : 0.01f);
  // Where a block keeps its scales: d first for Q4_K and Q5_K (dmin after it), last for Q3_K and
  // Q6_K, d and dmin last for Q2_K.
  const bool has_min =
      type == TensorType::Q2_K || type == TensorType::Q4_K || type == TensorType::Q5_K;
  const bool last =
      type == TensorType::Q2_K || type == TensorType::Q3_K || type == TensorType::Q6_K;
  const size_t at = last ? info.block_bytes - (has_min ? 4 : 2) : 0;
  for (size_t i = 0; i < bytes; i += info.block_bytes) {
    std::memcpy(data + i + at, &scale, 2);
    if (has_min) std::memcpy(data + i + at + 2, &scale, 2);
  }
}

struct Weights {
  sllm::TensorType type;
  size_t rows, cols;
  std::vector<uint8_t> data;
};

// Random weights quantized with the reference quantizer (K-quants: random blocks), made once per
// shape and type.
const Weights& weights(sllm::TensorType type, size_t rows, size_t cols) {
  static std::vector<std::unique_ptr<Weights>> cache;
  for (const auto& w : cache) {
    if (w->type == type && w->rows == rows && w->cols == cols) return *w;
  }
  const size_t row_bytes = sllm::tensor_row_bytes(type, cols);
  auto w = std::make_unique<Weights>(Weights{type, rows, cols, {}});
  w->data.resize(rows * row_bytes);
  if (is_k_quant(type)) {
    uint64_t state = 88172645463325252ull;
    random_blocks(type, state, w->data.data(), w->data.size());
    cache.push_back(std::move(w));
    return *cache.back();
  }
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
  sllm::detail::quantize_activations(x.data(), tokens, cols, cols, qx, threads,
                                     sllm::detail::activation_format(type));
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
// output), separate buffers as in a model file, filled with random codes and a fixed scale. A
// file type names the type of each matrix: Q8_0 and Q4_0 all of that type, Q4_K_M as
// llama-quantize makes it (Q6_K for the output, and for attn_v and ffn_down in layers 0, 1, 4, 7,
// 10, 13, 16, 19, 20 and 21; Q4_K for the rest).
struct ModelMatrices {
  struct Matrix {
    TensorType type;
    size_t rows, cols;
    std::vector<uint8_t> data;
  };
  std::vector<Matrix> layers;  // 7 per layer
  Matrix output;
};
const ModelMatrices& tinyllama(const std::string& file_type) {
  static std::map<std::string, ModelMatrices> cache;
  auto it = cache.find(file_type);
  if (it != cache.end()) return it->second;
  uint64_t state = 88172645463325252ull;
  auto make = [&](TensorType type, size_t rows, size_t cols) {
    ModelMatrices::Matrix m{type, rows, cols,
                            std::vector<uint8_t>(rows * sllm::tensor_row_bytes(type, cols))};
    random_blocks(type, state, m.data.data(), m.data.size());
    return m;
  };
  const bool k_mix = file_type == "Q4_K_M";
  const TensorType base = k_mix                 ? TensorType::Q4_K
                          : file_type == "Q8_0" ? TensorType::Q8_0
                                                : TensorType::Q4_0;
  ModelMatrices& model = cache[file_type];
  const size_t dim = 2048, kv = 256, ffn = 5632;
  for (int layer = 0; layer < 22; ++layer) {
    const bool more_bits = layer < 2 || layer >= 20 || (layer - 2) % 3 == 2;
    const TensorType wide = k_mix && more_bits ? TensorType::Q6_K : base;  // attn_v, ffn_down
    model.layers.push_back(make(base, dim, dim));
    model.layers.push_back(make(base, kv, dim));
    model.layers.push_back(make(wide, kv, dim));
    model.layers.push_back(make(base, dim, dim));
    model.layers.push_back(make(base, ffn, dim));
    model.layers.push_back(make(base, ffn, dim));
    model.layers.push_back(make(wide, dim, ffn));
  }
  model.output = make(k_mix ? TensorType::Q6_K : base, 32000, dim);
  return model;
}

// Args: threads, tokens. Per layer the activations are quantized as a forward pass does (once
// for q/k/v, once for o, once for gate/up, once for down, and again where the weight type needs
// the other activation format); the output row is computed for the last token only, as for a
// prompt.
void BM_tinyllama_matmuls(benchmark::State& state, const std::string& file_type) {
  const int threads = int(state.range(0));
  const size_t tokens = size_t(state.range(1));
  const ModelMatrices& model = tinyllama(file_type);
  std::vector<float> x(tokens * 5632, 0.5f), y(tokens * 32000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 7919 % 255) - 127) / 64.0f;
  sllm::detail::QuantizedActivations qx;
  bool quantized = false;
  auto multiply = [&](const ModelMatrices::Matrix& m, size_t n) {
    const auto format = sllm::detail::activation_format(m.type);
    if (!quantized || qx.format != format || qx.n != n) {
      sllm::detail::quantize_activations(x.data(), n, m.cols, m.cols, qx, threads, format);
      quantized = true;
    }
    sllm::detail::matmul_q({m.type, m.data.data(), m.rows, m.cols, m.data.size() / m.rows}, qx,
                           y.data(), m.rows, threads);
  };
  size_t weight_bytes = model.output.data.size();
  for (const auto& m : model.layers) weight_bytes += m.data.size();
  for (auto _ : state) {
    for (size_t i = 0; i < model.layers.size(); i += 7) {
      for (size_t j = 0; j < 7; ++j) {
        quantized &=
            !(j == 0 || j == 3 || j == 4 || j == 6);  // a new input: q/k/v, o, gate/up, down
        multiply(model.layers[i + j], tokens);
      }
    }
    quantized = false;
    multiply(model.output, 1);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(state.iterations()) * double(tokens), benchmark::Counter::kIsRate);
  state.counters["GB/s"] = benchmark::Counter(
      double(state.iterations()) * double(weight_bytes) / 1e9, benchmark::Counter::kIsRate);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t tokens : {1, 4, 512}) {
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
BENCHMARK_CAPTURE(BM_matmul_q, Q5_0, sllm::TensorType::Q5_0)->Apply(shapes);
BENCHMARK_CAPTURE(BM_matmul_q, Q2_K, sllm::TensorType::Q2_K)->Apply(shapes);
BENCHMARK_CAPTURE(BM_matmul_q, Q3_K, sllm::TensorType::Q3_K)->Apply(shapes);
BENCHMARK_CAPTURE(BM_matmul_q, Q4_K, sllm::TensorType::Q4_K)->Apply(shapes);
BENCHMARK_CAPTURE(BM_matmul_q, Q5_K, sllm::TensorType::Q5_K)->Apply(shapes);
BENCHMARK_CAPTURE(BM_matmul_q, Q6_K, sllm::TensorType::Q6_K)->Apply(shapes);
BENCHMARK_CAPTURE(BM_tinyllama_matmuls, Q8_0, std::string("Q8_0"))
    ->ArgsProduct({{1, 2}, {1, 4, 512}})
    ->ArgNames({"threads", "tokens"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_tinyllama_matmuls, Q4_0, std::string("Q4_0"))
    ->ArgsProduct({{1, 2}, {1, 4, 8, 512}})
    ->ArgNames({"threads", "tokens"})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_tinyllama_matmuls, Q4_K_M, std::string("Q4_K_M"))
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
