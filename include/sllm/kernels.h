// Kernels layer: SIMD code written once with Highway and dispatched at run time to the best
// target the CPU supports. Each kernel has a scalar reference (namespace sllm::ref) that the
// tests compare it with on every target.
namespace sllm {
namespace detail {

// The SIMD targets that sllm was compiled for and this CPU runs (Highway target bits).
std::vector<int64_t> simd_targets();
const char* simd_target_name(int64_t target);
// Restricts run-time dispatch to one target, for tests; 0 restores the best one.
void force_simd_target(int64_t target);

float dot_f32(const float* a, const float* b, size_t n);

}  // namespace detail

namespace ref {
inline float dot_f32(const float* a, const float* b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += double(a[i]) * b[i];
  return float(sum);
}
}  // namespace ref
}  // namespace sllm
