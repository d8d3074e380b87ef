// `sllm info FILE`: what a GGUF file holds and what its weights cost.
#include <algorithm>
#include <cstdio>
#include <string>

#include "cli.h"
#include "sllm.h"

namespace sllm {
namespace cli {

namespace {

const char kInfoUsage[] =
    "usage: sllm info [options] FILE\n"
    "\n"
    "Shows a GGUF file: version, architecture, alignment, every metadata key (long arrays\n"
    "and strings cut short), a table of tensors (name, type, shape, bytes), the parameter\n"
    "count, the file size and the bytes per weight.\n"
    "\n"
    "options:\n"
    "  -a, --array-items N   array elements shown per metadata key (default 6)\n"
    "  -h, --help            show this help\n";

// "292.5 K" for a parameter count.
std::string human_count(uint64_t n) {
  const char* units[] = {"", " K", " M", " B", " T"};
  double v = double(n);
  size_t u = 0;
  while (v >= 1000 && u + 1 < sizeof(units) / sizeof(units[0])) {
    v /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f%s" : "%.1f%s", v, units[u]);
  return buf;
}

// "UINT32", or "STRING[512]" for an array.
std::string value_type(const GgufValue& v) {
  if (v.type() != GgufType::ARRAY) return gguf_type_name(v.type());
  return std::string(gguf_type_name(v.array_type())) + "[" + std::to_string(v.as_array().size()) +
         "]";
}

void print_info(const Gguf& g, size_t array_items) {
  const GgufValue* arch = g.find("general.architecture");
  std::printf("file          %s\n", g.path().c_str());
  std::printf("file size     %s (%llu bytes)\n", human_bytes(g.file_size()).c_str(),
              (unsigned long long)g.file_size());
  std::printf("GGUF version  %u\n", g.version());
  std::printf("architecture  %s\n", arch != nullptr && arch->type() == GgufType::STRING
                                        ? arch->as_string().c_str()
                                        : "(none)");
  std::printf("alignment     %u\n", g.alignment());

  std::printf("\nmetadata: %zu keys\n", g.metadata().size());
  size_t key_width = 0, type_width = 0;
  for (const auto& kv : g.metadata()) {
    key_width = std::max(key_width, kv.first.size());
    type_width = std::max(type_width, value_type(kv.second).size());
  }
  for (const auto& kv : g.metadata()) {
    std::printf("  %-*s  %-*s  %s\n", int(key_width), kv.first.c_str(), int(type_width),
                value_type(kv.second).c_str(), kv.second.to_string(array_items).c_str());
  }

  std::printf("\ntensors: %zu\n", g.tensors().size());
  size_t name_width = 4, type_width_t = 4, shape_width = 5;
  uint64_t params = 0, weight_bytes = 0;
  for (const TensorInfo& t : g.tensors()) {
    name_width = std::max(name_width, t.name.size());
    type_width_t = std::max(type_width_t, std::string(tensor_type_name(t.type)).size());
    shape_width = std::max(shape_width, t.shape_string().size());
    params += t.n_elements();
    weight_bytes += t.n_bytes;
  }
  if (!g.tensors().empty()) {
    std::printf("  %-*s  %-*s  %-*s  %12s\n", int(name_width), "name", int(type_width_t), "type",
                int(shape_width), "shape", "bytes");
    for (const TensorInfo& t : g.tensors()) {
      std::printf("  %-*s  %-*s  %-*s  %12llu\n", int(name_width), t.name.c_str(),
                  int(type_width_t), tensor_type_name(t.type), int(shape_width),
                  t.shape_string().c_str(), (unsigned long long)t.n_bytes);
    }
  }

  std::printf("\nparameters    %s (%llu)\n", human_count(params).c_str(),
              (unsigned long long)params);
  std::printf("tensor data   %s (%llu bytes)\n", human_bytes(weight_bytes).c_str(),
              (unsigned long long)weight_bytes);
  if (params > 0) {
    const double bytes_per_weight = double(weight_bytes) / double(params);
    std::printf("per weight    %.4f bytes (%.2f bits)\n", bytes_per_weight, 8 * bytes_per_weight);
  }
}

}  // namespace

int cmd_info(int argc, char** argv) {
  ArgReader args(argc, argv);
  std::string path;
  size_t array_items = 6;
  while (!args.done()) {
    if (args.flag("-h", "--help")) {
      std::fputs(kInfoUsage, stdout);
      return 0;
    } else if (args.option("-a", "--array-items", array_items)) {
    } else if (path.empty() && args.positional(path)) {
    } else {
      args.reject();
    }
  }
  if (path.empty()) throw UsageError("missing FILE");
  print_info(Gguf::open(path), array_items);
  return 0;
}

}  // namespace cli
}  // namespace sllm
