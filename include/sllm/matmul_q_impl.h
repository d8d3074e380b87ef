#include <omp.h>

namespace sllm {
namespace detail {

HWY_EXPORT(QuantizeActivationRows);
HWY_EXPORT(MatmulQRows);

inline size_t round_up(size_t n, size_t multiple) {
  return (n + multiple - 1) / multiple * multiple;
}

// The K-quants that the matmul reads, whose activations are quantized per 256 values.
inline bool is_k_quant(TensorType weight_type) {
  return weight_type == TensorType::Q2_K || weight_type == TensorType::Q3_K ||
         weight_type == TensorType::Q4_K || weight_type == TensorType::Q5_K ||
         weight_type == TensorType::Q6_K;
}

bool matmul_q_reads(TensorType weight_type) {
  return weight_type == TensorType::Q8_0 || weight_type == TensorType::Q4_0 ||
         weight_type == TensorType::Q5_0 || is_k_quant(weight_type);
}

ActivationFormat activation_format(TensorType weight_type) {
  if (!matmul_q_reads(weight_type)) {
    fail(std::string("quantized matmul: weight type ") + tensor_type_name(weight_type) +
         " is not Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K");
  }
  return is_k_quant(weight_type) ? ActivationFormat::kQ8_K : ActivationFormat::kQ8_0;
}

void QuantizedActivations::resize(size_t n_rows, size_t n_cols, ActivationFormat row_format) {
  format = row_format;
  if (n_cols == 0 || n_cols % block() != 0) {
    fail("cannot quantize activation rows of " + std::to_string(n_cols) +
         " values: the length must be a positive multiple of " + std::to_string(block()));
  }
  n = n_rows;
  cols = n_cols;
  q_stride = round_up(n_cols, 512);
  scale_stride = round_up(n_cols / block(), 16);
  sum_stride = round_up(n_cols / 16, 16);
  const size_t codes = checked_mul(n_rows, q_stride, "activation buffer");
  const size_t scales = checked_mul(n_rows, scale_stride, "activation buffer");
  const size_t sums = checked_mul(n_rows, sum_stride, "activation buffer");
  if (q.size() < codes) q.resize(codes);
  if (scale.size() < scales) scale.resize(scales);
  if (sum.size() < sums) sum.resize(sums);
}

// OpenMP's thread count for a call: n_threads if positive, else OpenMP's default.
inline int omp_threads(int n_threads) {
  return n_threads > 0 ? n_threads : omp_get_max_threads();
}

void quantize_activations(const float* x, size_t n, size_t cols, size_t x_stride,
                          QuantizedActivations& out, int n_threads, ActivationFormat format) {
  out.resize(n, cols, format);
  const auto kernel = HWY_DYNAMIC_DISPATCH(QuantizeActivationRows);
  // Splitting pays only when each thread gets a few rows of real work.
  const int threads = n * cols >= 65536 ? std::min<int>(omp_threads(n_threads), int(n)) : 1;
  if (threads == 1) {
    kernel(x, x_stride, 0, n, &out);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const size_t parts = size_t(omp_get_num_threads()), part = size_t(omp_get_thread_num());
    kernel(x, x_stride, n * part / parts, n * (part + 1) / parts, &out);
  }
}

namespace {
// Error unless w's rows [row_begin, row_end) can be multiplied by activation rows of cols values
// quantized in x_format.
void check_matmul_q(const MatrixView& w, size_t cols, ActivationFormat x_format, size_t row_begin,
                    size_t row_end) {
  const ActivationFormat format = activation_format(w.type);
  const TensorTypeInfo& info = *tensor_type_info(uint32_t(w.type));
  if (w.cols == 0 || w.cols % info.block_elems != 0) {
    fail("quantized matmul: rows of " + std::to_string(w.cols) +
         " values are not a whole number "
         "of " +
         std::to_string(info.block_elems) + "-value " + info.name + " blocks");
  }
  if (cols != w.cols) {
    fail("quantized matmul: activation rows have " + std::to_string(cols) +
         " values but weight rows have " + std::to_string(w.cols));
  }
  if (x_format != format) {
    fail(std::string("quantized matmul: ") + info.name + " weights need activations quantized " +
         (format == ActivationFormat::kQ8_0 ? "per 32 values (Q8_0)" : "per 256 values (Q8_K)"));
  }
  if (row_begin > row_end || row_end > w.rows) {
    fail("quantized matmul: row range [" + std::to_string(row_begin) + ", " +
         std::to_string(row_end) + ") is outside the " + std::to_string(w.rows) + " rows");
  }
  const size_t bytes = w.cols / info.block_elems * info.block_bytes;
  if (w.row_bytes < bytes) {
    fail("quantized matmul: rows of " + std::to_string(w.cols) + " values need " +
         std::to_string(bytes) + " bytes, but rows are " + std::to_string(w.row_bytes) +
         " bytes apart");
  }
}

// Multiplies all rows of the parts, shared among up to n_threads OpenMP threads; each thread
// first gets the quantized activations it reads from activations(). The parts have been checked.
template <class Activations>
void run_parts(const MatrixView* parts, size_t n_parts, int n_threads, float* y, size_t y_stride,
               Activations activations) {
  size_t rows = 0;
  for (size_t i = 0; i < n_parts; ++i) rows += parts[i].rows;
  if (rows == 0) return;
  const auto kernel = HWY_DYNAMIC_DISPATCH(MatmulQRows);
  const auto run = [&](const QuantizedActivations& x, size_t i, size_t begin, size_t end,
                       float* out) {
    const MatrixView& w = parts[i];
    kernel(w.type, w.data, w.cols, w.row_bytes, &x, out, y_stride, begin, end);
  };
  const int threads = std::min<int>(omp_threads(n_threads), int((rows + 31) / 32));
  if (threads == 1) {
    const QuantizedActivations& x = activations();
    for (size_t i = 0, offset = 0; i < n_parts; offset += parts[i].rows, ++i) {
      run(x, i, 0, parts[i].rows, y + offset);
    }
    return;
  }
  // Threads take chunks of rows (multiples of 32, a packed panel of the prefill kernel), about
  // four each, as they finish: a thread slowed down by another process on its core then holds
  // the others up for one chunk at most. Each chunk is a contiguous part of one matrix, which
  // the hardware prefetcher streams well.
  const size_t chunk = round_up(std::max<size_t>(1, rows / (4 * size_t(threads))), 32);
  size_t chunks = 0;
  for (size_t i = 0; i < n_parts; ++i) chunks += (parts[i].rows + chunk - 1) / chunk;
#pragma omp parallel num_threads(threads)
  {
    const QuantizedActivations& x = activations();
#pragma omp for schedule(dynamic, 1)
    for (size_t c = 0; c < chunks; ++c) {
      size_t i = 0, first = c, offset = 0;  // chunk c is chunk `first` of part i
      for (size_t n_chunks; first >= (n_chunks = (parts[i].rows + chunk - 1) / chunk); ++i) {
        first -= n_chunks;
        offset += parts[i].rows;
      }
      const size_t begin = first * chunk, end = std::min(parts[i].rows, begin + chunk);
      run(x, i, begin, end, y + offset);
    }
  }
}
}  // namespace

void matmul_q_rows(const MatrixView& w, const QuantizedActivations& x, float* y, size_t y_stride,
                   size_t row_begin, size_t row_end) {
  check_matmul_q(w, x.cols, x.format, row_begin, row_end);
  if (x.n == 0 || row_begin == row_end) return;
  HWY_DYNAMIC_DISPATCH(MatmulQRows)
  (w.type, w.data, w.cols, w.row_bytes, &x, y, y_stride, row_begin, row_end);
}

void matmul_q(const MatrixView& w, const QuantizedActivations& x, float* y, size_t y_stride,
              int n_threads) {
  matmul_q_parts(&w, 1, x, y, y_stride, n_threads);
}

void matmul_q_parts(const MatrixView* parts, size_t n_parts, const QuantizedActivations& x,
                    float* y, size_t y_stride, int n_threads) {
  for (size_t i = 0; i < n_parts; ++i) check_matmul_q(parts[i], x.cols, x.format, 0, parts[i].rows);
  if (x.n == 0) return;
  run_parts(parts, n_parts, n_threads, y, y_stride,
            [&x]() -> const QuantizedActivations& { return x; });
}

void matmul_q_parts_f32(const MatrixView* parts, size_t n_parts, const float* x, size_t n,
                        size_t x_stride, float* y, size_t y_stride, int n_threads) {
  if (n_parts == 0) return;
  const size_t cols = parts[0].cols;
  const ActivationFormat format = activation_format(parts[0].type);
  for (size_t i = 0; i < n_parts; ++i) check_matmul_q(parts[i], cols, format, 0, parts[i].rows);
  if (n == 0) return;
  // Per calling thread, so that decoding allocates nothing and sessions on other threads share
  // nothing: one buffer for each OpenMP thread of its team, which quantizes into its own. (Owned
  // here, not by the team's threads, which outlive the program's exit without freeing theirs.)
  thread_local std::vector<QuantizedActivations> per_caller;
  std::vector<QuantizedActivations>& quantized = per_caller;  // the team's threads use this one
  const size_t team = size_t(omp_threads(n_threads));
  if (quantized.size() < team) quantized.resize(team);
  if (n > kThreadQuantizedRows) {
    const QuantizedActivations& shared = quantized[0];
    quantize_activations(x, n, cols, x_stride, quantized[0], n_threads, format);
    run_parts(parts, n_parts, n_threads, y, y_stride,
              [&shared]() -> const QuantizedActivations& { return shared; });
    return;
  }
  run_parts(parts, n_parts, n_threads, y, y_stride, [&]() -> const QuantizedActivations& {
    QuantizedActivations& mine = quantized[size_t(omp_get_thread_num())];
    quantize_activations(x, n, cols, x_stride, mine, 1, format);
    return mine;
  });
}

}  // namespace detail
}  // namespace sllm
