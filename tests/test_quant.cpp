// Quantized block formats (Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the int8 matmul
// kernels, against hand-computed blocks, independent error bounds, llama.cpp's quantizers' error
// and the scalar references, on every SIMD target.
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "test_support.h"

using sllm::BlockQ4_0;
using sllm::BlockQ5_0;
using sllm::BlockQ8_0;
using sllm::TensorType;
using sllm::detail::MatrixView;
using sllm::detail::QuantizedActivations;
using sllm_test::GuardedBuffer;
using sllm_test::random_values;

namespace {

std::vector<uint8_t> bytes_of(const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  return std::vector<uint8_t>(b, b + n);
}

size_t block_bytes(TensorType type) {
  return type == TensorType::Q8_0 ? 34 : type == TensorType::Q5_0 ? 22 : 18;
}

bool is_k_quant(TensorType type) {
  return type == TensorType::Q2_K || type == TensorType::Q3_K || type == TensorType::Q4_K ||
         type == TensorType::Q5_K || type == TensorType::Q6_K;
}
size_t block_values(TensorType type) {
  return is_k_quant(type) ? sllm::kSuperBlock : 32;
}
size_t row_bytes_of(TensorType type, size_t cols) {
  return size_t(sllm::tensor_row_bytes(type, cols));
}
// Row lengths for the kernel tests: one block, a few, and many with an odd count. Q8_0 and Q4_0
// decode takes steps of 8 and 16 blocks: 31 blocks end with a step short of 7 and 15 blocks.
std::vector<size_t> test_cols(TensorType type) {
  if (is_k_quant(type)) return {256, 512, 2048 + 256};
  return {32, 64, 96, 31 * 32, 4096 + 32};
}

void quantize_for(TensorType type, const float* x, size_t n, size_t cols, size_t x_stride,
                  QuantizedActivations& q, int threads = 0) {
  sllm::detail::quantize_activations(x, n, cols, x_stride, q, threads,
                                     sllm::detail::activation_format(type));
}

// The reference result for a weight row and an activation row: ref::dot on the weight row and
// the activation row quantized by the reference quantizer of the type's activation format, and
// a bound on the float rounding of any summation order (kernels sum parts of blocks in separate
// lanes): a few ulps of the sum of the magnitudes of all the products that the integer sums are
// made of. For Q2_K, Q4_K and Q5_K these are the scaled codes and the mins apart, for Q3_K and Q6_K
// the codes before their offset of 4 and 32 is taken off.
struct Expected {
  float value;
  float tolerance;
};
Expected expected_dot(TensorType type, const uint8_t* w_row, const float* x_row, size_t cols) {
  double magnitude = 0;
  float value;
  if (is_k_quant(type)) {
    std::vector<sllm::BlockQ8_K> xq(cols / 256);
    sllm::ref::quantize_row_q8_k(x_row, xq.data(), cols);
    for (size_t b = 0; b < cols / 256; ++b) {
      for (size_t i = 0; i < 256; ++i) {
        const double x = std::fabs(double(xq[b].d) * xq[b].qs[i]);
        if (type == TensorType::Q4_K) {
          const auto& w = reinterpret_cast<const sllm::BlockQ4_K*>(w_row)[b];
          uint8_t scale, min;
          sllm::unpack_q4_k_scales(w.scales, int(i / 32), &scale, &min);
          magnitude += x * (sllm::fp16_to_f32(w.d) * scale * sllm::q4_k_code(w, i) +
                            sllm::fp16_to_f32(w.dmin) * min);
        } else if (type == TensorType::Q5_K) {
          const auto& w = reinterpret_cast<const sllm::BlockQ5_K*>(w_row)[b];
          uint8_t scale, min;
          sllm::unpack_q4_k_scales(w.scales, int(i / 32), &scale, &min);
          magnitude += x * (sllm::fp16_to_f32(w.d) * scale * sllm::q5_k_code(w, i) +
                            sllm::fp16_to_f32(w.dmin) * min);
        } else if (type == TensorType::Q2_K) {
          const auto& w = reinterpret_cast<const sllm::BlockQ2_K*>(w_row)[b];
          const uint8_t scale = w.scales[i / 16] & 15, min = w.scales[i / 16] >> 4;
          magnitude += x * (sllm::fp16_to_f32(w.d) * scale * sllm::q2_k_code(w, i) +
                            sllm::fp16_to_f32(w.dmin) * min);
        } else if (type == TensorType::Q3_K) {
          const auto& w = reinterpret_cast<const sllm::BlockQ3_K*>(w_row)[b];
          magnitude += x * std::fabs(sllm::fp16_to_f32(w.d) * sllm::q3_k_scale(w.scales, i / 16)) *
                       (sllm::q3_k_code(w, i) + 4);
        } else {
          const auto& w = reinterpret_cast<const sllm::BlockQ6_K*>(w_row)[b];
          magnitude += x * std::fabs(sllm::fp16_to_f32(w.d) * w.scales[i / 16]) *
                       (sllm::q6_k_code(w, i) + 32);
        }
      }
    }
    value = sllm_test::ref_dot_k(type, w_row, xq.data(), cols);
  } else {
    std::vector<BlockQ8_0> xq(cols / 32);
    sllm::ref::quantize_activations_q8_0(x_row, xq.data(), cols);
    std::vector<float> w(cols), x(cols);
    sllm::dequantize_row(type, w_row, w.data(), cols);
    sllm::ref::dequantize_row_q8_0(xq.data(), x.data(), cols);
    for (size_t i = 0; i < cols; ++i) magnitude += std::fabs(double(w[i]) * x[i]);
    value = type == TensorType::Q8_0
                ? sllm::ref::dot_q8_0(reinterpret_cast<const BlockQ8_0*>(w_row), xq.data(), cols)
            : type == TensorType::Q5_0
                ? sllm::ref::dot_q5_0(reinterpret_cast<const BlockQ5_0*>(w_row), xq.data(), cols)
                : sllm::ref::dot_q4_0(reinterpret_cast<const BlockQ4_0*>(w_row), xq.data(), cols);
  }
  return {value, float(magnitude * 4e-6 + 1e-30)};
}

// Values drawn with sllm::Rng (a fixed algorithm, so every platform draws the same ones):
// uniform in [-1, 1), Gaussian, Laplace (heavy tails, like trained weights), or in [1, 2) (all
// positive: the sub-block mins are 0).
enum class Distribution { kUniform, kGaussian, kLaplace, kPositive };

std::vector<float> sample_values(Distribution kind, size_t n, uint64_t seed) {
  sllm::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) {
    const float u1 = rng.uniform(), u2 = rng.uniform();
    switch (kind) {
      case Distribution::kUniform:
        x = 2 * u1 - 1;
        break;
      case Distribution::kGaussian:
        x = std::sqrt(-2 * std::log(1 - u1)) * std::cos(6.2831853f * u2);
        break;
      case Distribution::kLaplace:
        x = (u2 < 0.5f ? -1.0f : 1.0f) * -std::log(1 - u1);
        break;
      case Distribution::kPositive:
        x = 1 + u1;
        break;
    }
  }
  return v;
}

// sqrt(sum (y - x)^2 / sum x^2)
double relative_rmse(const std::vector<float>& x, const std::vector<float>& y) {
  double err = 0, sum = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    err += double(y[i] - x[i]) * (y[i] - x[i]);
    sum += double(x[i]) * x[i];
  }
  return std::sqrt(err / sum);
}

std::vector<float> round_trip(TensorType type, const std::vector<float>& x) {
  std::vector<uint8_t> q(sllm::tensor_row_bytes(type, x.size()));
  std::vector<float> back(x.size());
  sllm::quantize_row(type, x.data(), q.data(), x.size());
  sllm::dequantize_row(type, q.data(), back.data(), x.size());
  return back;
}

