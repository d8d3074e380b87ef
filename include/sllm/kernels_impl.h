namespace sllm {
namespace detail {

HWY_EXPORT(DotF32);

std::vector<int64_t> simd_targets() {
  return hwy::SupportedAndGeneratedTargets();
}
const char* simd_target_name(int64_t target) {
  return hwy::TargetName(target);
}
void force_simd_target(int64_t target) {
  hwy::SetSupportedTargetsForTest(target);
}

float dot_f32(const float* a, const float* b, size_t n) {
  return HWY_DYNAMIC_DISPATCH(DotF32)(a, b, n);
}

}  // namespace detail
}  // namespace sllm
