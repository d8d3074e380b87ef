#include <cmath>
#include <random>
#include <vector>

#include "test_support.h"

namespace {

using sllm::TensorType;

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

size_t element_bytes(TensorType type) {
  return type == TensorType::F32 ? 4 : 2;
}

// Stores floats as a row of the given type (F16/BF16 rounded to nearest even).
void store_as(TensorType type, const float* src, size_t n, uint8_t* dst) {
  for (size_t i = 0; i < n; ++i) {
    if (type == TensorType::F32) {
      std::memcpy(dst + 4 * i, &src[i], 4);
    } else {
      const uint16_t h =
          type == TensorType::F16 ? sllm::f32_to_fp16(src[i]) : sllm::f32_to_bf16(src[i]);
      std::memcpy(dst + 2 * i, &h, 2);
    }
  }
}

const char* type_name(TensorType type) {
  return type == TensorType::F32 ? "F32" : type == TensorType::F16 ? "F16" : "BF16";
}

}  // namespace

TEST_CASE("dot_f32 matches the scalar reference on every SIMD target") {
  std::mt19937 rng(1);
  CHECK(sllm::detail::simd_targets().size() >= 1);
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {0, 1, 3, 7, 16, 31, 64, 100, 1027}) {
      const auto a = random_floats(rng, n), b = random_floats(rng, n);
      const float want = sllm::ref::dot_f32(a.data(), b.data(), n);
      const float got = sllm::detail::dot_f32(a.data(), b.data(), n);
      CHECK(got == doctest::Approx(want).epsilon(1e-5).scale(1.0));
    }
  });
}

TEST_CASE("matmul of F32, F16 and BF16 weights matches the scalar reference") {
  std::mt19937 rng(2);
  for (TensorType type : {TensorType::F32, TensorType::F16, TensorType::BF16}) {
    const std::string type_str = type_name(type);
    CAPTURE(type_str);
    for (size_t rows : {1, 3, 4, 6, 13, 37}) {
      for (size_t cols : {1, 7, 16, 33, 100, 172}) {
        // Weight rows padded to a stride larger than the row, as views into a file may be.
        const size_t row_bytes = (cols + 3) * element_bytes(type);
        std::vector<uint8_t> weights(rows * row_bytes, 0xff);
        for (size_t r = 0; r < rows; ++r) {
          const auto row = random_floats(rng, cols);
          store_as(type, row.data(), cols, weights.data() + r * row_bytes);
        }
        const sllm::detail::MatrixView w{type, weights.data(), rows, cols, row_bytes};
        for (size_t n : {1, 2, 3, 4, 5, 7, 9}) {
          const size_t x_stride = cols + 1, y_stride = rows + 2;
          const auto x = random_floats(rng, n * x_stride);
          std::vector<float> want(n * y_stride, -7.f);
          sllm::ref::matmul(w, x.data(), n, x_stride, want.data(), y_stride);
          sllm_test::for_each_simd_target([&] {
            for (int threads : {1, 3}) {
              CAPTURE(rows);
              CAPTURE(cols);
              CAPTURE(n);
              CAPTURE(threads);
              std::vector<float> got(n * y_stride, -7.f);
              sllm::detail::matmul(w, x.data(), n, x_stride, got.data(), y_stride, threads);
              for (size_t i = 0; i < got.size(); ++i) {
                // Padding between rows of y stays untouched; results agree to the float
                // rounding of a sum of cols products of magnitude <= 1.
                CHECK(std::fabs(got[i] - want[i]) <= 1e-6f * float(cols));
              }
            }
          });
        }
      }
    }
  }
}

TEST_CASE("matmul splits many rows across threads without gaps or overlap") {
  std::mt19937 rng(3);
  const size_t rows = 1001, cols = 67, n = 5;  // enough work to go parallel
  const auto wf = random_floats(rng, rows * cols);
  const sllm::detail::MatrixView w{TensorType::F32, reinterpret_cast<const uint8_t*>(wf.data()),
                                   rows, cols, cols * 4};
  const auto x = random_floats(rng, n * cols);
  std::vector<float> want(n * rows);
  sllm::ref::matmul(w, x.data(), n, cols, want.data(), rows);
  sllm_test::for_each_simd_target([&] {
    for (int threads : {2, 3, 7}) {
      CAPTURE(threads);
      std::vector<float> got(n * rows, NAN);
      sllm::detail::matmul(w, x.data(), n, cols, got.data(), rows, threads);
      size_t bad = 0;
      for (size_t i = 0; i < got.size(); ++i) bad += !(std::fabs(got[i] - want[i]) <= 1e-4f);
      CHECK(bad == 0);
    }
  });
}

