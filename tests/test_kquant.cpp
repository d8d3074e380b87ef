// K-quant formats (Q4_K, Q6_K): dequantization against llama.cpp's output, the Q8_K-style
// activation quantization and the int8 kernels against the scalar references on every target.
#include <cstring>
#include <vector>

#include "test_support.h"

using sllm::TensorType;

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