// Random quantized rows of the given type: Q8_0, Q4_0 and Q5_0 quantized from normal values,
// K-quant blocks of random bytes.
void fill_weights(std::mt19937& rng, TensorType type, size_t rows, size_t cols, uint8_t* out) {
  const size_t row_bytes = row_bytes_of(type, cols);
  if (is_k_quant(type)) {
    sllm_test::random_k_blocks(rng, type, rows * cols / 256, out);
    return;
  }
  for (size_t r = 0; r < rows; ++r) {
    const auto values = random_values(rng, cols, 0.05f);
    sllm::quantize_row(type, values.data(), out + r * row_bytes, cols);
  }
}

const TensorType kKernelTypes[] = {TensorType::Q8_0, TensorType::Q4_0, TensorType::Q5_0,
                                   TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K,
                                   TensorType::Q5_K, TensorType::Q6_K};

}  // namespace

TEST_CASE("Q8_0 quantization of a hand-computed block") {
  // amax = 127 makes d = 1 and 1/d = 1, so each code is the value rounded, halves away from 0.
  float x[32] = {127, -127, 0.5f, -0.5f, 1.5f, -2.5f, 3.49f, -3.51f, 0, 100.2f, -99.7f, 2.5f};
  for (int i = 12; i < 32; ++i) x[i] = float(i - 20);
  BlockQ8_0 block;
  sllm::ref::quantize_row_q8_0(x, &block, 32);
  std::vector<uint8_t> want = {0x00, 0x3c,  // f16 1.0, little endian
                               0x7f, 0x81, 0x01, 0xff, 0x02, 0xfd,
                               0x03, 0xfc, 0x00, 0x64, 0x9c, 0x03};
  for (int i = 12; i < 32; ++i) want.push_back(uint8_t(int8_t(i - 20)));
  CHECK(bytes_of(&block, sizeof block) == want);

  float back[32];
  sllm::ref::dequantize_row_q8_0(&block, back, 32);
  for (int i = 0; i < 32; ++i) CHECK(back[i] == float(int8_t(want[2 + size_t(i)])));

  // An all-zero block has scale 0 and codes 0; a block with amax 2 has d = f16(2/127).
  float zeros[32] = {};
  sllm::ref::quantize_row_q8_0(zeros, &block, 32);
  CHECK(bytes_of(&block, sizeof block) == std::vector<uint8_t>(34, 0));
  float small[32] = {2.0f, -1.0f};
  sllm::ref::quantize_row_q8_0(small, &block, 32);
  CHECK(block.d == sllm::f32_to_fp16(2.0f / 127.0f));
  CHECK(block.qs[0] == 127);
  CHECK(block.qs[1] == -64);  // -1 * 63.5 = -63.5 rounds away from zero
  CHECK(block.qs[2] == 0);
}

TEST_CASE("activation quantization (ggml's x86 code) of a hand-computed block") {
  // amax = 127 makes 127 / amax = 1: each code is the value rounded, halves to even (where
  // quantize_row_q8_0 rounds them away from zero).
  float x[32] = {127, -127, 0.5f, -0.5f, 1.5f, -2.5f, 3.49f, -3.51f, 0, 100.2f, -99.7f, 2.5f};
  for (int i = 12; i < 32; ++i) x[i] = float(i - 20);
  BlockQ8_0 block;
  sllm::ref::quantize_activations_q8_0(x, &block, 32);
  const int8_t want[12] = {127, -127, 0, 0, 2, -2, 3, -4, 0, 100, -100, 2};
  CHECK(block.d == sllm::f32_to_fp16(1.0f));
  for (int i = 0; i < 12; ++i) CHECK(block.qs[i] == want[i]);
  for (int i = 12; i < 32; ++i) CHECK(block.qs[i] == i - 20);
  // Where 1 / (amax / 127) and 127 / amax round apart: with amax = 0.149999991, x =
  // 0.00885826722 times the one is 7.50000048 (code 8), times the other 7.49999952 (code 7).
  float y[32] = {0x1.333332p-3f, 0x1.224488p-7f};
  sllm::ref::quantize_activations_q8_0(y, &block, 32);
  CHECK(block.qs[1] == 7);
  sllm::ref::quantize_row_q8_0(y, &block, 32);
  CHECK(block.qs[1] == 8);
}

TEST_CASE("Q4_0 quantization of a hand-computed block, nibble order") {
  // The value of largest magnitude is -8, so d = -8 / -8 = 1: code = min(15, trunc(x + 8.5)).
  float x[32] = {};
  x[0] = -8.0f;   // code 0
  x[1] = 7.4f;    // 15.9 -> 15
  x[2] = 0.5f;    // 9
  x[3] = -0.5f;   // 8
  x[4] = 2.3f;    // 10
  x[5] = -7.6f;   // 0.9 -> 0
  x[16] = 7.0f;   // 15
  x[17] = -3.0f;  // 5
  x[18] = 1.0f;   // 9
  BlockQ4_0 block;
  sllm::ref::quantize_row_q4_0(x, &block, 32);
  std::vector<uint8_t> want = {0x00, 0x3c,  // f16 1.0
                               0xf0, 0x5f, 0x99, 0x88, 0x8a, 0x80};
  want.resize(18, 0x88);  // zeros: code 8 in both nibbles
  CHECK(bytes_of(&block, sizeof block) == want);

  float back[32];
  sllm::ref::dequantize_row_q4_0(&block, back, 32);
  const float want_back[] = {-8, 7, 1, 0, 2, -8};
  for (int i = 0; i < 6; ++i) CHECK(back[i] == want_back[i]);
  CHECK(back[16] == 7.0f);
  CHECK(back[17] == -3.0f);
  CHECK(back[18] == 1.0f);

  // A positive extreme gives a negative scale; ties keep the first; -max clamps to code 15.
  float y[32] = {8.0f, -8.0f, 4.0f};
  sllm::ref::quantize_row_q4_0(y, &block, 32);
  CHECK(block.d == sllm::f32_to_fp16(-1.0f));
  CHECK(block.qs[0] == (0x00 | 0x80));  // 8 -> code 0; y[16] = 0 -> code 8
  CHECK(block.qs[1] == (0x0f | 0x80));  // -8 -> 16.5 -> clamped to 15
  CHECK(block.qs[2] == (0x04 | 0x80));  // 4 -> -4 + 8.5 -> 4
}

