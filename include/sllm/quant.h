// Quant layer: the block formats of quantized GGUF tensors, exactly as ggml stores them, and
// scalar reference code for each (quantize, dequantize, dot product with a Q8_0 activation).
// The SIMD kernels (matmul_q) are tested against these.
namespace sllm {

// Elements per block of the Q8_0, Q4_0 and Q5_0 formats.
constexpr size_t kQuantBlock = 32;

// Q8_0: value i = qs[i] * d. 34 bytes.
struct BlockQ8_0 {
  uint16_t d;  // IEEE half scale
  int8_t qs[kQuantBlock];
};
// Q4_0: value i = (q_i - 8) * d, q_i a 4-bit code; byte j holds q_j in its low nibble and
// q_{j+16} in its high nibble. 18 bytes.
struct BlockQ4_0 {
  uint16_t d;  // IEEE half scale
  uint8_t qs[kQuantBlock / 2];
};
// Q5_0: value i = (q_i - 16) * d, q_i a 5-bit code; its low 4 bits are packed as Q4_0's codes,
// and its top bit is bit i of qh (a little-endian uint32). 22 bytes.
struct BlockQ5_0 {
  uint16_t d;  // IEEE half scale
  uint8_t qh[4];
  uint8_t qs[kQuantBlock / 2];
};
static_assert(sizeof(BlockQ8_0) == 34, "Q8_0 blocks are 34 bytes in GGUF");
static_assert(sizeof(BlockQ4_0) == 18, "Q4_0 blocks are 18 bytes in GGUF");
static_assert(sizeof(BlockQ5_0) == 22, "Q5_0 blocks are 22 bytes in GGUF");

// The 5-bit code of value i (0..31) of a Q5_0 block.
inline int q5_0_code(const BlockQ5_0& b, size_t i) {
  const int low = (b.qs[i % 16] >> (i / 16 * 4)) & 0x0f;
  return low | ((b.qh[i / 8] >> (i % 8)) & 1) << 4;
}

// Elements per super-block of the K-quant formats.
constexpr size_t kSuperBlock = 256;

// Q4_K: 8 sub-blocks of 32; value = d * scale_j * q - dmin * min_j, q a 4-bit code, scale_j and
// min_j 6-bit codes packed into `scales` (see unpack_q4_k_scales). Each 32-byte group of qs holds
// 64 values: sub-block 2i in the low nibbles, sub-block 2i + 1 in the high nibbles. 144 bytes.
struct BlockQ4_K {
  uint16_t d;     // IEEE half: scale of the sub-block scales
  uint16_t dmin;  // IEEE half: scale of the sub-block mins
  uint8_t scales[12];
  uint8_t qs[kSuperBlock / 2];
};
// Q6_K: 16 sub-blocks of 16; value = d * scales[j] * (q - 32), q a 6-bit code whose low 4 bits
// are in ql and high 2 bits in qh. Per half of 128 values, value l (0..31) of each quarter:
// quarter 0 = ql[l] low nibble, quarter 1 = ql[l + 32] low, quarter 2 = ql[l] high, quarter 3 =
// ql[l + 32] high; its high bits are bits 2k..2k+1 of qh[l] for quarter k. 210 bytes.
struct BlockQ6_K {
  uint8_t ql[kSuperBlock / 2];
  uint8_t qh[kSuperBlock / 4];
  int8_t scales[kSuperBlock / 16];
  uint16_t d;  // IEEE half
};
// Q2_K: 16 sub-blocks of 16; value = d * scale_j * q - dmin * min_j, q a 2-bit code (see
// q2_k_code), scale_j and min_j the low and high nibble of scales[j]. 84 bytes.
struct BlockQ2_K {
  uint8_t scales[kSuperBlock / 16];
  uint8_t qs[kSuperBlock / 4];
  uint16_t d;     // IEEE half: scale of the sub-block scales
  uint16_t dmin;  // IEEE half: scale of the sub-block mins
};
// Q3_K: 16 sub-blocks of 16; value = d * scale_j * (q - 4), q a 3-bit code whose low 2 bits are
// in qs and top bit in hmask (see q3_k_code), scale_j a 6-bit code minus 32 packed into `scales`
// (see q3_k_scale). 110 bytes.
struct BlockQ3_K {
  uint8_t hmask[kSuperBlock / 8];
  uint8_t qs[kSuperBlock / 4];
  uint8_t scales[12];
  uint16_t d;  // IEEE half
};
// Q5_K: Q4_K with 5-bit codes; the top bit of value l of sub-block j is bit j of qh[l]. 176 bytes.
struct BlockQ5_K {
  uint16_t d;     // IEEE half: scale of the sub-block scales
  uint16_t dmin;  // IEEE half: scale of the sub-block mins
  uint8_t scales[12];
  uint8_t qh[kSuperBlock / 8];
  uint8_t qs[kSuperBlock / 2];
};
// Q8_K: activations for the integer dot products with K-quant weights (ggml's layout): value i
// = qs[i] * d, and bsums[k] the sum of codes 16k..16k+15. 292 bytes.
struct BlockQ8_K {
  float d;
  int8_t qs[kSuperBlock];
  int16_t bsums[kSuperBlock / 16];
};
static_assert(sizeof(BlockQ2_K) == 84, "Q2_K blocks are 84 bytes in GGUF");
static_assert(sizeof(BlockQ3_K) == 110, "Q3_K blocks are 110 bytes in GGUF");
static_assert(sizeof(BlockQ4_K) == 144, "Q4_K blocks are 144 bytes in GGUF");
static_assert(sizeof(BlockQ5_K) == 176, "Q5_K blocks are 176 bytes in GGUF");
static_assert(sizeof(BlockQ6_K) == 210, "Q6_K blocks are 210 bytes in GGUF");
static_assert(sizeof(BlockQ8_K) == 292, "Q8_K blocks are 292 bytes in ggml");

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K block. Sub-blocks 0-3 keep them in the
// low 6 bits of scales[j] and scales[j + 4]; sub-blocks 4-7 keep their low 4 bits in the nibbles
// of scales[j + 4] and their top 2 bits in the top bits of scales[j - 4] and scales[j].
inline void unpack_q4_k_scales(const uint8_t* scales, int j, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = scales[j] & 63;
    *min = scales[j + 4] & 63;
  } else {
    *scale = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
    *min = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
  }
}

