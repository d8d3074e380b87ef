// Helpers shared by the tests.
#pragma once
#include <cstdlib>
#include <string>

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

// Path of a file under ../shared/fixtures, else of its copy under tests/data/fixtures (the freely
// licensed ones), else "" with a SKIPPED message. CI sets SLLM_REQUIRE_FIXTURES=1 so that
// absence fails there instead of skipping.
std::string fixture(const std::string& relative);
// Path of a file under tests/data (always present).
std::string test_data(const std::string& relative);

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