TEST_CASE("Q5_0 quantization of a hand-computed block, nibble and fifth-bit order") {
  // The value of largest magnitude is -16, so d = -16 / -16 = 1: code = min(31, trunc(x + 16.5)).
  float x[32] = {};
  x[0] = -16.0f;  // code 0
  x[1] = 15.4f;   // 31.9 -> 31 = 0x1f
  x[2] = 0.5f;    // 17 = 0x11
  x[3] = -0.5f;   // 16 = 0x10
  x[4] = -6.3f;   // 10.2 -> 10 = 0x0a
  x[9] = -15.6f;  // 0.9 -> 0
  x[16] = 15.0f;  // 31
  x[17] = -3.0f;  // 13 = 0x0d
  x[30] = -1.0f;  // 15 = 0x0f
  x[31] = 1.0f;   // 17 = 0x11
  BlockQ5_0 block;
  sllm::ref::quantize_row_q5_0(x, &block, 32);
  // Codes 16 (zeros) have the fifth bit and low nibble 0. Fifth bits: values 1, 2, 3, all zeros
  // except 0, 4, 9, 17, 30; bit i of the little-endian qh is value i's.
  uint32_t qh = 0xffffffffu;
  for (int i : {0, 4, 9, 17, 30}) qh &= ~(1u << i);
  std::vector<uint8_t> want = {0x00, 0x3c};  // f16 1.0
  for (int k = 0; k < 4; ++k) want.push_back(uint8_t(qh >> (8 * k)));
  const uint8_t qs[16] = {0xf0, 0xdf, 0x01, 0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xf0, 0x10};
  want.insert(want.end(), qs, qs + 16);
  CHECK(bytes_of(&block, sizeof block) == want);
  CHECK(sllm::q5_0_code(block, 1) == 31);
  CHECK(sllm::q5_0_code(block, 17) == 13);
  CHECK(sllm::q5_0_code(block, 30) == 15);

  float back[32];
  sllm::ref::dequantize_row_q5_0(&block, back, 32);
  const float want_back[] = {-16, 15, 1, 0, -6};
  for (int i = 0; i < 5; ++i) CHECK(back[i] == want_back[i]);
  CHECK(back[9] == -16.0f);
  CHECK(back[16] == 15.0f);
  CHECK(back[17] == -3.0f);
  CHECK(back[30] == -1.0f);
  CHECK(back[31] == 1.0f);
  CHECK(back[5] == 0.0f);

  // A positive extreme gives a negative scale; -max clamps to code 31.
  float y[32] = {16.0f, -16.0f, 8.0f};
  sllm::ref::quantize_row_q5_0(y, &block, 32);
  CHECK(block.d == sllm::f32_to_fp16(-1.0f));
  CHECK(sllm::q5_0_code(block, 0) == 0);
  CHECK(sllm::q5_0_code(block, 1) == 31);  // 32.5 -> clamped
  CHECK(sllm::q5_0_code(block, 2) == 8);   // -8 + 16.5 -> 8
  CHECK(sllm::q5_0_code(block, 3) == 16);
}

TEST_CASE("Q5_0 quantization and dequantization equal ggml's bit for bit") {
  // Rows of normal values at 16 scales (with a zero block, all-positive rows, rounding ties and
  // -max), the Q5_0 blocks ggml's quantizer made of them as llama-quantize does, and ggml's
  // dequantization of those (tests/data/README.md).
  const sllm::Gguf g = sllm::Gguf::open(sllm_test::test_data("q5_0/blocks.gguf"));
  const sllm::TensorInfo& x = g.tensor("x");
  const sllm::TensorInfo& q = g.tensor("q5_0");
  const sllm::TensorInfo& want = g.tensor("q5_0.f32");
  REQUIRE(x.type == TensorType::F32);
  REQUIRE(q.type == TensorType::Q5_0);
  REQUIRE(want.type == TensorType::F32);
  const size_t n = x.n_elements();
  REQUIRE(q.n_elements() == n);
  REQUIRE(want.n_elements() == n);
  std::vector<float> values(n), got(n), back(n);
  std::memcpy(values.data(), x.data, 4 * n);
  std::vector<uint8_t> blocks(q.n_bytes);
  sllm::quantize_row(TensorType::Q5_0, values.data(), blocks.data(), n);
  CHECK(bytes_of(blocks.data(), blocks.size()) == bytes_of(q.data, q.n_bytes));
  sllm::dequantize_row(TensorType::Q5_0, q.data, got.data(), n);
  std::memcpy(back.data(), want.data, 4 * n);
  size_t differ = 0;
  for (size_t i = 0; i < n; ++i) differ += std::memcmp(&got[i], &back[i], 4) != 0;
  CHECK(differ == 0);
}

TEST_CASE("quantize/dequantize round trips stay within the format's error bound") {
  std::mt19937 rng(11);
  for (float scale : {1e-4f, 0.02f, 1.0f, 300.0f}) {
    const size_t n = 32 * 64;
    auto x = random_values(rng, n, scale);
    x[5] = 0.0f;
    std::vector<BlockQ8_0> q8(n / 32);
    std::vector<BlockQ4_0> q4(n / 32);
    sllm::ref::quantize_row_q8_0(x.data(), q8.data(), n);
    sllm::ref::quantize_row_q4_0(x.data(), q4.data(), n);
    std::vector<float> back8(n), back4(n);
    sllm::ref::dequantize_row_q8_0(q8.data(), back8.data(), n);
    sllm::ref::dequantize_row_q4_0(q4.data(), back4.data(), n);
    for (size_t b = 0; b < n / 32; ++b) {
      float amax = 0, max = 0;
      for (size_t i = 0; i < 32; ++i) {
        if (std::fabs(x[32 * b + i]) > amax) {
          amax = std::fabs(x[32 * b + i]);
          max = x[32 * b + i];
        }
      }
      // The exact step, and what storing it as f16 adds at the largest code.
      const double d8 = amax / 127.0, d8_stored = sllm::fp16_to_f32(q8[b].d);
      const double d4 = max / -8.0, d4_stored = sllm::fp16_to_f32(q4[b].d);
      const double bound8 = 0.5 * d8 + 127 * std::fabs(d8_stored - d8) + 1e-6 * amax;
      const double slack4 = 8 * std::fabs(d4_stored - d4) + 1e-5 * amax;
      // Q4_0's grid runs from -8 d to 7 d, so values near -max are clamped a whole step.
      const double bound4 = std::fabs(d4) + slack4;
      for (size_t i = 0; i < 32; ++i) {
        const size_t k = 32 * b + i;
        CAPTURE(k);
        CHECK(std::fabs(back8[k] - x[k]) <= bound8);
        CHECK(std::fabs(back4[k] - x[k]) <= bound4);
        if (std::fabs(x[k]) <= 6.5 * std::fabs(d4)) {  // inside the grid: half a step
          CHECK(std::fabs(back4[k] - x[k]) <= 0.5 * std::fabs(d4) + slack4);
        }
      }
    }
  }
}

TEST_CASE("quantize_row and dequantize_row by tensor type") {
  std::mt19937 rng(5);
  const auto x = random_values(rng, 64, 1.0f);
  std::vector<uint8_t> buf(64 * 4);
  std::vector<float> back(64);
  sllm::quantize_row(TensorType::F32, x.data(), buf.data(), 64);
  sllm::dequantize_row(TensorType::F32, buf.data(), back.data(), 64);
  CHECK(back == x);
  sllm::quantize_row(TensorType::F16, x.data(), buf.data(), 64);
  sllm::dequantize_row(TensorType::F16, buf.data(), back.data(), 64);
  for (size_t i = 0; i < 64; ++i) CHECK(back[i] == sllm::fp16_to_f32(sllm::f32_to_fp16(x[i])));
  sllm::quantize_row(TensorType::BF16, x.data(), buf.data(), 64);
  sllm::dequantize_row(TensorType::BF16, buf.data(), back.data(), 64);
  for (size_t i = 0; i < 64; ++i) CHECK(back[i] == sllm::bf16_to_f32(sllm::f32_to_bf16(x[i])));

  std::vector<BlockQ8_0> q8(2);
  sllm::quantize_row(TensorType::Q8_0, x.data(), buf.data(), 64);
  sllm::ref::quantize_row_q8_0(x.data(), q8.data(), 64);
  CHECK(bytes_of(buf.data(), 68) == bytes_of(q8.data(), 68));
  std::vector<float> ref_back(64);
  sllm::dequantize_row(TensorType::Q8_0, buf.data(), back.data(), 64);
  sllm::ref::dequantize_row_q8_0(q8.data(), ref_back.data(), 64);
  CHECK(back == ref_back);

  CHECK_THROWS_AS(sllm::quantize_row(TensorType::Q4_0, x.data(), buf.data(), 48), sllm::Error);
  CHECK_THROWS_AS(sllm::dequantize_row(TensorType::Q8_0, buf.data(), back.data(), 33), sllm::Error);
  CHECK_THROWS_AS(sllm::quantize_row(TensorType::Q4_K, x.data(), buf.data(), 64), sllm::Error);
  CHECK_THROWS_AS(sllm::dequantize_row(TensorType::Q5_1, buf.data(), back.data(), 64), sllm::Error);
}