// The inverse: stores the 6-bit scale and min codes of the 8 sub-blocks (values 0..63).
inline void pack_q4_k_scales(const uint8_t* scale, const uint8_t* min, uint8_t* scales) {
  for (int j = 0; j < 4; ++j) {
    scales[j] = uint8_t((scale[j] & 63) | ((scale[j + 4] >> 4) << 6));
    scales[j + 4] = uint8_t((min[j] & 63) | ((min[j + 4] >> 4) << 6));
    scales[j + 8] = uint8_t((scale[j + 4] & 15) | ((min[j + 4] & 15) << 4));
  }
}

// The 4-bit code of value i (0..255) of a Q4_K block, and the low 4 bits of a Q5_K code: byte
// i / 64 * 32 + i % 32 of qs, low nibble for even sub-blocks i / 32, high for odd ones.
inline int k_nibble(const uint8_t* qs, size_t i) {
  return (qs[i / 64 * 32 + i % 32] >> (i / 32 % 2 * 4)) & 0x0f;
}
inline int q4_k_code(const BlockQ4_K& b, size_t i) {
  return k_nibble(b.qs, i);
}
// The 5-bit code of value i (0..255) of a Q5_K block (value = d * scale_j * code - dmin * min_j).
inline int q5_k_code(const BlockQ5_K& b, size_t i) {
  return k_nibble(b.qs, i) | ((b.qh[i % 32] >> (i / 32)) & 1) << 4;
}
// The 6-bit code of value i (0..255) of a Q6_K block (value = d * scales[i / 16] * (code - 32)).
inline int q6_k_code(const BlockQ6_K& b, size_t i) {
  const size_t half = i / 128, quarter = i % 128 / 32, l = i % 32;
  const int low = (b.ql[half * 64 + quarter % 2 * 32 + l] >> (quarter / 2 * 4)) & 0x0f;
  const int high = (b.qh[half * 32 + l] >> (2 * quarter)) & 3;
  return low | high << 4;
}

