#include "test_support.h"

#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

namespace sllm_test {

static bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

std::vector<float> random_values(std::mt19937& rng, size_t n, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

void random_k_blocks(std::mt19937& rng, sllm::TensorType type, size_t n_blocks, uint8_t* out) {
  REQUIRE((type == sllm::TensorType::Q2_K || type == sllm::TensorType::Q3_K ||
           type == sllm::TensorType::Q4_K || type == sllm::TensorType::Q5_K ||
           type == sllm::TensorType::Q6_K));
  // Q4_K, Q5_K: d and dmin first; Q2_K: d and dmin last; Q3_K, Q6_K: d last
  const bool scale_min = type == sllm::TensorType::Q2_K || type == sllm::TensorType::Q4_K ||
                         type == sllm::TensorType::Q5_K;
  const size_t block_bytes = sllm::tensor_row_bytes(type, 256);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> magnitude(1.0f, 2.0f);
  auto scale = [&](bool any_sign) {
    const float v = std::ldexp(magnitude(rng), -12);
    return sllm::f32_to_fp16(any_sign && byte(rng) % 2 ? -v : v);
  };
  for (size_t b = 0; b < n_blocks; ++b) {
    uint8_t* p = out + b * block_bytes;
    for (size_t i = 0; i < block_bytes; ++i) p[i] = uint8_t(byte(rng));
    if (scale_min) {
      const uint16_t d[2] = {scale(false), scale(false)};
      std::memcpy(p + (type == sllm::TensorType::Q2_K ? block_bytes - 4 : 0), d, 4);
    } else {
      const uint16_t d = scale(true);
      std::memcpy(p + block_bytes - 2, &d, 2);
    }
  }
}

float ref_dot_k(sllm::TensorType type, const uint8_t* w, const sllm::BlockQ8_K* x, size_t n) {
  switch (type) {
    case sllm::TensorType::Q2_K:
      return sllm::ref::dot_q2_k(reinterpret_cast<const sllm::BlockQ2_K*>(w), x, n);
    case sllm::TensorType::Q3_K:
      return sllm::ref::dot_q3_k(reinterpret_cast<const sllm::BlockQ3_K*>(w), x, n);
    case sllm::TensorType::Q4_K:
      return sllm::ref::dot_q4_k(reinterpret_cast<const sllm::BlockQ4_K*>(w), x, n);
    case sllm::TensorType::Q5_K:
      return sllm::ref::dot_q5_k(reinterpret_cast<const sllm::BlockQ5_K*>(w), x, n);
    default:
      REQUIRE(type == sllm::TensorType::Q6_K);
      return sllm::ref::dot_q6_k(reinterpret_cast<const sllm::BlockQ6_K*>(w), x, n);
  }
}

GuardedBuffer::GuardedBuffer(size_t size) : size_(size) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  map_bytes_ = (size + page - 1) / page * page + page;
  map_ = static_cast<uint8_t*>(
      mmap(nullptr, map_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  REQUIRE(map_ != MAP_FAILED);
  REQUIRE(mprotect(map_ + map_bytes_ - page, page, PROT_NONE) == 0);
  data_ = map_ + map_bytes_ - page - size;
}

GuardedBuffer::~GuardedBuffer() {
  munmap(map_, map_bytes_);
}

std::string fixture(const std::string& relative) {
  const std::string path = std::string(SLLM_FIXTURES_DIR) + "/" + relative;
  if (exists(path)) return path;
  // The freely licensed fixtures are also copied here, so that their tests run on any clone.
  const std::string copy = std::string(SLLM_TEST_DATA_DIR) + "/fixtures/" + relative;
  if (exists(copy)) return copy;
  const char* require = std::getenv("SLLM_REQUIRE_FIXTURES");
  if (require != nullptr && std::string(require) == "1") {
    FAIL("fixture missing (SLLM_REQUIRE_FIXTURES=1): " << path);
  }
  std::fprintf(stderr, "SKIPPED: fixture %s is absent (no ../shared/fixtures)\n", path.c_str());
  return "";
}

std::string test_data(const std::string& relative) {
  return std::string(SLLM_TEST_DATA_DIR) + "/" + relative;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open " << path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<int32_t> parse_ids(const std::string& line) {
  std::vector<int32_t> ids;
  std::istringstream in(line);
  int64_t id;
  while (in >> id) ids.push_back(int32_t(id));
  return ids;
}

static std::string ids_string(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += " " + std::to_string(id);
  return s;
}

VocabVectors read_vocab_vectors(const std::string& inp_path, const std::string& out_path) {
  VocabVectors v;
  const std::string inp = read_file(inp_path);
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (size_t pos = 0; pos < inp.size();) {
    size_t end = inp.find(sep, pos);
    if (end == std::string::npos) end = inp.size();
    v.texts.push_back(inp.substr(pos, end - pos));
    pos = end + sep.size();
  }
  std::istringstream out(read_file(out_path));
  std::string line;
  while (std::getline(out, line)) v.ids.push_back(parse_ids(line));
  REQUIRE(v.texts.size() == v.ids.size());
  REQUIRE(v.texts.size() >= 40);
  return v;
}

size_t check_vocab_vectors(const std::string& name, const sllm::Tokenizer& tok,
                           const VocabVectors& v, bool lossless) {
  size_t passed = 0, round_trips = 0;
  for (size_t i = 0; i < v.texts.size(); ++i) {
    const std::vector<int32_t> ids = tok.encode(v.texts[i], false, false);
    if (ids == v.ids[i]) {
      ++passed;
    } else {
      MESSAGE(name << " vector " << i << " '" << v.texts[i] << "'\n  expected"
                   << ids_string(v.ids[i]) << "\n  got     " << ids_string(ids));
    }
    if (!lossless) continue;
    const std::string text = tok.decode(v.ids[i]);
    if (text == v.texts[i]) {
      ++round_trips;
    } else {
      MESSAGE(name << " vector " << i << " decodes to '" << text << "', not '" << v.texts[i]
                   << "'");
    }
  }
  MESSAGE(name << ": " << passed << "/" << v.texts.size() << " encoded exactly"
               << (lossless ? ", " + std::to_string(round_trips) + "/" +
                                  std::to_string(v.texts.size()) + " decoded back"
                            : std::string()));
  CHECK(passed == v.texts.size());
  if (lossless) CHECK(round_trips == v.texts.size());
  return passed;
}

TempDir::TempDir() {
  char name[] = "/tmp/sllm_test.XXXXXX";
  REQUIRE(::mkdtemp(name) != nullptr);
  path_ = name;
}

namespace {

// Names in folder dir, sorted, without "." and "..".
std::vector<std::string> folder_entries(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = ::opendir(dir.c_str());
  while (const dirent* e = d ? ::readdir(d) : nullptr) {
    if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") {
      names.push_back(e->d_name);
    }
  }
  if (d) ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

void remove_all(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    for (const std::string& f : folder_entries(path)) remove_all(path + "/" + f);
    ::rmdir(path.c_str());
  } else {
    std::remove(path.c_str());
  }
}

TempDir::~TempDir() {
  remove_all(path_);
}

std::vector<std::string> TempDir::files() const {
  return folder_entries(path_);
}

}  // namespace sllm_test
