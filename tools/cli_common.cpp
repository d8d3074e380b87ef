// Helpers shared by the subcommands (declared in cli.h).
#include <cstdio>
#include <string>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

std::string human_bytes(uint64_t n) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
  double v = double(n);
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
  return buf;
}

bool kv_type_option(ArgReader& args, TensorType& type) {
  std::string name;
  if (!args.option(nullptr, "--kv-type", name)) return false;
  if (name == "f16") {
    type = TensorType::F16;
  } else if (name == "q8_0" || name == "q8" || name == "i8" || name == "int8") {
    type = TensorType::I8;
  } else if (name == "f32") {
    type = TensorType::F32;
  } else {
    throw UsageError("--kv-type: unknown type '" + name +
                     "'; use f16, q8_0 (int8; also q8, i8, int8) or f32");
  }
  return true;
}

const char* kv_type_name(TensorType type) {
  return type == TensorType::I8 ? "q8_0" : type == TensorType::F32 ? "f32" : "f16";
}

void ProgressBar::update(uint64_t done, uint64_t total) {
  const auto now = std::chrono::steady_clock::now();
  if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
  last_ = now;
  const int width = 40;
  const int filled = total ? int(double(done) / double(total) * width) : width;
  std::fprintf(stderr, "\r[%s%s] %3d%% %s / %s", std::string(size_t(filled), '#').c_str(),
               std::string(size_t(width - filled), ' ').c_str(),
               total ? int(100.0 * double(done) / double(total)) : 100, human_bytes(done).c_str(),
               human_bytes(total).c_str());
  if (done >= total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

}  // namespace cli
}  // namespace sllm