// The 2-bit code of value i (0..255) of a Q2_K block, and the low 2 bits of a Q3_K code: per half
// of 128 values, value l (0..31) of quarter k is bits 2k..2k+1 of qs[32 half + l].
inline int k_bit_pair(const uint8_t* qs, size_t i) {
  return (qs[i / 128 * 32 + i % 32] >> (i % 128 / 32 * 2)) & 3;
}
inline int q2_k_code(const BlockQ2_K& b, size_t i) {
  return k_bit_pair(b.qs, i);
}
// The 4-bit scale and min of sub-block j (0..15) of a Q2_K block: the low and high nibble of
// scales[j].
inline void unpack_q2_k_scales(const uint8_t* scales, size_t j, uint8_t* scale, uint8_t* min) {
  *scale = scales[j] & 0x0f;
  *min = scales[j] >> 4;
}

// The scale of sub-block j (0..15) of a Q3_K block, -32..31: its low 4 bits are a nibble of
// scales[j % 8] (the low one for j < 8), its top 2 bits the bit pair j / 4 of scales[8 + j % 4].
inline int q3_k_scale(const uint8_t* scales, size_t j) {
  const int low = (scales[j % 8] >> (j / 8 * 4)) & 0x0f;
  const int high = (scales[8 + j % 4] >> (j / 4 * 2)) & 3;
  return (low | high << 4) - 32;
}
// The 3-bit code of value i (0..255) of a Q3_K block (value = d * scale * (code - 4)): its low 2
// bits as Q2_K's, its top bit bit 4 half + quarter of hmask[i % 32].
inline int q3_k_code(const BlockQ3_K& b, size_t i) {
  const int high = (b.hmask[i % 32] >> (i / 128 * 4 + i % 128 / 32)) & 1;
  return k_bit_pair(b.qs, i) | high << 2;
}

// Converts n values between f32 and a GGUF tensor type (F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K,
// Q3_K, Q4_K, Q5_K, Q6_K). F16 to Q5_0 round as ggml's reference quantizers
// do, so that sllm's files match llama.cpp's byte for byte; the K-quants search for a smaller error
// than llama.cpp's. dst/src hold tensor_row_bytes(type, n) bytes. Error for another type, or for a
// quantized type when n is not a whole number of its blocks (32 values, 256 for the K-quants).
void quantize_row(TensorType type, const float* src, void* dst, size_t n);
void dequantize_row(TensorType type, const void* src, float* dst, size_t n);

