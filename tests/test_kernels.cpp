#include <random>
#include <vector>

#include "test_support.h"

TEST_CASE("dot_f32 matches the scalar reference on every SIMD target") {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  CHECK(sllm::detail::simd_targets().size() >= 1);
  sllm_test::for_each_simd_target([&] {
    for (size_t n : {0, 1, 3, 7, 16, 31, 64, 100, 1027}) {
      std::vector<float> a(n), b(n);
      for (auto& v : a) v = dist(rng);
      for (auto& v : b) v = dist(rng);
      const float want = sllm::ref::dot_f32(a.data(), b.data(), n);
      const float got = sllm::detail::dot_f32(a.data(), b.data(), n);
      CHECK(got == doctest::Approx(want).epsilon(1e-5).scale(1.0));
    }
  });
}
