// Quantized matmul, part of the kernels layer: Q8_0 and Q4_0 weight matrices, read in place,
// times activation rows quantized to int8 per 32-value block. Products are int8 dot products
// accumulated in int32 per block (VNNI vpdpbusd where the CPU has it), then scaled in f32.
#include <algorithm>
#include <cstring>

namespace sllm {
namespace detail {

// Activation rows quantized with the values and scales of ggml's x86 activation quantizer
// (ref::quantize_activations_q8_0), laid out for the kernels rather than as Q8_0 blocks: each row's
// codes are contiguous, its scales are f32, and both are padded with zeros so that the kernels
// can read whole vectors past the last block.
struct QuantizedActivations {
  size_t n = 0;             // rows (tokens)
  size_t cols = 0;          // values per row, a multiple of 32
  size_t q_stride = 0;      // bytes from one row's codes to the next (cols rounded up to 128)
  size_t block_stride = 0;  // entries from one row's scales or sums to the next (a multiple of 16)
  AlignedBuffer<int8_t> q;  // codes, row t at q + t * q_stride
  AlignedBuffer<float> scale;  // per block: the f16 scale d, widened to f32
  AlignedBuffer<int32_t> sum;  // per block: the sum of its 32 codes

  const int8_t* codes(size_t t) const { return q.data() + t * q_stride; }
  const float* scales(size_t t) const { return scale.data() + t * block_stride; }
  const int32_t* sums(size_t t) const { return sum.data() + t * block_stride; }
  // Sizes the buffers for n rows of cols values (Error unless cols is a multiple of 32).
  void resize(size_t n_rows, size_t n_cols);
};

// Quantizes n rows of cols floats (row t at x + t * x_stride) into out, resizing it; large
// batches are shared among n_threads OpenMP threads (0: OpenMP's default).
void quantize_activations(const float* x, size_t n, size_t cols, size_t x_stride,
                          QuantizedActivations& out, int n_threads = 0);

// y[t * y_stride + r] = sum_c w[r][c] * x[t][c] for the x.n activation rows t and the weight rows
// r in [row_begin, row_end), so that a caller can share the rows among its threads. w is of type
// Q8_0 or Q4_0, read in place (cols a multiple of 32, row_bytes at least the blocks of a row). One
// activation row streams each weight row once (decode); many pack tiles of weights into a
// per-thread buffer and reuse each for several tokens (prefill). Error when the shapes or the
// type do not fit.
void matmul_q_rows(const MatrixView& w, const QuantizedActivations& x, float* y, size_t y_stride,
                   size_t row_begin, size_t row_end);
// The same over all rows, shared among n_threads OpenMP threads (0: OpenMP's default).
void matmul_q(const MatrixView& w, const QuantizedActivations& x, float* y, size_t y_stride,
              int n_threads);

}  // namespace detail
}  // namespace sllm