TEST_CASE("matmul with rows too long for one block of activations") {
  // 40000 floats per activation row: the kernel's 256 KiB blocks hold one or two rows, so nine
  // activation rows go through several blocks.
  std::mt19937 rng(10);
  const size_t rows = 6, cols = 40001, n = 9;
  std::vector<uint16_t> wh(rows * cols);
  const auto wf = random_floats(rng, rows * cols);
  for (size_t i = 0; i < wf.size(); ++i) wh[i] = sllm::f32_to_bf16(wf[i]);
  const sllm::detail::MatrixView w{TensorType::BF16, reinterpret_cast<const uint8_t*>(wh.data()),
                                   rows, cols, cols * 2};
  const auto x = random_floats(rng, n * cols);
  std::vector<float> want(n * rows);
  sllm::ref::matmul(w, x.data(), n, cols, want.data(), rows);
  sllm_test::for_each_simd_target([&] {
    std::vector<float> got(n * rows, NAN);
    sllm::detail::matmul(w, x.data(), n, cols, got.data(), rows, 2);
    for (size_t i = 0; i < got.size(); ++i) CHECK(std::fabs(got[i] - want[i]) <= 1e-2f);
  });
}

TEST_CASE("row_to_f32 widens F32, F16 and BF16 rows exactly") {
  std::mt19937 rng(4);
  for (TensorType type : {TensorType::F32, TensorType::F16, TensorType::BF16}) {
    const std::string type_str = type_name(type);
    CAPTURE(type_str);
    for (size_t n : {1, 5, 16, 31, 64, 77}) {
      auto values = random_floats(rng, n, -60000.f, 60000.f);
      values[0] = 3e-7f;  // an F16 subnormal
      std::vector<uint8_t> row(n * element_bytes(type));
      store_as(type, values.data(), n, row.data());
      sllm_test::for_each_simd_target([&] {
        std::vector<float> got(n);
        sllm::detail::row_to_f32(type, row.data(), n, got.data());
        for (size_t i = 0; i < n; ++i) {
          CHECK(got[i] == sllm::ref::element_to_f32(type, row.data(), i));
        }
      });
    }
  }
}

TEST_CASE("rmsnorm matches the scalar reference") {
  std::mt19937 rng(5);
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {1, 3, 8, 17, 64, 100, 288}) {
      const auto x = random_floats(rng, n, -3.f, 3.f), w = random_floats(rng, n);
      std::vector<float> want(n), got(n);
      sllm::ref::rmsnorm(x.data(), w.data(), n, 1e-5f, want.data());
      sllm::detail::rmsnorm(x.data(), w.data(), n, 1e-5f, got.data());
      for (size_t i = 0; i < n; ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-5));
      auto in_place = x;
      sllm::detail::rmsnorm(in_place.data(), w.data(), n, 1e-5f, in_place.data());
      CHECK(in_place == got);
    }
  });
}

