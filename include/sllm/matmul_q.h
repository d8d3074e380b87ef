// Quantized matmul, part of the kernels layer: Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K
// weight matrices, read in place, times activation rows quantized to int8 codes. Products are int8
// dot products accumulated in int32 per block (VNNI vpdpbusd where the CPU has it), then scaled in
// f32.
#include <algorithm>
#include <cstring>

namespace sllm {
namespace detail {

// How activation rows are quantized for a weight type: the values that share one scale.
enum class ActivationFormat {
  kQ8_0,  // per 32 values, the scale rounded to f16 (ref::quantize_activations_q8_0): Q8_0, Q4_0,
          // Q5_0
  kQ8_K,  // per 256 values, an f32 scale (ref::quantize_row_q8_k): K-quant weights
};
// Whether the quantized matmul reads weights of this type (Q8_0, Q4_0, Q5_0 and the K-quants
// Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).
bool matmul_q_reads(TensorType weight_type);
// Error for a weight type that the quantized matmul does not read.
ActivationFormat activation_format(TensorType weight_type);

// Activation rows quantized with the values and scales of the reference quantizer of their
// format (ref::quantize_activations_q8_0, ref::quantize_row_q8_k: ggml's x86 rounding), laid out
// for the kernels rather than as blocks: each row's codes are contiguous, its scales are f32, and
// codes, scales and sums are padded with zeros so that the kernels can read whole vectors past the
// last block.
struct QuantizedActivations {
  ActivationFormat format = ActivationFormat::kQ8_0;
  size_t n = 0;                // rows (tokens)
  size_t cols = 0;             // values per row, a multiple of block()
  size_t q_stride = 0;         // bytes from one row's codes to the next (cols rounded up to 512)
  size_t scale_stride = 0;     // entries from one row's scales to the next (a multiple of 16)
  size_t sum_stride = 0;       // entries from one row's sums to the next (a multiple of 16)
  AlignedBuffer<int8_t> q;     // codes, row t at q + t * q_stride
  AlignedBuffer<float> scale;  // per block, f32
  AlignedBuffer<int32_t> sum;  // per 16 codes, their sum

  size_t block() const { return format == ActivationFormat::kQ8_0 ? kQuantBlock : kSuperBlock; }
  const int8_t* codes(size_t t) const { return q.data() + t * q_stride; }
  const float* scales(size_t t) const { return scale.data() + t * scale_stride; }
  const int32_t* sums(size_t t) const { return sum.data() + t * sum_stride; }
  // Sizes the buffers for n rows of cols values (Error unless cols is a positive multiple of
  // the format's block).
  void resize(size_t n_rows, size_t n_cols, ActivationFormat row_format);
};

// Quantizes n rows of cols floats (row t at x + t * x_stride) into out in the given format,
// resizing it; large batches are shared among n_threads OpenMP threads (0: OpenMP's default).
void quantize_activations(const float* x, size_t n, size_t cols, size_t x_stride,
                          QuantizedActivations& out, int n_threads = 0,
                          ActivationFormat format = ActivationFormat::kQ8_0);

// y[t * y_stride + r] = sum_c w[r][c] * x[t][c] for the x.n activation rows t and the weight rows
// r in [row_begin, row_end), so that a caller can share the rows among its threads. w is of type
// Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K, read in place (cols a whole number of blocks,
// row_bytes at least the blocks of a row), and x quantized in activation_format(w.type). One
// activation row streams each weight row once (decode); many pack tiles of weights into a
// per-thread buffer and reuse each for several tokens (prefill). Error when the shapes, the type or
// the format do not fit.
void matmul_q_rows(const MatrixView& w, const QuantizedActivations& x, float* y, size_t y_stride,
                   size_t row_begin, size_t row_end);
// The same over all rows, shared among n_threads OpenMP threads (0: OpenMP's default).
void matmul_q(const MatrixView& w, const QuantizedActivations& x, float* y, size_t y_stride,
              int n_threads);
// matmul_q of several matrices that read the same activations (a layer's Q, K and V, or its gate
// and up), their rows side by side in each output row: part i's row r lands in column r plus the
// rows of the parts before it. All rows are shared among the threads in one parallel region, so
// that the threads wait for each other once, not once per matrix.
void matmul_q_parts(const MatrixView* parts, size_t n_parts, const QuantizedActivations& x,
                    float* y, size_t y_stride, int n_threads);

// Up to this many activation rows, every thread of matmul_q_parts_f32 quantizes them for itself,
// a few microseconds (a decode step of 1-4 sequences), where one thread quantizing them for all
// kept the others waiting and then made them read what another core had just written: 4-8% of a
// 4-sequence step of tinyllama.
constexpr size_t kThreadQuantizedRows = 4;
// matmul_q_parts of n float activation rows (row t at x + t * x_stride), quantized here in the
// parts' activation format (Error unless all parts need the same one).
void matmul_q_parts_f32(const MatrixView* parts, size_t n_parts, const float* x, size_t n,
                        size_t x_stride, float* y, size_t y_stride, int n_threads);

}  // namespace detail
}  // namespace sllm