TEST_CASE("K-quant quantizers: smaller error than llama.cpp's reference quantizers") {
  // Relative RMSE of llama.cpp's quantize_row_q{2,3,4,5,6}_K_ref (commit c392e50, no importance
  // matrix) on the same values (256 * 512 of each distribution, seed 7 + index), dequantized by
  // ggml: the quantizers here must do at least as well.
  struct Case {
    Distribution kind;
    double q2_k, q3_k, q4_k, q5_k, q6_k;
  };
  const Case cases[] = {
      {Distribution::kUniform, 0.23312, 0.12510, 0.05469, 0.02759, 0.01326},
      {Distribution::kGaussian, 0.29575, 0.15071, 0.07140, 0.03613, 0.01773},
      {Distribution::kLaplace, 0.34394, 0.17682, 0.08455, 0.04279, 0.02167},
      {Distribution::kPositive, 0.09594, 0.08562, 0.02211, 0.01107, 0.00986},
  };
  for (const Case& c : cases) {
    const auto x = sample_values(c.kind, 256 * 512, 7 + uint64_t(c.kind));
    CAPTURE(int(c.kind));
    CHECK(relative_rmse(x, round_trip(TensorType::Q2_K, x)) <= c.q2_k);
    CHECK(relative_rmse(x, round_trip(TensorType::Q3_K, x)) <= c.q3_k);
    CHECK(relative_rmse(x, round_trip(TensorType::Q4_K, x)) <= c.q4_k);
    CHECK(relative_rmse(x, round_trip(TensorType::Q5_K, x)) <= c.q5_k);
    CHECK(relative_rmse(x, round_trip(TensorType::Q6_K, x)) <= c.q6_k);
  }
  // Scale does not matter (up to f16's range): the same error at 1e-3 and 300 times the values.
  auto x = sample_values(Distribution::kGaussian, 256 * 64, 3);
  const double base = relative_rmse(x, round_trip(TensorType::Q4_K, x));
  for (float scale : {1e-3f, 300.0f}) {
    std::vector<float> y(x);
    for (float& v : y) v *= scale;
    CHECK(relative_rmse(y, round_trip(TensorType::Q4_K, y)) == doctest::Approx(base).epsilon(0.02));
  }
}

TEST_CASE("Q4_K scale and min codes go where unpack_q4_k_scales reads them") {
  // Sub-blocks 0-3: the low 6 bits of bytes j (scale) and j + 4 (min); sub-blocks 4-7: low 4
  // bits in the nibbles of byte j + 4, top 2 bits in bits 6-7 of bytes j - 4 (scale) and j (min).
  const uint8_t ls[8] = {63, 1, 2, 3, 40, 50, 60, 33};
  const uint8_t lm[8] = {5, 63, 7, 8, 20, 37, 11, 58};
  uint8_t scales[12];
  sllm::pack_q4_k_scales(ls, lm, scales);
  // 40 = 10|1000b, 50 = 11|0010b, 60 = 11|1100b, 33 = 10|0001b; 20 = 01|0100b, 37 = 10|0101b,
  // 11 = 00|1011b, 58 = 11|1010b.
  const uint8_t want[12] = {63 | 2 << 6, 1 | 3 << 6,  2 | 3 << 6,   3 | 2 << 6,
                            5 | 1 << 6,  63 | 2 << 6, 7 | 0 << 6,   8 | 3 << 6,
                            8 | 4 << 4,  2 | 5 << 4,  12 | 11 << 4, 1 | 10 << 4};
  CHECK(std::vector<uint8_t>(scales, scales + 12) == std::vector<uint8_t>(want, want + 12));
  // Every code in every position comes back.
  for (int code = 0; code < 64; ++code) {
    for (int j = 0; j < 8; ++j) {
      uint8_t s[8] = {}, m[8] = {};
      s[j] = uint8_t(code);
      m[7 - j] = uint8_t(63 - code);
      sllm::pack_q4_k_scales(s, m, scales);
      for (int k = 0; k < 8; ++k) {
        uint8_t scale, min;
        sllm::unpack_q4_k_scales(scales, k, &scale, &min);
        CHECK(scale == s[k]);
        CHECK(min == m[k]);
      }
    }
  }
}

// A super-block on the grid of the Q4_K/Q5_K formats: value l of sub-block j is
// d * ls[j] * q - dmin * lm[j] with q = (7 l + j) mod (top + 1), so every code occurs.
std::vector<float> scale_min_grid(float d, float dmin, const uint8_t* ls, const uint8_t* lm,
                                  int top) {
  std::vector<float> x(256);
  for (int j = 0; j < 8; ++j) {
    for (int l = 0; l < 32; ++l) {
      x[32 * j + l] = d * ls[j] * float((7 * l + j) % (top + 1)) - dmin * lm[j];
    }
  }
  return x;
}

TEST_CASE(
    "Q4_K and Q5_K: values on the format's grid come back exactly, bits where the format puts "
    "them") {
  const uint8_t ls[8] = {63, 1, 2, 3, 40, 50, 60, 33};
  const uint8_t lm[8] = {5, 63, 7, 8, 20, 37, 11, 58};
  const float d = 1.0f / 64, dmin = 1.0f / 128;  // f16 0x2400 and 0x2000
  uint8_t want_scales[12];
  sllm::pack_q4_k_scales(ls, lm, want_scales);

  const auto x4 = scale_min_grid(d, dmin, ls, lm, 15);
  sllm::BlockQ4_K b4;
  sllm::ref::quantize_row_q4_k(x4.data(), &b4, 256);
  CHECK(b4.d == 0x2400);
  CHECK(b4.dmin == 0x2000);
  CHECK(std::vector<uint8_t>(b4.scales, b4.scales + 12) ==
        std::vector<uint8_t>(want_scales, want_scales + 12));
  // Byte 32 g + l: value l of sub-block 2g (low nibble) and of sub-block 2g + 1 (high nibble).
  CHECK(b4.qs[0] == 0x10);    // q(0, 0) = 0, q(1, 0) = 1
  CHECK(b4.qs[33] == 0xa9);   // q(2, 1) = 9, q(3, 1) = 10
  CHECK(b4.qs[127] == 0x0f);  // q(6, 31) = 223 mod 16 = 15, q(7, 31) = 0
  float back[256];
  sllm::ref::dequantize_row_q4_k(&b4, back, 256);
  CHECK(std::vector<float>(back, back + 256) == x4);

  const auto x5 = scale_min_grid(d, dmin, ls, lm, 31);
  sllm::BlockQ5_K b5;
  sllm::ref::quantize_row_q5_k(x5.data(), &b5, 256);
  CHECK(b5.d == 0x2400);
  CHECK(b5.dmin == 0x2000);
  CHECK(std::vector<uint8_t>(b5.scales, b5.scales + 12) ==
        std::vector<uint8_t>(want_scales, want_scales + 12));
  // The low 4 bits as in Q4_K; bit j of qh[l]: the top bit of value l of sub-block j.
  CHECK(b5.qs[2] == 0xfe);  // q(0, 2) = 14, q(1, 2) = 15
  CHECK(b5.qh[0] == 0x00);  // q(j, 0) = j
  CHECK(b5.qh[2] == 0xfc);  // q(j, 2) = 14 + j: 16 and more from j = 2
  CHECK(b5.qh[3] == 0xff);  // q(j, 3) = 21 + j
  sllm::ref::dequantize_row_q5_k(&b5, back, 256);
  CHECK(std::vector<float>(back, back + 256) == x5);
}