// Scalar references, one per format. n is the number of values (a multiple of 32).
namespace ref {
// Per block: d = amax / 127, q = round(x * (1 / d)) (halves away from zero), d stored as f16.
void quantize_row_q8_0(const float* x, BlockQ8_0* y, size_t n);
// The same blocks as ggml's CPU code makes of activations on x86, where llama.cpp's results come
// from: q = round(x * (127 / amax)), halves to even. It differs from quantize_row_q8_0 in a few
// codes per thousand (exact halves, and where the two inverses round apart), each of which moves
// a Q8_0 model's output by up to 1e-4 of its range.
void quantize_activations_q8_0(const float* x, BlockQ8_0* y, size_t n);
void dequantize_row_q8_0(const BlockQ8_0* x, float* y, size_t n);
// Per block: m = the value of largest magnitude (the first one, with its sign), d = m / -8,
// q = min(15, trunc(x * (1 / d) + 8.5)), d stored as f16.
void quantize_row_q4_0(const float* x, BlockQ4_0* y, size_t n);
void dequantize_row_q4_0(const BlockQ4_0* x, float* y, size_t n);
// Q5_0 likewise with d = m / -16 and q = min(31, trunc(x * (1 / d) + 16.5)).
void quantize_row_q5_0(const float* x, BlockQ5_0* y, size_t n);
void dequantize_row_q5_0(const BlockQ5_0* x, float* y, size_t n);
// n is a multiple of 256.
void dequantize_row_q2_k(const BlockQ2_K* x, float* y, size_t n);
void dequantize_row_q3_k(const BlockQ3_K* x, float* y, size_t n);
void dequantize_row_q4_k(const BlockQ4_K* x, float* y, size_t n);
void dequantize_row_q6_k(const BlockQ6_K* x, float* y, size_t n);
// Quantizers that minimise the squared error (no importance weights), n a multiple of 256.
// Q2_K, Q4_K, Q5_K: per sub-block (16 values for Q2_K, 32 for the others), the scale and min
// with the smallest error among the least-squares fits of the codes of candidate grids, refined;
// d and dmin give the largest scale and min a code near the top of their range (15 or 63: the
// step with the smallest rounding error of all the sub-blocks'), and each sub-block keeps the
// neighbouring pair of codes that gives it the smallest error, with its codes rounded to that
// pair.
void quantize_row_q2_k(const float* x, BlockQ2_K* y, size_t n);
void quantize_row_q4_k(const float* x, BlockQ4_K* y, size_t n);
void quantize_row_q5_k(const float* x, BlockQ5_K* y, size_t n);
void dequantize_row_q5_k(const BlockQ5_K* x, float* y, size_t n);
// Q3_K, Q6_K: per sub-block of 16, the scale with the smallest error among the least-squares
// scales of candidate grids; d gives the scale of largest magnitude a code near -32 or -128, and
// each sub-block keeps the neighbouring code that gives it the smallest error.
void quantize_row_q3_k(const float* x, BlockQ3_K* y, size_t n);
void quantize_row_q6_k(const float* x, BlockQ6_K* y, size_t n);
// Activations for K-quant weights, as ggml's x86 code quantizes them: per block d = amax / 127
// kept in f32, q = round(x * (127 / amax)) with halves to even (as quantize_activations_q8_0
// does per 32 values), and the sums of each 16 codes.
void quantize_row_q8_k(const float* x, BlockQ8_K* y, size_t n);

// Integer dot product of one block with a Q8_0 block of activations.
int32_t block_dot(const BlockQ8_0& w, const BlockQ8_0& x);
int32_t block_dot(const BlockQ4_0& w, const BlockQ8_0& x);
int32_t block_dot(const BlockQ5_0& w, const BlockQ8_0& x);
// Dot product of a weight row with an activation row quantized to Q8_0: per block the integer
// dot product, then sum += isum * (d_w * d_x) in f32, as ggml's vec_dot does.
float dot_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, size_t n);
float dot_q4_0(const BlockQ4_0* w, const BlockQ8_0* x, size_t n);
float dot_q5_0(const BlockQ5_0* w, const BlockQ8_0* x, size_t n);
// Dot product of a K-quant weight row with an activation row quantized to Q8_K: per block, the
// integer dot products of the sub-blocks times their integer scales (and for Q4_K and Q5_K the
// sums of the activation codes times the sub-block mins) summed in int32, then sum += d_x * (d * S
// - dmin * M) (Q2_K, Q4_K, Q5_K) or d_x * (d * S) (Q3_K and Q6_K, whose S counts the codes minus 4
// and 32) in f32. n is a multiple of 256.
float dot_q2_k(const BlockQ2_K* w, const BlockQ8_K* x, size_t n);
float dot_q3_k(const BlockQ3_K* w, const BlockQ8_K* x, size_t n);
float dot_q4_k(const BlockQ4_K* w, const BlockQ8_K* x, size_t n);
float dot_q5_k(const BlockQ5_K* w, const BlockQ8_K* x, size_t n);
float dot_q6_k(const BlockQ6_K* w, const BlockQ8_K* x, size_t n);
}  // namespace ref
}  // namespace sllm
