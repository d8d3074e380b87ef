// Helpers shared by the tests.
#pragma once
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "sllm.h"

namespace sllm_test {

// Runs body once per SIMD target this machine supports, with dispatch forced to it.
template <typename Body>
void for_each_simd_target(Body&& body) {
  for (int64_t target : sllm::detail::simd_targets()) {
    sllm::detail::force_simd_target(target);
    const std::string target_name = sllm::detail::simd_target_name(target);
    CAPTURE(target_name);
    body();
  }
  sllm::detail::force_simd_target(0);
}

// n values from a normal distribution.
std::vector<float> random_values(std::mt19937& rng, size_t n, float stddev);

// n_blocks random Q4_K, Q5_K or Q6_K blocks: random bytes (every code and sub-block scale), with
// f16 scales of magnitude 2^-12..2^-11 (d and dmin of Q4_K and Q5_K positive, Q6_K's d of either
// sign), so that values are of the size of a model's weights.
void random_k_blocks(std::mt19937& rng, sllm::TensorType type, size_t n_blocks, uint8_t* out);
// ref::dot_q4_k, dot_q5_k or dot_q6_k of a row of n values of that type.
float ref_dot_k(sllm::TensorType type, const uint8_t* w, const sllm::BlockQ8_K* x, size_t n);

// Bytes that end right before an inaccessible page, so that any read past the end faults.
class GuardedBuffer {
 public:
  explicit GuardedBuffer(size_t size);
  ~GuardedBuffer();
  GuardedBuffer(const GuardedBuffer&) = delete;
  GuardedBuffer& operator=(const GuardedBuffer&) = delete;
  uint8_t* data() { return data_; }
  size_t size() const { return size_; }

 private:
  uint8_t* map_ = nullptr;
  uint8_t* data_ = nullptr;
  size_t map_bytes_ = 0;
  size_t size_ = 0;
};

// Path of a file under ../shared/fixtures, else of its copy under tests/data/fixtures (the freely
// licensed ones), else "" with a SKIPPED message. CI sets SLLM_REQUIRE_FIXTURES=1 so that
// absence fails there instead of skipping.
std::string fixture(const std::string& relative);
// Path of a file under tests/data (always present).
std::string test_data(const std::string& relative);

// The whole file; a failed REQUIRE when it cannot be read.
std::string read_file(const std::string& path);
// Whitespace-separated token ids.
std::vector<int32_t> parse_ids(const std::string& text);

// The vectors of vocab/ggml-vocab-NAME.gguf.{inp,out}: texts separated by
// "\n__ggml_vocab_test__\n" (the file ends with one), and one line of ids per text.
struct VocabVectors {
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> ids;
};
VocabVectors read_vocab_vectors(const std::string& inp_path, const std::string& out_path);
// Encodes every text (no BOS: the vectors have none) and compares; returns the number passed.
// When lossless, also decodes the expected ids, which must give the text back (as they do for
// the tokenizers that do not normalize).
size_t check_vocab_vectors(const std::string& name, const sllm::Tokenizer& tok,
                           const VocabVectors& v, bool lossless = true);

// Removes the file or folder (with all it holds) at path.
void remove_all(const std::string& path);

// A fresh folder under /tmp, removed with all it holds when the test ends.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string path(const std::string& name) const { return path_ + "/" + name; }
  std::vector<std::string> files() const;  // sorted names

 private:
  std::string path_;
};

// The message of the sllm::Error that fn throws; a failed check (and "") when it throws none.
template <typename Fn>
std::string error_message(Fn&& fn) {
  try {
    fn();
  } catch (const sllm::Error& e) {
    return e.what();
  }
  FAIL_CHECK("expected an sllm::Error");
  return "";
}

}  // namespace sllm_test