TEST_CASE("rope rotates interleaved and NEOX pairs as the scalar reference does") {
  std::mt19937 rng(6);
  struct Shape {
    size_t n_heads, head_dim, rope_dim;
  };
  sllm_test::for_each_simd_target([&] {
    for (sllm::RopeStyle style : {sllm::RopeStyle::kInterleaved, sllm::RopeStyle::kNeox}) {
      const bool neox = style == sllm::RopeStyle::kNeox;
      CAPTURE(neox);
      for (Shape s : {Shape{1, 2, 2}, Shape{8, 8, 8}, Shape{3, 18, 18}, Shape{2, 64, 64},
                      Shape{4, 128, 128}, Shape{2, 64, 32}, Shape{3, 20, 6}, Shape{2, 80, 36}}) {
        // Without and with Llama 3.1-style frequency factors (1, 4.5 and 8 in turn).
        std::vector<float> factors(s.rope_dim / 2);
        for (size_t i = 0; i < factors.size(); ++i) factors[i] = 1.f + 7.f * float(i % 3) / 2.f;
        const float* const variants[] = {nullptr, factors.data()};
        for (const float* ff : variants) {
          for (size_t pos : {0, 1, 7, 500, 4095}) {
            CAPTURE(s.head_dim);
            CAPTURE(s.rope_dim);
            CAPTURE(pos);
            const bool with_factors = ff != nullptr;
            CAPTURE(with_factors);
            const auto x = random_floats(rng, s.n_heads * s.head_dim);
            auto want = x, got = x;
            sllm::ref::rope(want.data(), s.n_heads, s.head_dim, s.rope_dim, pos, 10000.f, ff,
                            style);
            std::vector<float> cos(s.rope_dim), sin(s.rope_dim);
            sllm::detail::rope_table(pos, s.rope_dim, 10000.f, ff, style, cos.data(), sin.data());
            sllm::detail::rope(got.data(), s.n_heads, s.head_dim, s.rope_dim, cos.data(),
                               sin.data(), style);
            for (size_t i = 0; i < x.size(); ++i) CHECK(std::fabs(got[i] - want[i]) <= 1e-6f);
          }
        }
      }
    }
  });
}

TEST_CASE("NEOX rope rotates element i with element i + rope_dim / 2") {
  // One head of 4: the pairs are (0, 2) and (1, 3); at position 1 the angles are 1 and
  // 10000^(-1/2) = 0.01 radians. Written out by hand, independent of both implementations.
  const std::vector<float> x = {1.f, 2.f, 3.f, 4.f};
  std::vector<float> cos(4), sin(4);
  sllm::detail::rope_table(1, 4, 10000.f, nullptr, sllm::RopeStyle::kNeox, cos.data(), sin.data());
  auto got = x;
  sllm::detail::rope(got.data(), 1, 4, 4, cos.data(), sin.data(), sllm::RopeStyle::kNeox);
  const double c0 = std::cos(1.0), s0 = std::sin(1.0), c1 = std::cos(0.01), s1 = std::sin(0.01);
  CHECK(got[0] == doctest::Approx(1 * c0 - 3 * s0));
  CHECK(got[2] == doctest::Approx(1 * s0 + 3 * c0));
  CHECK(got[1] == doctest::Approx(2 * c1 - 4 * s1));
  CHECK(got[3] == doctest::Approx(2 * s1 + 4 * c1));
}

TEST_CASE("softmax matches the scalar reference") {
  std::mt19937 rng(7);
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {1, 2, 3, 16, 17, 100, 1000}) {
      auto want = random_floats(rng, n, -30.f, 30.f);
      auto got = want;
      sllm::ref::softmax(want.data(), n);
      sllm::detail::softmax(got.data(), n);
      float sum = 0;
      for (size_t i = 0; i < n; ++i) {
        CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-5).scale(1e-3));
        sum += got[i];
      }
      CHECK(sum == doctest::Approx(1.0f).epsilon(1e-5));
    }
  });
}

TEST_CASE("swiglu matches the scalar reference, including saturated gates") {
  std::mt19937 rng(8);
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {1, 4, 15, 16, 33, 172}) {
      auto gate = random_floats(rng, n, -12.f, 12.f);
      gate[0] = -200.f;
      if (n > 1) gate[1] = 150.f;
      const auto up = random_floats(rng, n, -2.f, 2.f);
      std::vector<float> want(n), got(n);
      sllm::ref::swiglu(gate.data(), up.data(), n, want.data());
      sllm::detail::swiglu(gate.data(), up.data(), n, got.data());
      for (size_t i = 0; i < n; ++i) {
        CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-5).scale(1e-6));
      }
    }
  });
}

