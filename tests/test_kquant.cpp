// K-quant formats (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): dequantization against llama.cpp's output, the
// Q8_K-style activation quantization, the scalar dot products against float arithmetic, and the
// int8 kernels exact on integer data on every target (test_quant.cpp compares them with the scalar
// references on random data, with the other quantized types).
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "test_support.h"

using sllm::BlockQ2_K;
using sllm::BlockQ3_K;
using sllm::BlockQ4_K;
using sllm::BlockQ5_K;
using sllm::BlockQ6_K;
using sllm::BlockQ8_K;
using sllm::TensorType;
using sllm::detail::ActivationFormat;
using sllm::detail::MatrixView;
using sllm::detail::QuantizedActivations;
using sllm_test::random_values;

TEST_CASE("Q2_K, Q3_K, Q4_K and Q6_K dequantization equals llama.cpp's bit for bit") {
  // Blocks of random bytes (every scale and code pattern) and blocks that ggml's reference
  // quantizer made from normal values, with ggml's dequantization of them (tests/data/README.md).
  const sllm::Gguf g = sllm::Gguf::open(sllm_test::test_data("kquants/blocks.gguf"));
  for (const char* name : {"q2_K", "q3_K", "q4_K", "q6_K"}) {
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
  // amax = 127 makes d = 1 and 127/amax = 1: each code is the value rounded, halves to even (as
  // ggml's x86 code rounds activations).
  std::vector<float> x(256, 0.0f);
  const float head[] = {127, -127, 0.5f, -0.5f, 1.5f, -2.5f, 3.49f, -3.51f};
  std::copy(head, head + 8, x.begin());
  for (size_t i = 16; i < 32; ++i) x[i] = -100.0f;
  x[255] = 2.5f;
  BlockQ8_K b;
  sllm::ref::quantize_row_q8_k(x.data(), &b, 256);
  CHECK(b.d == 1.0f);
  const int want[] = {127, -127, 0, 0, 2, -2, 3, -4};
  for (int i = 0; i < 8; ++i) CHECK(int(b.qs[i]) == want[i]);
  CHECK(b.qs[255] == 2);
  CHECK(b.bsums[0] == 127 - 127 + 0 + 0 + 2 - 2 + 3 - 4);
  CHECK(b.bsums[1] == -1600);
  CHECK(b.bsums[15] == 2);
  for (int k = 2; k < 15; ++k) CHECK(b.bsums[k] == 0);
  // The scale stays in f32 (Q8_0 rounds it to f16), and a zero block gives zeros.
  x[0] = 2.0f;
  std::fill(x.begin() + 1, x.end(), 0.0f);
  x[1] = -1.0f;
  sllm::ref::quantize_row_q8_k(x.data(), &b, 256);
  CHECK(b.d == 2.0f / 127.0f);
  CHECK(b.qs[0] == 127);
  CHECK(b.qs[1] == -64);  // -63.5 rounds to the even -64
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
        // A block whose step is exactly 1, with halves to round to even, and a zero block.
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
        CHECK(q.codes(0)[1] == -30);  // -30.5 rounds to the even -30, not -31
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

TEST_CASE("K-quant reference dot products equal the dot product of the dequantized rows") {
  std::mt19937 rng(23);
  const size_t n = 256 * 9;
  for (TensorType type :
       {TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K}) {
    for (int trial = 0; trial < 4; ++trial) {
      CAPTURE(type);
      CAPTURE(trial);
      std::vector<uint8_t> w(sllm::tensor_row_bytes(type, n));
      sllm_test::random_k_blocks(rng, type, n / 256, w.data());
      const auto x = random_values(rng, n, 2.0f);
      std::vector<BlockQ8_K> xq(n / 256);
      sllm::ref::quantize_row_q8_k(x.data(), xq.data(), n);
      std::vector<float> dw(n);
      sllm::dequantize_row(type, w.data(), dw.data(), n);
      // With the quantized activations: the same sum up to f32 rounding. With the activations
      // themselves: within the activation codes' rounding, half a step of each block times the
      // weights' magnitudes (plus a little for 127 / amax and amax / 127 not being inverses).
      double want = 0, magnitude = 0, want_f32 = 0, rounding = 0;
      for (size_t i = 0; i < n; ++i) {
        const double step = xq[i / 256].d, dx = step * xq[i / 256].qs[i % 256];
        want += dw[i] * dx;
        magnitude += std::fabs(dw[i] * dx);
        want_f32 += double(dw[i]) * x[i];
        rounding += std::fabs(dw[i]) * step * 0.5 * (1 + 1e-5);
      }
      const float got = sllm_test::ref_dot_k(type, w.data(), xq.data(), n);
      CHECK(std::fabs(got - want) <= 1e-5 * magnitude);
      CHECK(std::fabs(got - want_f32) <= rounding + 1e-5 * magnitude);
    }
  }
}

// Exact case: scales of 1 (d, dmin and the activations'), small sub-block scales and small
// activation codes make every product and partial sum an integer below 2^24, which f32 holds
// exactly in any order, so the kernels must reproduce the integer dot products bit for bit.
TEST_CASE("K-quant matmul is exact on integer data on every target") {
  std::mt19937 rng(34);
  std::uniform_int_distribution<int> byte(0, 255), small(0, 3), act(-15, 15);
  const uint16_t one = sllm::f32_to_fp16(1.0f);
  for (TensorType type :
       {TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K}) {
    for (size_t cols : {256, 768, 1280}) {
      const size_t rows = 37, nb = cols / 256, row_bytes = sllm::tensor_row_bytes(type, cols);
      sllm_test::GuardedBuffer w(rows * row_bytes);
      for (size_t b = 0; b < rows * nb; ++b) {
        // Q4_K, Q5_K: 6-bit scales and mins below 4: sub-blocks 0-3 in bytes 0-7, 4-7 in the
        // nibbles of bytes 8-11 (their high bits, in the top bits of bytes 0-7, are 0).
        auto small_scales = [&](uint8_t* scales) {
          for (int j = 0; j < 4; ++j) {
            scales[j] = uint8_t(small(rng));
            scales[j + 4] = uint8_t(small(rng));
            scales[j + 8] = uint8_t(small(rng) | small(rng) << 4);
          }
        };
        if (type == TensorType::Q4_K) {
          BlockQ4_K blk;
          blk.d = blk.dmin = one;
          small_scales(blk.scales);
          for (uint8_t& q : blk.qs) q = uint8_t(byte(rng));
          std::memcpy(w.data() + b * sizeof blk, &blk, sizeof blk);
        } else if (type == TensorType::Q5_K) {
          BlockQ5_K blk;
          blk.d = blk.dmin = one;
          small_scales(blk.scales);
          for (uint8_t& q : blk.qh) q = uint8_t(byte(rng));
          for (uint8_t& q : blk.qs) q = uint8_t(byte(rng));
          std::memcpy(w.data() + b * sizeof blk, &blk, sizeof blk);
        } else if (type == TensorType::Q2_K) {
          // Scales and mins of 4 bits, codes of 2: a block's products stay below 2^18.
          BlockQ2_K blk;
          blk.d = blk.dmin = one;
          for (uint8_t& q : blk.scales) q = uint8_t(byte(rng));
          for (uint8_t& q : blk.qs) q = uint8_t(byte(rng));
          std::memcpy(w.data() + b * sizeof blk, &blk, sizeof blk);
        } else if (type == TensorType::Q3_K) {
          // Any 6-bit scale (-32..31) and code (-4..3): a block's products stay below 2^19.
          BlockQ3_K blk;
          blk.d = one;
          for (uint8_t& q : blk.hmask) q = uint8_t(byte(rng));
          for (uint8_t& q : blk.qs) q = uint8_t(byte(rng));
          for (uint8_t& sc : blk.scales) sc = uint8_t(byte(rng));
          std::memcpy(w.data() + b * sizeof blk, &blk, sizeof blk);
        } else {
          BlockQ6_K blk;
          blk.d = one;
          for (uint8_t& q : blk.ql) q = uint8_t(byte(rng));
          for (uint8_t& q : blk.qh) q = uint8_t(byte(rng));
          for (int8_t& sc : blk.scales) sc = int8_t(small(rng) * 2 - 4);  // -4..2
          std::memcpy(w.data() + b * sizeof blk, &blk, sizeof blk);
        }
      }
      // The integer weights, by the dequantizer that equals llama.cpp's.
      std::vector<float> values(rows * cols);
      for (size_t r = 0; r < rows; ++r) {
        sllm::dequantize_row(type, w.data() + r * row_bytes, values.data() + r * cols, cols);
      }
      const size_t n = 9;
      std::vector<float> x(n * cols);
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 256 == 5 ? 127 : act(rng));
      std::vector<float> want(n * rows);
      for (size_t t = 0; t < n; ++t) {
        for (size_t r = 0; r < rows; ++r) {
          int64_t sum = 0;
          for (size_t c = 0; c < cols; ++c) {
            sum += int64_t(values[r * cols + c]) * int64_t(x[t * cols + c]);
          }
          want[t * rows + r] = float(sum);
        }
      }
      sllm_test::for_each_simd_target([&] {
        for (size_t tokens : {1, 2, 3, 4, 5, 7, 9}) {
          CAPTURE(type);
          CAPTURE(cols);
          CAPTURE(tokens);
          QuantizedActivations q;
          sllm::detail::quantize_activations(x.data(), tokens, cols, cols, q, 1,
                                             ActivationFormat::kQ8_K);
          std::vector<float> y(tokens * rows, -1.0f);
          sllm::detail::matmul_q(MatrixView{type, w.data(), rows, cols, row_bytes}, q, y.data(),
                                 rows, 2);
          bool exact = true;
          for (size_t i = 0; i < tokens * rows; ++i) exact &= y[i] == want[i];
          CHECK(exact);
        }
      });
    }
  }
}