TEST_CASE("Q5_K dequantization of a hand-made block") {
  sllm::BlockQ5_K b{};
  b.d = sllm::f32_to_fp16(0.5f);
  b.dmin = sllm::f32_to_fp16(0.25f);
  const uint8_t ls[8] = {1, 2, 3, 4, 5, 6, 7, 8}, lm[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  sllm::pack_q4_k_scales(ls, lm, b.scales);
  b.qs[0] = 0x3a;       // sub-block 0 value 0: 10, sub-block 1 value 0: 3
  b.qh[0] = 0x02;       // sub-block 1 value 0: + 16
  b.qs[32 + 5] = 0xf1;  // sub-block 2 value 5: 1, sub-block 3 value 5: 15
  b.qh[5] = 0x04;       // sub-block 2 value 5: + 16
  float y[256];
  sllm::ref::dequantize_row_q5_k(&b, y, 256);
  CHECK(y[0] == 0.5f * 1 * 10 - 0);
  CHECK(y[32] == 0.5f * 2 * 19 - 0.25f * 1);
  CHECK(y[64 + 5] == 0.5f * 3 * 17 - 0.25f * 2);
  CHECK(y[96 + 5] == 0.5f * 4 * 15 - 0.25f * 3);
  CHECK(y[1] == 0.0f);
  CHECK(y[255] == -0.25f * 7);
}

TEST_CASE("Q6_K: values on the format's grid come back exactly, bits where the format puts them") {
  // Sub-block j (16 values): scale code -128 + 5 j of d = 1/128; value 0 has code -32 (the
  // largest magnitude, as the search puts it), value i > 0 code (5 i + 3 j) mod 63 - 31.
  const float d = 1.0f / 128;
  auto code = [](int j, int i) { return i == 0 ? -32 : (5 * i + 3 * j) % 63 - 31; };
  std::vector<float> x(256);
  for (int j = 0; j < 16; ++j) {
    for (int i = 0; i < 16; ++i) x[16 * j + i] = d * float(-128 + 5 * j) * float(code(j, i));
  }
  sllm::BlockQ6_K b;
  sllm::ref::quantize_row_q6_k(x.data(), &b, 256);
  CHECK(b.d == 0x2000);
  for (int j = 0; j < 16; ++j) CHECK(b.scales[j] == -128 + 5 * j);
  // Value l of quarter k of half h (u = code + 32): ql[64 h + l + 32 (k % 2)] holds its low 4
  // bits, in the high nibble for k >= 2; qh[32 h + l] bits 2k, 2k + 1 its top 2 bits.
  // Values 1, 33, 65, 97: sub-blocks 0, 2, 4, 6 at i = 1: codes -26, -20, -14, -8, u = 6, 12,
  // 18, 24.
  CHECK(b.ql[1] == (6 | (18 & 15) << 4));
  CHECK(b.ql[33] == (12 | (24 & 15) << 4));
  CHECK(b.qh[1] == (0 | 0 << 2 | 1 << 4 | 1 << 6));
  // Values 128 + 2 and 128 + 98: sub-blocks 8 and 14 at i = 2: codes 3 and 21, u = 35 and 53.
  CHECK((b.ql[64 + 2] & 15) == (35 & 15));
  CHECK((b.ql[64 + 32 + 2] >> 4) == (53 & 15));
  CHECK((b.qh[32 + 2] & 3) == 35 >> 4);
  CHECK((b.qh[32 + 2] >> 6) == 53 >> 4);
  float back[256];
  sllm::ref::dequantize_row_q6_k(&b, back, 256);
  CHECK(std::vector<float>(back, back + 256) == x);
}

TEST_CASE("Q3_K: values on the format's grid come back exactly, bits where the format puts them") {
  // Sub-block j (16 values): scale code -32 + 3 j of d = 1/32; value 0 has code -4 (the largest
  // magnitude), value i > 0 code (3 i + j) mod 8 - 4.
  const float d = 1.0f / 32;
  auto code = [](int j, int i) { return i == 0 ? -4 : (3 * i + j) % 8 - 4; };
  std::vector<float> x(256);
  for (int j = 0; j < 16; ++j) {
    for (int i = 0; i < 16; ++i) x[16 * j + i] = d * float(-32 + 3 * j) * float(code(j, i));
  }
  sllm::BlockQ3_K b;
  sllm::ref::quantize_row_q3_k(x.data(), &b, 256);
  CHECK(b.d == 0x2800);
  for (int j = 0; j < 16; ++j) CHECK(sllm::q3_k_scale(b.scales, size_t(j)) == -32 + 3 * j);
  // Scale codes + 32 (u = 3 j): low 4 bits in nibble j / 8 of scales[j % 8], top 2 bits in bit
  // pair j / 4 of scales[8 + j % 4]. Sub-blocks 1 and 9: u = 3 and 27 = 01|1011b; sub-blocks 1,
  // 5, 9 and 13: top bits 0, 0, 1 and 2 (39 = 10|0111b).
  CHECK(b.scales[1] == (3 | 11 << 4));
  CHECK(b.scales[9] == (0 | 0 << 2 | 1 << 4 | 2 << 6));
  // Value l of quarter k of half h (u = code + 4): its low 2 bits are bits 2k..2k+1 of
  // qs[32 h + l], its top bit bit 4 h + k of hmask[l]. Values 1, 33, 65, 97 (sub-blocks 0, 2, 4,
  // 6 at i = 1): codes -1, 1, 3, -3, u = 3, 5, 7, 1; values 129, 161, 193, 225 (sub-blocks 8,
  // 10, 12, 14): u = 3, 5, 7, 1.
  CHECK(b.qs[1] == (3 | 1 << 2 | 3 << 4 | 1 << 6));
  CHECK(b.qs[33] == (3 | 1 << 2 | 3 << 4 | 1 << 6));
  CHECK(b.hmask[1] == (0 | 1 << 1 | 1 << 2 | 0 << 3 | 0 << 4 | 1 << 5 | 1 << 6 | 0 << 7));
  float back[256];
  sllm::ref::dequantize_row_q3_k(&b, back, 256);
  CHECK(std::vector<float>(back, back + 256) == x);
}

TEST_CASE("Q2_K: values on the format's grid come back exactly, bits where the format puts them") {
  // Sub-block j (16 values): scale code 1 + 7 j mod 15 of d = 1/64, min code 5 j mod 16 of
  // dmin = 1/128; value 0 has code 0, value 1 code 3 (so the grid spans the sub-block), value
  // i > 1 code (i + j) mod 4.
  const float d = 1.0f / 64, dmin = 1.0f / 128;
  auto scale = [](int j) { return 1 + 7 * j % 15; };
  auto min = [](int j) { return 5 * j % 16; };
  auto code = [](int j, int i) { return i == 0 ? 0 : i == 1 ? 3 : (i + j) % 4; };
  std::vector<float> x(256);
  for (int j = 0; j < 16; ++j) {
    for (int i = 0; i < 16; ++i) {
      x[16 * j + i] = d * float(scale(j)) * float(code(j, i)) - dmin * float(min(j));
    }
  }
  sllm::BlockQ2_K b;
  sllm::ref::quantize_row_q2_k(x.data(), &b, 256);
  CHECK(b.d == 0x2400);
  CHECK(b.dmin == 0x2000);
  // The scale code in the low nibble of scales[j], the min code in the high one.
  for (int j = 0; j < 16; ++j) CHECK(b.scales[j] == (scale(j) | min(j) << 4));
  // Value l of quarter k of half h: bits 2k..2k+1 of qs[32 h + l]. Values 2, 34, 66, 98
  // (sub-blocks 0, 2, 4, 6 at i = 2): codes 2, 0, 2, 0; values 146, 178, 210, 242 (sub-blocks 9,
  // 11, 13, 15 at i = 2, l = 18): codes 3, 1, 3, 1.
  CHECK(b.qs[2] == (2 | 0 << 2 | 2 << 4 | 0 << 6));
  CHECK(b.qs[32 + 18] == (3 | 1 << 2 | 3 << 4 | 1 << 6));
  float back[256];
  sllm::dequantize_row(TensorType::Q2_K, &b, back, 256);
  CHECK(std::vector<float>(back, back + 256) == x);
}

TEST_CASE("K-quant quantizers on zeros and on values that are not finite") {
  for (TensorType type :
       {TensorType::Q2_K, TensorType::Q3_K, TensorType::Q4_K, TensorType::Q5_K, TensorType::Q6_K}) {
    CAPTURE(sllm::tensor_type_name(type));
    const std::vector<float> zeros(512, 0.0f);
    CHECK(round_trip(type, zeros) == zeros);
    // A NaN or infinity spoils its own super-block only, and never crashes.
    auto x = sample_values(Distribution::kGaussian, 512, 1);
    const std::vector<float> second(x.begin() + 256, x.end());
    const auto want = round_trip(type, second);
    for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
      x[17] = bad;
      const auto back = round_trip(type, x);
      CHECK(std::vector<float>(back.begin() + 256, back.end()) == want);
    }
  }
  std::vector<float> x(300, 1.0f);
  std::vector<uint8_t> buf(1024);
  CHECK_THROWS_AS(sllm::quantize_row(TensorType::Q4_K, x.data(), buf.data(), 288), sllm::Error);
  CHECK_THROWS_AS(sllm::quantize_row(TensorType::Q6_K, x.data(), buf.data(), 32), sllm::Error);
}