TEST_CASE("gelu and geglu match the scalar reference, including saturated inputs") {
  // The tanh approximation at a few points, written out: gelu(1) = 0.841192, gelu(-1) =
  // -0.158808, gelu(3) = 2.996363.
  CHECK(sllm::ref::gelu(1.0) == doctest::Approx(0.8411920).epsilon(1e-6));
  CHECK(sllm::ref::gelu(-1.0) == doctest::Approx(-0.1588080).epsilon(1e-6));
  CHECK(sllm::ref::gelu(3.0) == doctest::Approx(2.9963627).epsilon(1e-6));
  // Both round to f16 (llama.cpp's evaluation): the results are f16 values, equal but where the
  // reference's double and the kernel's f32 formula land on either side of an f16 rounding
  // boundary (then one f16 ulp apart) or where f32 loses digits.
  const auto f16_steps = [](float a, float b) {
    return std::abs(int(sllm::f32_to_fp16(a)) - int(sllm::f32_to_fp16(b)));
  };
  std::mt19937 rng(11);
  size_t values = 0, exact = 0;
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {1, 4, 15, 16, 33, 320, 4096}) {
      auto x = random_floats(rng, n, -12.f, 12.f);
      x[0] = -200.f;
      if (n > 1) x[1] = 150.f;
      if (n > 2) x[2] = 0.f;
      if (n > 6) {
        x[3] = -10.f;  // the limits: 0 at -10, x at 10
        x[4] = 10.f;
        x[5] = 3e-6f;   // an f16 subnormal
        x[6] = -1e-9f;  // below the smallest f16 subnormal
      }
      const auto up = random_floats(rng, n, -2.f, 2.f);
      std::vector<float> want(n), got(n), want_glu(n), got_glu(n);
      sllm::ref::gelu(x.data(), n, want.data());
      sllm::detail::gelu(x.data(), n, got.data());
      sllm::ref::geglu(x.data(), up.data(), n, want_glu.data());
      sllm::detail::geglu(x.data(), up.data(), n, got_glu.data());
      for (size_t i = 0; i < n; ++i) {
        CAPTURE(x[i]);
        if (std::fabs(x[i]) < 10.f) CHECK(sllm::fp16_to_f32(sllm::f32_to_fp16(got[i])) == got[i]);
        // Far below 0, 1 + tanh(u) cancels in f32 (as in llama.cpp's table), which is off by up
        // to |x| ulp(1) / 2 there: 2.5e-7 absolute.
        CHECK((f16_steps(got[i], want[i]) <= 1 || std::fabs(got[i] - want[i]) <= 2.5e-7f));
        CHECK(got_glu[i] == got[i] * up[i]);  // the same gelu, times up
        if (got[i] == want[i]) CHECK(got_glu[i] == doctest::Approx(want_glu[i]));
        if (x[i] > -3.f) {  // away from the cancellation, all but the rounding boundaries
          exact += got[i] == want[i];
          ++values;
        }
      }
      if (n > 6) {
        CHECK(got[3] == 0.0f);
        CHECK(got[4] == 10.0f);
        CHECK(got[5] == want[5]);
        CHECK(got[6] == 0.0f);
      }
      auto in_place = x;
      sllm::detail::gelu(in_place.data(), n, in_place.data());
      CHECK(in_place == got);
    }
  });
  CHECK(exact >= values * 999 / 1000);
  sllm_test::for_each_simd_target([&] {
    std::vector<float> nans(17, std::nanf("")), out(17);
    sllm::detail::gelu(nans.data(), nans.size(), out.data());
    for (float v : out) CHECK(std::isnan(v));
  });
}

TEST_CASE("layernorm and add match the scalar reference") {
  std::mt19937 rng(12);
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {1, 3, 8, 17, 64, 100, 768}) {
      CAPTURE(n);
      // An offset far from 0 shows that the variance is taken around the mean.
      auto x = random_floats(rng, n, 97.f, 103.f);
      const auto w = random_floats(rng, n), b = random_floats(rng, n);
      std::vector<float> want(n), got(n);
      sllm::ref::layernorm(x.data(), w.data(), b.data(), n, 1e-5f, want.data());
      sllm::detail::layernorm(x.data(), w.data(), b.data(), n, 1e-5f, got.data());
      for (size_t i = 0; i < n; ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-4));
      auto in_place = x;
      sllm::detail::layernorm(in_place.data(), w.data(), b.data(), n, 1e-5f, in_place.data());
      CHECK(in_place == got);

      auto sum_want = x, sum_got = x;
      sllm::ref::add(sum_want.data(), w.data(), n);
      sllm::detail::add(sum_got.data(), w.data(), n);
      CHECK(sum_got == sum_want);
    }
  });
  // Constant input: zero variance leaves the bias alone.
  const std::vector<float> x(10, 5.f), w(10, 2.f), b(10, 0.25f);
  std::vector<float> out(10);
  sllm::detail::layernorm(x.data(), w.data(), b.data(), 10, 1e-5f, out.data());
  for (float v : out) CHECK(v == 0.25f);
}

