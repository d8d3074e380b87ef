// K-quant formats (Q4_K, Q6_K): dequantization against llama.cpp's output, the Q8_K-style
// activation quantization and the int8 kernels against the scalar references on every target.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "test_support.h"

using sllm::BlockQ8_K;
using sllm::TensorType;
using sllm::detail::ActivationFormat;
using sllm::detail::QuantizedActivations;

namespace {

std::vector<float> random_values(std::mt19937& rng, size_t n, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

}  // namespace

TEST_CASE("Q4_K and Q6_K dequantization equals llama.cpp's bit for bit") {
  // Blocks of random bytes (every scale and code pattern) and blocks that ggml's reference
  // quantizer made from normal values, with ggml's dequantization of them (tests/data/README.md).
  const sllm::Gguf g = sllm::Gguf::open(sllm_test::test_data("kquants/blocks.gguf"));
  for (const char* name : {"q4_K", "q6_K"}) {
    CAPTURE(name);
    const sllm::TensorInfo* blocks = g.find_tensor(name);
    const sllm::TensorInfo* want = g.find_tensor(std::string(name) + ".f32");
    REQUIRE(blocks != nullptr);
    REQUIRE(want != nullptr);
    REQUIRE(blocks->n_elements() == want->n_elements());
    const size_t n = blocks->n_elements();
    std::vector<float> got(n);
    sllm::dequantize_row(blocks->type, blocks->data, got.data(), n);
    size_t differ = 0;
    for (size_t i = 0; i < n; ++i) {
      float w;
      std::memcpy(&w, want->data + 4 * i, 4);
      if (std::memcmp(&w, &got[i], 4) != 0 && differ++ < 3) CHECK(got[i] == w);
    }
    CHECK(differ == 0);
  }
}

TEST_CASE("Q8_K activation quantization of a hand-computed block") {
  // amax = 127 makes d = 1 and 1/d = 1: each code is the value rounded, halves away from zero.
  std::vector<float> x(256, 0.0f);
  const float head[] = {127, -127, 0.5f, -0.5f, 1.5f, -2.5f, 3.49f, -3.51f};
  std::copy(head, head + 8, x.begin());
  for (size_t i = 16; i < 32; ++i) x[i] = -100.0f;
  x[255] = 2.5f;
  BlockQ8_K b;
  sllm::ref::quantize_row_q8_k(x.data(), &b, 256);
  CHECK(b.d == 1.0f);
  const int want[] = {127, -127, 1, -1, 2, -3, 3, -4};
  for (int i = 0; i < 8; ++i) CHECK(int(b.qs[i]) == want[i]);
  CHECK(b.qs[255] == 3);
  CHECK(b.bsums[0] == 127 - 127 + 1 - 1 + 2 - 3 + 3 - 4);
  CHECK(b.bsums[1] == -1600);
  CHECK(b.bsums[15] == 3);
  for (int k = 2; k < 15; ++k) CHECK(b.bsums[k] == 0);
  // The scale stays in f32 (Q8_0 rounds it to f16), and a zero block gives zeros.
  x[0] = 2.0f;
  std::fill(x.begin() + 1, x.end(), 0.0f);
  x[1] = -1.0f;
  sllm::ref::quantize_row_q8_k(x.data(), &b, 256);
  CHECK(b.d == 2.0f / 127.0f);
  CHECK(b.qs[0] == 127);
  CHECK(b.qs[1] == -64);  // -63.5 rounds away from zero
  std::fill(x.begin(), x.end(), 0.0f);
  sllm::ref::quantize_row_q8_k(x.data(), &b, 256);
  CHECK(b.d == 0.0f);
  CHECK(b.bsums[0] == 0);
  CHECK_THROWS_AS(sllm::ref::quantize_row_q8_k(x.data(), &b, 128), sllm::Error);
}

TEST_CASE("Q8_K activation quantization matches the reference quantizer on every target") {
  std::mt19937 rng(22);
  sllm_test::for_each_simd_target([&] {
    for (size_t cols : {256, 512, 2048 + 256}) {
      for (size_t n : {1, 2, 5, 9}) {
        CAPTURE(cols);
        CAPTURE(n);
        const size_t x_stride = cols + 7;
        auto x = random_values(rng, n * x_stride, 3.0f);
        // A block whose step is exactly 1, with halves to round away from zero, and a zero block.
        for (size_t i = 0; i < 256; ++i) x[i] = i == 0 ? 127.0f : float(int(i % 64) - 32) + 0.5f;
        if (cols >= 512) std::fill(x.begin() + 256, x.begin() + 512, 0.0f);
        QuantizedActivations q;
        sllm::detail::quantize_activations(x.data(), n, cols, x_stride, q, 2,
                                           ActivationFormat::kQ8_K);
        REQUIRE(q.n == n);
        REQUIRE(q.cols == cols);
        REQUIRE(q.block() == 256);
        std::vector<BlockQ8_K> want(cols / 256);
        for (size_t t = 0; t < n; ++t) {
          sllm::ref::quantize_row_q8_k(x.data() + t * x_stride, want.data(), cols);
          bool codes_equal = true, scales_equal = true, sums_equal = true;
          for (size_t b = 0; b < cols / 256; ++b) {
            for (size_t i = 0; i < 256; ++i)
              codes_equal &= q.codes(t)[256 * b + i] == want[b].qs[i];
            scales_equal &= q.scales(t)[b] == want[b].d;
            for (size_t k = 0; k < 16; ++k) sums_equal &= q.sums(t)[16 * b + k] == want[b].bsums[k];
          }
          CHECK(codes_equal);
          CHECK(scales_equal);
          CHECK(sums_equal);
          bool padding_zero = true;
          for (size_t i = cols; i < q.q_stride; ++i) padding_zero &= q.codes(t)[i] == 0;
          for (size_t b = cols / 256; b < q.scale_stride; ++b) padding_zero &= q.scales(t)[b] == 0;
          for (size_t k = cols / 16; k < q.sum_stride; ++k) padding_zero &= q.sums(t)[k] == 0;
          CHECK(padding_zero);
        }
        CHECK(q.codes(0)[1] == -31);  // -30.5 rounds to -31, not -30
      }
    }
  });
  // Rows must be whole blocks of 256.
  QuantizedActivations q;
  std::vector<float> x(512, 1.0f);
  CHECK_THROWS_AS(
      sllm::detail::quantize_activations(x.data(), 1, 128, 128, q, 1, ActivationFormat::kQ8_K),
      sllm::Error);
}