TEST_CASE("reference dot products equal the dot product of the dequantized rows") {
  std::mt19937 rng(9);
  const size_t n = 32 * 40;
  const auto w = random_values(rng, n, 0.1f);
  const auto x = random_values(rng, n, 2.0f);
  std::vector<BlockQ8_0> w8(n / 32), x8(n / 32);
  std::vector<BlockQ4_0> w4(n / 32);
  sllm::ref::quantize_row_q8_0(w.data(), w8.data(), n);
  sllm::ref::quantize_row_q4_0(w.data(), w4.data(), n);
  sllm::ref::quantize_row_q8_0(x.data(), x8.data(), n);
  std::vector<float> dw8(n), dw4(n), dx(n);
  sllm::ref::dequantize_row_q8_0(w8.data(), dw8.data(), n);
  sllm::ref::dequantize_row_q4_0(w4.data(), dw4.data(), n);
  sllm::ref::dequantize_row_q8_0(x8.data(), dx.data(), n);
  double want8 = 0, want4 = 0, magnitude = 0;
  for (size_t i = 0; i < n; ++i) {
    want8 += double(dw8[i]) * dx[i];
    want4 += double(dw4[i]) * dx[i];
    magnitude += std::fabs(double(dw8[i]) * dx[i]);
  }
  CHECK(std::fabs(sllm::ref::dot_q8_0(w8.data(), x8.data(), n) - want8) <= 1e-5 * magnitude);
  CHECK(std::fabs(sllm::ref::dot_q4_0(w4.data(), x8.data(), n) - want4) <= 1e-5 * magnitude);
  std::vector<BlockQ5_0> w5(n / 32);
  sllm::ref::quantize_row_q5_0(w.data(), w5.data(), n);
  std::vector<float> dw5(n);
  sllm::ref::dequantize_row_q5_0(w5.data(), dw5.data(), n);
  double want5 = 0;
  for (size_t i = 0; i < n; ++i) want5 += double(dw5[i]) * dx[i];
  CHECK(std::fabs(sllm::ref::dot_q5_0(w5.data(), x8.data(), n) - want5) <= 1e-5 * magnitude);
  // The integer block sums of extreme codes (a file may hold -128 in Q8_0).
  BlockQ8_0 a{}, b{};
  BlockQ4_0 c{};
  for (int i = 0; i < 32; ++i) {
    a.qs[i] = -128;
    b.qs[i] = i % 2 ? 127 : -127;
  }
  for (int j = 0; j < 16; ++j) c.qs[j] = 0x0f;  // values 7 (low) and -8 (high)
  CHECK(sllm::ref::block_dot(a, b) == 0);
  CHECK(sllm::ref::block_dot(a, a) == 32 * 16384);
  CHECK(sllm::ref::block_dot(c, b) == 7 * 0 + (-8) * 0);  // each half sums to 0
  b.qs[0] = 127;
  CHECK(sllm::ref::block_dot(c, b) == 7 * 254);
  // Q5_0 codes 31 (low half) and 0 (high half): values 15 and -16.
  BlockQ5_0 e{};
  for (int j = 0; j < 16; ++j) e.qs[j] = 0x0f;
  e.qh[0] = e.qh[1] = 0xff;
  b.qs[0] = -127;
  CHECK(sllm::ref::block_dot(e, b) == 0);  // each half sums to 0
  b.qs[0] = 127;
  CHECK(sllm::ref::block_dot(e, b) == 15 * 254);
  b.qs[16] = 127;  // was -127
  CHECK(sllm::ref::block_dot(e, b) == 15 * 254 - 16 * 254);
}

TEST_CASE("activation quantization matches the reference quantizer on every target") {
  std::mt19937 rng(21);
  sllm_test::for_each_simd_target([&] {
    for (size_t cols : {32, 64, 96, 160, 4096 + 32}) {
      for (size_t n : {1, 2, 5, 9}) {
        CAPTURE(cols);
        CAPTURE(n);
        const size_t x_stride = cols + 7;
        auto x = random_values(rng, n * x_stride, 3.0f);
        // A block whose step is exactly 1, with halves to round to even, and a zero block.
        for (size_t i = 0; i < 32; ++i) x[i] = i == 0 ? 127.0f : float(int(i) - 16) + 0.5f;
        if (cols >= 64) std::fill(x.begin() + 32, x.begin() + 64, 0.0f);
        QuantizedActivations q;
        sllm::detail::quantize_activations(x.data(), n, cols, x_stride, q, 2);
        REQUIRE(q.n == n);
        REQUIRE(q.cols == cols);
        std::vector<BlockQ8_0> want(cols / 32);
        for (size_t t = 0; t < n; ++t) {
          sllm::ref::quantize_activations_q8_0(x.data() + t * x_stride, want.data(), cols);
          bool codes_equal = true, scales_equal = true, sums_equal = true;
          for (size_t b = 0; b < cols / 32; ++b) {
            int32_t sum[2] = {};  // of each half: the sums are per 16 codes
            for (size_t i = 0; i < 32; ++i) {
              codes_equal &= q.codes(t)[32 * b + i] == want[b].qs[i];
              sum[i / 16] += want[b].qs[i];
            }
            scales_equal &= q.scales(t)[b] == sllm::fp16_to_f32(want[b].d);
            sums_equal &= q.sums(t)[2 * b] == sum[0] && q.sums(t)[2 * b + 1] == sum[1];
          }
          CHECK(codes_equal);
          CHECK(scales_equal);
          CHECK(sums_equal);
          bool padding_zero = true;
          for (size_t i = cols; i < q.q_stride; ++i) padding_zero &= q.codes(t)[i] == 0;
          for (size_t b = cols / 32; b < q.scale_stride; ++b)
            padding_zero &= q.scales(t)[b] == 0.0f;
          for (size_t k = cols / 16; k < q.sum_stride; ++k) padding_zero &= q.sums(t)[k] == 0;
          CHECK(padding_zero);
        }
        if (cols == 32) CHECK(q.codes(0)[1] == -14);  // -14.5 rounds to even, not to -15
      }
    }
  });
}