TEST_CASE(
    "attention of 1, 3 or 9 query heads over paged F32 and F16 keys and values matches the scalar "
    "reference") {
  std::mt19937 rng(9);
  for (TensorType type : {TensorType::F32, TensorType::F16}) {
    for (size_t block_tokens : {16, 3}) {
      for (size_t head_dim : {8, 20, 32, 64, 128}) {
        // Two KV heads per token row; the view selects head 1, so offsets are exercised.
        const size_t kv_heads = 2, max_ctx = 41;
        const size_t token_stride = kv_heads * head_dim * element_bytes(type);
        const size_t n_blocks = (max_ctx + block_tokens - 1) / block_tokens;
        // Keys of a block, then its values; blocks stored in reverse order to show that the
        // block table, not memory order, decides the sequence.
        const size_t block_bytes = 2 * block_tokens * token_stride;
        std::vector<uint8_t> pool(n_blocks * block_bytes);
        std::vector<const uint8_t*> table(n_blocks);
        for (size_t b = 0; b < n_blocks; ++b) {
          table[b] = pool.data() + (n_blocks - 1 - b) * block_bytes;
          const auto values = random_floats(rng, 2 * block_tokens * kv_heads * head_dim);
          store_as(type, values.data(), values.size(), pool.data() + b * block_bytes);
        }
        sllm::detail::PagedRows keys{table.data(), block_tokens, head_dim * element_bytes(type),
                                     token_stride, type};
        sllm::detail::PagedRows vals = keys;
        vals.offset += block_tokens * token_stride;
        // Nine query heads of one group; the kernel computes 1, 3 or all 9 at once (scores in
        // groups of up to eight heads, one a lane, padded with zero queries; weighted sums of
        // values four heads at a time, then one by one).
        const size_t max_q = 9;
        const auto q = random_floats(rng, max_q * head_dim, -2.f, 2.f);
        const float scale = 1.0f / std::sqrt(float(head_dim));
        sllm_test::for_each_simd_target([&] {
          // Whole prefixes [0, end), and windows [begin, end) that start inside a block; 41
          // tokens span several of the kernel's chunks.
          using Range = std::pair<size_t, size_t>;
          for (Range range : {Range{0, 1}, Range{0, 2}, Range{0, 5}, Range{0, 16}, Range{0, 17},
                              Range{0, 41}, Range{4, 5}, Range{3, 17}, Range{20, 41}}) {
            for (size_t n_q : {size_t{1}, size_t{3}, max_q}) {
              const size_t begin = range.first, end = range.second;
              const std::string type_str = type_name(type);
              CAPTURE(type_str);
              CAPTURE(block_tokens);
              CAPTURE(head_dim);
              CAPTURE(begin);
              CAPTURE(end);
              CAPTURE(n_q);
              std::vector<float> want(n_q * head_dim), got(n_q * head_dim);
              for (size_t h = 0; h < n_q; ++h) {
                sllm::ref::attention(q.data() + h * head_dim, head_dim, keys, vals, begin, end,
                                     scale, want.data() + h * head_dim);
              }
              sllm::detail::attention(q.data(), n_q, head_dim, keys, vals, begin, end, scale,
                                      got.data());
              // The scalar target sums a score's head_dim products in one f32 chain, whose
              // rounding grows with head_dim.
              const double epsilon = 1e-5 * std::max<double>(1, head_dim / 64.0);
              for (size_t i = 0; i < n_q * head_dim; ++i) {
                CHECK(got[i] == doctest::Approx(want[i]).epsilon(epsilon).scale(1e-2));
              }
            }
          }
        });
      }
    }
  }
}
