// Memory read bandwidth (GB/s) of a buffer much larger than the caches, summed by 1..N OpenMP
// threads: the ceiling of decode speed (tokens/s <= bandwidth / bytes of weights).
#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>
#include <vector>

static void BM_read_bandwidth(benchmark::State& state) {
  const int threads = int(state.range(0));
  const size_t n = size_t(1) << 27;  // 1 GiB of uint64_t
  std::vector<uint64_t> buffer(n, 1);
  for (auto _ : state) {
    uint64_t sum = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : sum) schedule(static)
    for (size_t i = 0; i < n; ++i) sum += buffer[i];
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(n * sizeof(uint64_t)));
}
BENCHMARK(BM_read_bandwidth)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