// Exact case: scales of 1 on both sides make every product and sum an integer that f32 holds
// exactly in any order, so the kernels must reproduce the integer dot products bit for bit.
TEST_CASE("quantized matmul is exact on integer data on every target") {
  std::mt19937 rng(33);
  std::uniform_int_distribution<int> code8(-128, 127), code5(0, 31), act(-127, 127);
  for (TensorType type : {TensorType::Q8_0, TensorType::Q4_0, TensorType::Q5_0}) {
    for (size_t cols : {32, 64, 96, 4096 + 32}) {
      const size_t rows = 37, nb = cols / 32, row_bytes = nb * block_bytes(type);
      GuardedBuffer w(rows * row_bytes);
      std::vector<int> values(rows * cols);
      for (size_t r = 0; r < rows; ++r) {
        for (size_t b = 0; b < nb; ++b) {
          uint8_t* blk = w.data() + r * row_bytes + b * block_bytes(type);
          const uint16_t one = sllm::f32_to_fp16(1.0f);
          std::memcpy(blk, &one, 2);
          for (size_t i = 0; i < 32; ++i) {
            int v;
            if (type == TensorType::Q8_0) {
              v = code8(rng);
              blk[2 + i] = uint8_t(int8_t(v));
            } else {
              const bool q5 = type == TensorType::Q5_0;
              const int c = q5 ? code5(rng) : code5(rng) & 15;
              v = c - (q5 ? 16 : 8);
              uint8_t& byte = blk[(q5 ? 6 : 2) + i % 16];
              byte = i < 16 ? uint8_t((byte & 0xf0) | (c & 15))
                            : uint8_t((byte & 0x0f) | ((c & 15) << 4));
              if (q5)
                blk[2 + i / 8] = uint8_t((blk[2 + i / 8] & ~(1 << i % 8)) | (c >> 4) << i % 8);
            }
            values[r * cols + b * 32 + i] = v;
          }
        }
      }
      const size_t n = 9;
      std::vector<float> x(n * cols);
      for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 32 == 3 ? 127 : act(rng));
      std::vector<float> want(n * rows);
      for (size_t t = 0; t < n; ++t) {
        for (size_t r = 0; r < rows; ++r) {
          int64_t sum = 0;
          for (size_t c = 0; c < cols; ++c) sum += int64_t(values[r * cols + c]) * x[t * cols + c];
          want[t * rows + r] = float(sum);
        }
      }
      sllm_test::for_each_simd_target([&] {
        for (size_t tokens : {1, 2, 3, 4, 7, 9}) {
          CAPTURE(type);
          CAPTURE(cols);
          CAPTURE(tokens);
          QuantizedActivations q;
          sllm::detail::quantize_activations(x.data(), tokens, cols, cols, q);
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

TEST_CASE("quantized matmul matches the scalar reference on every target") {
  std::mt19937 rng(44);
  for (TensorType type : kKernelTypes) {
    for (size_t cols : test_cols(type)) {
      for (size_t rows : {1, 3, 33, 67, 259}) {
        const size_t row_bytes = row_bytes_of(type, cols);
        GuardedBuffer w(rows * row_bytes);
        fill_weights(rng, type, rows, cols, w.data());
        const size_t max_tokens = 13, x_stride = cols + 32;
        const auto x = random_values(rng, max_tokens * x_stride, 1.0f);
        std::vector<Expected> want(max_tokens * rows);
        for (size_t t = 0; t < max_tokens; ++t) {
          for (size_t r = 0; r < rows; ++r) {
            want[t * rows + r] =
                expected_dot(type, w.data() + r * row_bytes, x.data() + t * x_stride, cols);
          }
        }
        sllm_test::for_each_simd_target([&] {
          for (size_t tokens : {1, 2, 3, 4, 5, 6, 7, 8, 9, 13}) {
            for (int threads : {1, 2, 3}) {
              CAPTURE(type);
              CAPTURE(cols);
              CAPTURE(rows);
              CAPTURE(tokens);
              CAPTURE(threads);
              QuantizedActivations q;
              quantize_for(type, x.data(), tokens, cols, x_stride, q, threads);
              const size_t y_stride = rows + 5;
              std::vector<float> y(tokens * y_stride, NAN);
              sllm::detail::matmul_q(MatrixView{type, w.data(), rows, cols, row_bytes}, q, y.data(),
                                     y_stride, threads);
              int bad = 0;
              for (size_t t = 0; t < tokens; ++t) {
                for (size_t r = 0; r < rows; ++r) {
                  const Expected& e = want[t * rows + r];
                  const float got = y[t * y_stride + r];
                  if (!(std::fabs(got - e.value) <= e.tolerance)) {
                    if (bad++ < 3) CHECK(got == doctest::Approx(e.value));
                  }
                }
                for (size_t r = rows; r < y_stride; ++r) bad += !std::isnan(y[t * y_stride + r]);
              }
              CHECK(bad == 0);
            }
          }
        });
      }
    }
  }
}

TEST_CASE("row ranges write only their rows") {
  std::mt19937 rng(55);
  const size_t rows = 71;
  for (TensorType type : kKernelTypes) {
    const size_t cols = 5 * block_values(type), row_bytes = row_bytes_of(type, cols);
    GuardedBuffer w(rows * row_bytes);
    fill_weights(rng, type, rows, cols, w.data());
    const auto x = random_values(rng, 10 * cols, 1.0f);
    sllm_test::for_each_simd_target([&] {
      for (size_t tokens : {1, 10}) {
        QuantizedActivations q;
        quantize_for(type, x.data(), tokens, cols, cols, q);
        std::vector<float> all(tokens * rows);
        const MatrixView m{type, w.data(), rows, cols, row_bytes};
        sllm::detail::matmul_q(m, q, all.data(), rows, 1);
        const size_t cuts[] = {0, 1, 18, 19, 50, 71};
        for (size_t i = 0; i + 1 < 6; ++i) {
          std::vector<float> y(tokens * rows, NAN);
          sllm::detail::matmul_q_rows(m, q, y.data(), rows, cuts[i], cuts[i + 1]);
          bool ok = true;
          for (size_t t = 0; t < tokens; ++t) {
            for (size_t r = 0; r < rows; ++r) {
              const float got = y[t * rows + r];
              ok &= r >= cuts[i] && r < cuts[i + 1] ? got == all[t * rows + r] : std::isnan(got);
            }
          }
          CAPTURE(type);
          CAPTURE(tokens);
          CAPTURE(i);
          CHECK(ok);
        }
      }
    });
  }
}

TEST_CASE("several matrices in one call land side by side and match the scalar reference") {
  std::mt19937 rng(77);
  struct Part {
    TensorType type;
    size_t rows;
  };
  // Parts of one activation format each: row counts that split into uneven chunks.
  const std::vector<std::vector<Part>> groups = {
      {{TensorType::Q4_0, 33}, {TensorType::Q8_0, 5}, {TensorType::Q4_0, 70}},
      {{TensorType::Q4_K, 3},
       {TensorType::Q6_K, 40},
       {TensorType::Q3_K, 17},
       {TensorType::Q2_K, 9}}};
  for (const auto& group : groups) {
    const size_t cols = 256, max_tokens = 8;
    std::deque<GuardedBuffer> weights;  // not movable: a deque keeps them in place
    std::vector<MatrixView> views;
    size_t total = 0;
    for (const Part& part : group) {
      const size_t row_bytes = row_bytes_of(part.type, cols);
      weights.emplace_back(part.rows * row_bytes);
      fill_weights(rng, part.type, part.rows, cols, weights.back().data());
      views.push_back(MatrixView{part.type, weights.back().data(), part.rows, cols, row_bytes});
      total += part.rows;
    }
    const auto x = random_values(rng, max_tokens * cols, 1.0f);
    std::vector<Expected> want;  // token by token, the parts' rows one after another
    for (size_t t = 0; t < max_tokens; ++t) {
      for (const MatrixView& v : views) {
        for (size_t r = 0; r < v.rows; ++r) {
          want.push_back(expected_dot(v.type, v.data + r * v.row_bytes, x.data() + t * cols, cols));
        }
      }
    }
    sllm_test::for_each_simd_target([&] {
      for (size_t tokens : {1, 3, 8}) {
        for (int threads : {1, 2, 3}) {
          CAPTURE(group[0].type);
          CAPTURE(tokens);
          CAPTURE(threads);
          QuantizedActivations q;
          quantize_for(group[0].type, x.data(), tokens, cols, cols, q);
          const size_t y_stride = total + 3;
          std::vector<float> y(tokens * y_stride, NAN);
          sllm::detail::matmul_q_parts(views.data(), views.size(), q, y.data(), y_stride, threads);
          // From the float rows, quantized per thread (up to kThreadQuantizedRows tokens) or once:
          // the same quantization, so the same bits.
          std::vector<float> y_f32(tokens * y_stride, NAN);
          sllm::detail::matmul_q_parts_f32(views.data(), views.size(), x.data(), tokens, cols,
                                           y_f32.data(), y_stride, threads);
          CHECK(std::memcmp(y.data(), y_f32.data(), y.size() * sizeof(float)) == 0);
          int bad = 0;
          for (size_t t = 0; t < tokens; ++t) {
            for (size_t r = 0; r < y_stride; ++r) {
              const float got = y[t * y_stride + r];
              if (r >= total) {
                bad += !std::isnan(got);
                continue;
              }
              const Expected& e = want[t * total + r];
              if (!(std::fabs(got - e.value) <= e.tolerance)) {
                if (bad++ < 3) CHECK(got == doctest::Approx(e.value));
              }
            }
          }
          CHECK(bad == 0);
        }
      }
    });
  }
  // A part that needs the other activation format is refused.
  GuardedBuffer q4(row_bytes_of(TensorType::Q4_0, 256)), q4k(row_bytes_of(TensorType::Q4_K, 256));
  const MatrixView mixed[] = {
      {TensorType::Q4_0, q4.data(), 1, 256, row_bytes_of(TensorType::Q4_0, 256)},
      {TensorType::Q4_K, q4k.data(), 1, 256, row_bytes_of(TensorType::Q4_K, 256)}};
  const auto x = random_values(rng, 256, 1.0f);
  QuantizedActivations q;
  quantize_for(TensorType::Q4_0, x.data(), 1, 256, 256, q);
  std::vector<float> y(2);
  CHECK_THROWS_AS(sllm::detail::matmul_q_parts(mixed, 2, q, y.data(), 2, 1), sllm::Error);
  CHECK_THROWS_AS(sllm::detail::matmul_q_parts_f32(mixed, 2, x.data(), 1, 256, y.data(), 2, 1),
                  sllm::Error);
}

TEST_CASE("rows may lie further apart than their blocks") {
  std::mt19937 rng(66);
  for (TensorType type : kKernelTypes) {
    const size_t rows = 35, cols = 3 * block_values(type), blocks_bytes = row_bytes_of(type, cols);
    const size_t row_bytes = blocks_bytes + 10;
    GuardedBuffer w(rows * row_bytes);
    std::vector<uint8_t> dense(rows * blocks_bytes);
    fill_weights(rng, type, rows, cols, dense.data());
    for (size_t r = 0; r < rows; ++r) {
      std::memcpy(w.data() + r * row_bytes, dense.data() + r * blocks_bytes, blocks_bytes);
      std::memset(w.data() + r * row_bytes + blocks_bytes, 0xff, 10);  // not part of any block
    }
    const auto x = random_values(rng, 8 * cols, 1.0f);
    sllm_test::for_each_simd_target([&] {
      for (size_t tokens : {1, 2, 8}) {
        QuantizedActivations q;
        quantize_for(type, x.data(), tokens, cols, cols, q);
        std::vector<float> strided(tokens * rows), packed(tokens * rows);
        sllm::detail::matmul_q(MatrixView{type, w.data(), rows, cols, row_bytes}, q, strided.data(),
                               rows, 2);
        sllm::detail::matmul_q(MatrixView{type, dense.data(), rows, cols, blocks_bytes}, q,
                               packed.data(), rows, 2);
        CAPTURE(type);
        CAPTURE(tokens);
        CHECK(strided == packed);
      }
    });
  }
}

TEST_CASE("quantized matmul refuses shapes and types it cannot compute") {
  std::vector<uint8_t> w(4 * 34 * 2);
  std::vector<float> x(64, 1.0f), y(16);
  QuantizedActivations q;
  CHECK_THROWS_AS(sllm::detail::quantize_activations(x.data(), 1, 48, 48, q), sllm::Error);
  CHECK_THROWS_AS(sllm::detail::quantize_activations(x.data(), 1, 0, 0, q), sllm::Error);
  sllm::detail::quantize_activations(x.data(), 1, 64, 64, q);
  auto run = [&](TensorType type, size_t rows, size_t cols, size_t row_bytes) {
    sllm::detail::matmul_q(MatrixView{type, w.data(), rows, cols, row_bytes}, q, y.data(), 4, 1);
  };
  CHECK_NOTHROW(run(TensorType::Q8_0, 4, 64, 68));
  CHECK_THROWS_AS(run(TensorType::F16, 4, 64, 128), sllm::Error);
  CHECK_THROWS_AS(run(TensorType::Q4_K, 1, 64, 36), sllm::Error);    // not whole blocks of 256
  CHECK_THROWS_AS(run(TensorType::Q8_0, 4, 48, 51), sllm::Error);    // not whole blocks
  CHECK_THROWS_AS(run(TensorType::Q8_0, 2, 128, 136), sllm::Error);  // activations are 64 wide
  CHECK_THROWS_AS(run(TensorType::Q8_0, 4, 64, 67), sllm::Error);    // rows overlap
  const MatrixView m{TensorType::Q8_0, w.data(), 4, 64, 68};
  CHECK_THROWS_AS(sllm::detail::matmul_q_rows(m, q, y.data(), 4, 3, 5), sllm::Error);
  CHECK_THROWS_AS(sllm::detail::matmul_q_rows(m, q, y.data(), 4, 3, 2), sllm::Error);
  CHECK_NOTHROW(sllm::detail::matmul_q_rows(m, q, y.data(), 4, 2, 2));
  // K-quant weights need activations quantized per 256 values, and the others per 32.
  std::vector<uint8_t> wk(2 * 210);
  std::vector<float> xk(256, 1.0f);
  QuantizedActivations q32, q256;
  sllm::detail::quantize_activations(xk.data(), 1, 256, 256, q32);
  sllm::detail::quantize_activations(xk.data(), 1, 256, 256, q256, 1,
                                     sllm::detail::ActivationFormat::kQ8_K);
  const MatrixView q4k{TensorType::Q4_K, wk.data(), 2, 256, 144};
  const MatrixView q6k{TensorType::Q6_K, wk.data(), 2, 256, 210};
  const MatrixView q8{TensorType::Q8_0, wk.data(), 2, 256, 272};
  CHECK(sllm_test::error_message([&] {
          sllm::detail::matmul_q(q4k, q32, y.data(), 2, 1);
        }).find("Q4_K weights need activations quantized per 256 values") != std::string::npos);
  CHECK_THROWS_AS(sllm::detail::matmul_q(q6k, q32, y.data(), 2, 1), sllm::Error);
  CHECK_THROWS_AS(sllm::detail::matmul_q(q8, q256, y.data(), 2, 1), sllm::Error);
  CHECK_NOTHROW(sllm::detail::matmul_q(q4k, q256, y.data(), 2, 1));
  CHECK_NOTHROW(sllm::detail::matmul_q(q6k, q256, y.data(), 2, 1));
  CHECK(sllm::detail::activation_format(TensorType::Q5_K) == sllm::detail::ActivationFormat::kQ8_K);
  CHECK(sllm_test::error_message([&] {
          sllm::detail::activation_format(TensorType::Q4_1);
        }).find("weight type Q4_1 is not") != std::string::npos);
}
