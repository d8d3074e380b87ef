// The quantization error of quantized GGUF files against the unquantized file they came from,
// side by side (e.g. sllm's and llama-quantize's output of the same model):
//   quant_quality ORIGINAL.gguf A.gguf [B.gguf ...]
// Per kind of tensor (its name without the layer: attn_v.weight...) and type, the relative RMSE
// sqrt(sum (q - x)^2 / sum x^2) over those tensors in each file; the same per type; and the
// tensors whose types differ between the files.
#define SLLM_IMPLEMENTATION
#include "sllm.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {

// "blk.12.attn_v.weight" -> "attn_v.weight"
std::string kind_of(const std::string& name) {
  if (name.compare(0, 4, "blk.") != 0) return name;
  const size_t dot = name.find('.', 4);
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// Squared error and squared values, summed over tensors.
struct ErrorSum {
  double err = 0, sum = 0;
  int tensors = 0;
  void add(const ErrorSum& o) {
    err += o.err;
    sum += o.sum;
    tensors += o.tensors;
  }
  double relative_rmse() const { return sum > 0 ? std::sqrt(err / sum) : 0.0; }
};

ErrorSum tensor_error(const sllm::TensorInfo& x, const sllm::TensorInfo& q) {
  const uint64_t cols = x.ne[0], rows = x.n_rows();
  const uint64_t x_row = sllm::tensor_row_bytes(x.type, cols);
  const uint64_t q_row = sllm::tensor_row_bytes(q.type, cols);
  double err = 0, sum = 0;
  {  // an unsupported type throws here, not inside the parallel loop (where it would terminate)
    std::vector<float> row(cols);
    sllm::dequantize_row(x.type, x.data, row.data(), cols);
    sllm::dequantize_row(q.type, q.data, row.data(), cols);
  }
#pragma omp parallel reduction(+ : err, sum)
  {
    std::vector<float> a(cols), b(cols);
#pragma omp for schedule(dynamic, 16)
    for (uint64_t r = 0; r < rows; ++r) {
      sllm::dequantize_row(x.type, x.data + r * x_row, a.data(), cols);
      sllm::dequantize_row(q.type, q.data + r * q_row, b.data(), cols);
      for (uint64_t i = 0; i < cols; ++i) {
        err += double(b[i] - a[i]) * (b[i] - a[i]);
        sum += double(a[i]) * a[i];
      }
    }
  }
  return {err, sum, 1};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: quant_quality ORIGINAL.gguf QUANTIZED.gguf [MORE.gguf ...]\n");
    return 2;
  }
  try {
    const sllm::Gguf original = sllm::Gguf::open(argv[1]);
    std::vector<sllm::Gguf> files;
    for (int f = 2; f < argc; ++f) files.push_back(sllm::Gguf::open(argv[f]));
    const size_t n = files.size();

    // Rows keyed by (kind, type in the first file); per file: error and the types seen.
    struct Row {
      std::vector<ErrorSum> error;
      std::vector<std::string> types;
    };
    std::map<std::pair<std::string, std::string>, Row> rows;
    std::vector<std::map<std::string, ErrorSum>> per_type(n);
    std::vector<std::string> differing;
    for (const sllm::TensorInfo& x : original.tensors()) {
      std::vector<const sllm::TensorInfo*> q(n);
      for (size_t f = 0; f < n; ++f) {
        q[f] = &files[f].tensor(x.name);
        if (q[f]->n_elements() != x.n_elements() || q[f]->ne[0] != x.ne[0]) {
          sllm::detail::fail(files[f].path() + ": tensor " + x.name + " has another shape");
        }
      }
      Row& row = rows[{kind_of(x.name), sllm::tensor_type_name(q[0]->type)}];
      row.error.resize(n);
      row.types.resize(n);
      bool same = true;
      for (size_t f = 0; f < n; ++f) {
        const ErrorSum e = tensor_error(x, *q[f]);
        row.error[f].add(e);
        per_type[f][sllm::tensor_type_name(q[f]->type)].add(e);
        const std::string type = sllm::tensor_type_name(q[f]->type);
        if (row.types[f].find(type) == std::string::npos) {
          row.types[f] += (row.types[f].empty() ? "" : "+") + type;
        }
        same = same && q[f]->type == q[0]->type;
      }
      if (!same) differing.push_back(x.name);
    }

    std::printf("relative RMSE against %s\n", argv[1]);
    for (size_t f = 0; f < n; ++f) std::printf("  file %c: %s\n", char('A' + f), argv[2 + f]);
    std::printf("\n%-22s %8s", "tensor kind", "tensors");
    for (size_t f = 0; f < n; ++f) {
      std::printf("   %-9s %7s", (std::string(1, char('A' + f)) + ": type").c_str(), "RMSE");
    }
    std::printf("\n");
    for (const auto& [key, row] : rows) {
      std::printf("%-22s %8d", key.first.c_str(), row.error[0].tensors);
      for (size_t f = 0; f < n; ++f) {
        std::printf("   %-9s %.5f", row.types[f].c_str(), row.error[f].relative_rmse());
      }
      std::printf("\n");
    }
    std::printf("\nper type\n");
    for (size_t f = 0; f < n; ++f) {
      for (const auto& [type, e] : per_type[f]) {
        std::printf("  %c: %-5s %4d tensors  %.5f\n", char('A' + f), type.c_str(), e.tensors,
                    e.relative_rmse());
      }
    }
    std::printf("\ntensors stored in different types: %zu\n", differing.size());
    for (const std::string& name : differing) std::printf("  %s\n", name.c_str());
  } catch (const sllm::Error& e) {
    std::fprintf(stderr, "quant_quality: %s\n", e.what());
    return 1;
  }
  return 0;
}
