// libFuzzer target for the GGUF reader: any bytes give a Gguf whose every part can be read, or
// an sllm::Error. Anything else (a crash, a sanitizer report, another exception, a huge
// allocation) is a bug. Built with -DSLLM_FUZZ=ON and clang; see tests/CMakeLists.txt.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

namespace {

// Reads a value through the typed getters, which may refuse it (wrong type, does not fit).
template <typename T>
void try_get(const sllm::Gguf& g, const std::string& key) {
  try {
    (void)g.get<T>(key);
  } catch (const sllm::Error&) {
  }
  try {
    (void)g.get_array<T>(key);
  } catch (const sllm::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sllm::Gguf g = sllm::Gguf::parse(data, size, "fuzz.gguf");
    for (const auto& kv : g.metadata()) {
      (void)kv.second.to_string();
      try_get<bool>(g, kv.first);
      try_get<uint8_t>(g, kv.first);
      try_get<int32_t>(g, kv.first);
      try_get<uint64_t>(g, kv.first);
      try_get<float>(g, kv.first);
      try_get<std::string>(g, kv.first);
    }
    // Every byte of every tensor is inside the input: the sanitizer checks each read.
    uint64_t sum = 0;
    for (const sllm::TensorInfo& t : g.tensors()) {
      for (uint64_t i = 0; i < t.n_bytes; ++i) sum += t.data[i];
      (void)t.shape_string();
      try {
        (void)sllm::tensor_row_bytes(t.type, t.ne[0]);
      } catch (const sllm::Error&) {
      }
    }
    volatile uint64_t sink = sum;
    (void)sink;
  } catch (const sllm::Error&) {
  }
  return 0;
}
