#include "test_support.h"

#include <cstdio>
#include <sys/stat.h>

namespace sllm_test {

static bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
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

}  // namespace sllm_test
