// Kernel speed: GB/s of data read per call.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <benchmark/benchmark.h>

static void BM_dot_f32(benchmark::State& state) {
  const size_t n = size_t(state.range(0));
  std::vector<float> a(n, 0.5f), b(n, 0.25f);
  for (auto _ : state) benchmark::DoNotOptimize(sllm::detail::dot_f32(a.data(), b.data(), n));
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(2 * n * sizeof(float)));
}
BENCHMARK(BM_dot_f32)->Arg(2048)->Arg(1 << 20);

BENCHMARK_MAIN();
