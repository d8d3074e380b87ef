// Kernels layer: SIMD code written once with Highway and dispatched at run time to the best
// target the CPU supports. Each kernel has a scalar reference (namespace sllm::ref) that the
// tests compare it with on every target.
#include <algorithm>
#include <cmath>

namespace sllm {
namespace detail {

// The SIMD targets that sllm was compiled for and this CPU runs (Highway target bits).
std::vector<int64_t> simd_targets();
const char* simd_target_name(int64_t target);
// Restricts run-time dispatch to one target, for tests; 0 restores the best one.
void force_simd_target(int64_t target);

// A weight matrix read in place (usually from the memory map): `rows` rows of `cols` elements
// of type F32, F16 or BF16, row r starting at data + r * row_bytes.
struct MatrixView {
  TensorType type = TensorType::F32;
  const uint8_t* data = nullptr;
  size_t rows = 0;
  size_t cols = 0;
  size_t row_bytes = 0;
};

// Keys or values of one KV head of one layer, kept in fixed-size blocks of tokens (the paged
// KV cache): token j's row of head_dim elements (F32 or F16) starts at
// blocks[j / block_tokens] + offset + (j % block_tokens) * token_stride.
struct PagedRows {
  const uint8_t* const* blocks = nullptr;
  size_t block_tokens = 0;
  size_t offset = 0;
  size_t token_stride = 0;
  TensorType type = TensorType::F32;
  const uint8_t* row(size_t j) const {
    return blocks[j / block_tokens] + offset + (j % block_tokens) * token_stride;
  }
};

float dot_f32(const float* a, const float* b, size_t n);

// y[t * y_stride + r] = sum_c w[r][c] * x[t * x_stride + c] for the n activation rows t and
// every weight row r: decode is n = 1, prefill n = batch. Parallel over weight rows with
// n_threads OpenMP threads.
void matmul(const MatrixView& w, const float* x, size_t n, size_t x_stride, float* y,
            size_t y_stride, int n_threads);
// dst[i] = src[i] widened to f32 (src of type F32, F16 or BF16), e.g. an embedding row.
void row_to_f32(TensorType type, const uint8_t* src, size_t n, float* dst);
// out = x / sqrt(mean(x^2) + eps) * weight (out may alias x).
void rmsnorm(const float* x, const float* weight, size_t n, float eps, float* out);
// Rotary embedding in place of the first rope_dim elements of each of n_heads heads, in the
// pair order of GGUF llama weights: pairs (2i, 2i+1). cos and sin are rope_table()'s rows.
void rope(float* x, size_t n_heads, size_t head_dim, size_t rope_dim, const float* cos,
          const float* sin);
// Rotation angles of position pos: theta_i = pos * base^(-2i/rope_dim) / freq_factors[i]
// (freq_factors: Llama 3.1's rope_freqs, or null for none), written as
// cos[2i] = cos[2i+1] = cos theta_i, sin[2i] = -sin theta_i, sin[2i+1] = sin theta_i.
void rope_table(size_t pos, size_t rope_dim, float base, const float* freq_factors, float* cos,
                float* sin);
// x = softmax(x), in place.
void softmax(float* x, size_t n);
// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (out may alias gate or up).
void swiglu(const float* gate, const float* up, size_t n, float* out);
// One query head over the first n_ctx cached tokens: out = softmax(scale * K q) V.
// scores is scratch for n_ctx floats.
void attention(const float* q, size_t head_dim, const PagedRows& keys, const PagedRows& values,
               size_t n_ctx, float scale, float* scores, float* out);

}  // namespace detail

// Scalar references of the kernels: plain loops, double accumulators, for the tests.
namespace ref {
float dot_f32(const float* a, const float* b, size_t n);
float element_to_f32(TensorType type, const uint8_t* row, size_t i);
void matmul(const detail::MatrixView& w, const float* x, size_t n, size_t x_stride, float* y,
            size_t y_stride);
void rmsnorm(const float* x, const float* weight, size_t n, float eps, float* out);
// Rotates with angles computed here from pos and base (independent of detail::rope_table).
void rope(float* x, size_t n_heads, size_t head_dim, size_t rope_dim, size_t pos, float base,
          const float* freq_factors);
void softmax(float* x, size_t n);
void swiglu(const float* gate, const float* up, size_t n, float* out);
void attention(const float* q, size_t head_dim, const detail::PagedRows& keys,
               const detail::PagedRows& values, size_t n_ctx, float scale, float* out);
}  // namespace ref
}  // namespace sllm
