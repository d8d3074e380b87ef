// Kernels layer: SIMD code written once with Highway and dispatched at run time to the best
// target the CPU supports. Each kernel has a scalar reference (namespace sllm::ref) that the
// tests compare it with on every target.
#include <algorithm>
#include <cmath>

namespace sllm {

// Which elements of a head the rotary embedding rotates together. GGUF llama weights pair
// (2i, 2i+1) (llama.cpp's converter permutes Q and K rows for it); NEOX-style models (qwen2,
// phi3, gemma...) keep Hugging Face's order, which pairs (i, i + rope_dim / 2).
enum class RopeStyle { kInterleaved, kNeox };

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
// blocks[j / block_tokens] + offset + (j % block_tokens) * token_stride. An I8 row is an f32
// scale (unaligned) followed by head_dim int8 elements; element i is scale * int8[i].
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
// dst[i] = src[i] widened to f32 (src of type F32, F16, BF16 or a quantized type that
// dequantize_row reads), e.g. an embedding row.
void row_to_f32(TensorType type, const uint8_t* src, size_t n, float* dst);
// out = x / sqrt(mean(x^2) + eps) * weight (out may alias x).
void rmsnorm(const float* x, const float* weight, size_t n, float eps, float* out);
// out = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, the LayerNorm of GPT-2 (out may
// alias x).
void layernorm(const float* x, const float* weight, const float* bias, size_t n, float eps,
               float* out);
// y[i] += x[i]: bias rows and residual connections.
void add(float* y, const float* x, size_t n);
// Rotary embedding in place of the first rope_dim elements of each of n_heads heads. cos and
// sin are rope_table()'s rows for the same style; element j becomes
// x[j] * cos[j] + x[partner(j)] * sin[j], where partner pairs (2i, 2i+1) for kInterleaved and
// (i, i + rope_dim / 2) for kNeox.
void rope(float* x, size_t n_heads, size_t head_dim, size_t rope_dim, const float* cos,
          const float* sin, RopeStyle style);
// Rotation angles of position pos: theta_i = pos * base^(-2i/rope_dim) / freq_factors[i]
// (freq_factors: Llama 3.1's rope_freqs, or null for none), written for the pair j, k of
// theta_i (j < k) as cos[j] = cos[k] = cos theta_i, sin[j] = -sin theta_i, sin[k] = sin theta_i.
void rope_table(size_t pos, size_t rope_dim, float base, const float* freq_factors, RopeStyle style,
                float* cos, float* sin);
// x = softmax(x), in place.
void softmax(float* x, size_t n);
// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (out may alias gate or up).
void swiglu(const float* gate, const float* up, size_t n, float* out);
// out = gelu(x) with the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
// as GPT-2, Gemma and BERT's GGUF files run it, evaluated as llama.cpp does: at x rounded to f16,
// the result rounded to f16 (gelu_f16_table), 0 at or below -10 and x at or above 10. Matching
// its rounding matters where int8 quantization follows (the input of Q8_0 ffn_down): a value
// off by an f16 ulp can move to the next int8 code, and such steps add up to 1e-3 of the
// output (out may alias x).
void gelu(const float* x, size_t n, float* out);
// The f16-rounded gelu of every f16 value, by its bits (computed once, in f32 as llama.cpp).
const float* gelu_f16_table();
// out = gelu(gate) * up (out may alias gate or up).
void geglu(const float* gate, const float* up, size_t n, float* out);
// n_q query heads that share one KV head (grouped-query attention), over its cached tokens
// [begin, end) of type F32, F16 or I8: out_h = softmax(scale * K q_h) V for the n_q rows q_h of
// q and out_h of out, each head_dim floats. keys and values have the same blocks of tokens.
// begin > 0 leaves out the tokens before a sliding window. One pass over chunks of tokens, each
// key and value widened once for all n_q heads, with an online softmax (a running maximum
// rescales the sums), so no buffer of context length is needed.
void attention(const float* q, size_t n_q, size_t head_dim, const PagedRows& keys,
               const PagedRows& values, size_t begin, size_t end, float scale, float* out);
// The same for one query head.
inline void attention(const float* q, size_t head_dim, const PagedRows& keys,
                      const PagedRows& values, size_t begin, size_t end, float scale, float* out) {
  attention(q, 1, head_dim, keys, values, begin, end, scale, out);
}

}  // namespace detail

// Scalar references of the kernels: plain loops, double accumulators, for the tests.
namespace ref {
float dot_f32(const float* a, const float* b, size_t n);
float element_to_f32(TensorType type, const uint8_t* row, size_t i);
void matmul(const detail::MatrixView& w, const float* x, size_t n, size_t x_stride, float* y,
            size_t y_stride);
void rmsnorm(const float* x, const float* weight, size_t n, float eps, float* out);
void layernorm(const float* x, const float* weight, const float* bias, size_t n, float eps,
               float* out);
void add(float* y, const float* x, size_t n);
// Rotates with angles computed here from pos and base (independent of detail::rope_table).
void rope(float* x, size_t n_heads, size_t head_dim, size_t rope_dim, size_t pos, float base,
          const float* freq_factors, RopeStyle style);
void softmax(float* x, size_t n);
void swiglu(const float* gate, const float* up, size_t n, float* out);
// GELU's tanh approximation in double precision.
double gelu(double x);
// gelu(double) of x rounded to f16, rounded to f16, with detail::gelu's limits at +-10 (no
// table: the roundings by f32_to_fp16).
void gelu(const float* x, size_t n, float* out);
void geglu(const float* gate, const float* up, size_t n, float* out);
void attention(const float* q, size_t head_dim, const detail::PagedRows& keys,
               const detail::PagedRows& values, size_t begin, size_t end, float scale, float* out);
}  // namespace ref
}  // namespace sllm
