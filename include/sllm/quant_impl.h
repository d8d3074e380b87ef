#include <algorithm>
#include <cmath>
#include <limits>

namespace sllm {
namespace detail {

inline size_t quant_blocks(TensorType type, size_t n) {
  const size_t block = tensor_type_info(uint32_t(type))->block_elems;
  if (n % block != 0) {
    fail(std::string("a row of ") + std::to_string(n) + " values cannot be stored as " +
         tensor_type_name(type) + ": the length must be a multiple of " + std::to_string(block));
  }
  return n / block;
}

// A rounded value as an int8 code in [-127, 127]; NaN (from a non-finite input) gives 0.
inline int8_t q8_code(float r) {
  if (r >= 127.0f) return 127;
  if (r <= -127.0f) return -127;
  return r == r ? static_cast<int8_t>(r) : 0;
}

// Q4_0 and Q5_0 as ggml's reference quantizers make them: the scale maps the value of largest
// magnitude to code 0 (-offset * d), so that its sign decides which end of the asymmetric range
// [-offset, offset - 1] is used exactly. Returns d; codes[i] in [0, 2 * offset - 1].
inline float offset_codes(const float* x, int offset, int (&codes)[kQuantBlock]) {
  float amax = 0.0f, max = 0.0f;
  for (size_t i = 0; i < kQuantBlock; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  const float d = max / -float(offset);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float half_up = float(offset) + 0.5f;  // truncation below rounds to nearest
  const int top = 2 * offset - 1;
  for (size_t i = 0; i < kQuantBlock; ++i) {
    const float shifted = x[i] * id + half_up;
    codes[i] = !(shifted > 0.0f) ? 0 : shifted >= float(top) ? top : static_cast<int>(shifted);
  }
  return d;
}

// The low 4 bits of a block's codes as Q4_0 and Q5_0 store them: byte j holds code j in its low
// nibble and code j + 16 in its high one.
inline void pack_low_nibbles(const int (&codes)[kQuantBlock], uint8_t (&qs)[kQuantBlock / 2]) {
  constexpr size_t kHalf = kQuantBlock / 2;
  for (size_t j = 0; j < kHalf; ++j) {
    qs[j] = static_cast<uint8_t>((codes[j] & 0x0f) | (codes[j + kHalf] & 0x0f) << 4);
  }
}

// What the reference code reads of a K-quant block: sub-block j's scale and min (Q2_K, Q4_K,
// Q5_K), or the value of code i and sub-block j's signed scale (Q3_K, Q6_K).
inline void block_scale_min(const BlockQ2_K& b, size_t j, uint8_t* scale, uint8_t* min) {
  unpack_q2_k_scales(b.scales, j, scale, min);
}
template <typename Block>  // Q4_K, Q5_K
void block_scale_min(const Block& b, size_t j, uint8_t* scale, uint8_t* min) {
  unpack_q4_k_scales(b.scales, int(j), scale, min);
}
inline int block_value(const BlockQ3_K& b, size_t i) {
  return q3_k_code(b, i) - 4;
}
inline int block_value(const BlockQ6_K& b, size_t i) {
  return q6_k_code(b, i) - 32;
}
inline int block_scale(const BlockQ3_K& b, size_t j) {
  return q3_k_scale(b.scales, j);
}
inline int block_scale(const BlockQ6_K& b, size_t j) {
  return b.scales[j];
}

}  // namespace detail

namespace ref {

void quantize_row_q8_0(const float* x, BlockQ8_0* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q8_0, n);
  for (size_t b = 0; b < nb; ++b, x += kQuantBlock) {
    float amax = 0.0f;
    for (size_t i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    for (size_t i = 0; i < kQuantBlock; ++i) y[b].qs[i] = detail::q8_code(std::round(x[i] * id));
  }
}

void quantize_activations_q8_0(const float* x, BlockQ8_0* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q8_0, n);
  for (size_t b = 0; b < nb; ++b, x += kQuantBlock) {
    float amax = 0.0f;
    for (size_t i = 0; i < kQuantBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    y[b].d = f32_to_fp16(amax / 127.0f);
    // nearbyint rounds halves to even (the default rounding mode).
    for (size_t i = 0; i < kQuantBlock; ++i)
      y[b].qs[i] = detail::q8_code(std::nearbyint(x[i] * id));
  }
}

void dequantize_row_q8_0(const BlockQ8_0* x, float* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q8_0, n);
  for (size_t b = 0; b < nb; ++b) {
    const float d = fp16_to_f32(x[b].d);
    for (size_t i = 0; i < kQuantBlock; ++i) *y++ = float(x[b].qs[i]) * d;
  }
}

void quantize_row_q4_0(const float* x, BlockQ4_0* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q4_0, n);
  for (size_t b = 0; b < nb; ++b, x += kQuantBlock) {
    int q[kQuantBlock];
    y[b].d = f32_to_fp16(detail::offset_codes(x, 8, q));
    detail::pack_low_nibbles(q, y[b].qs);
  }
}

void dequantize_row_q4_0(const BlockQ4_0* x, float* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q4_0, n);
  constexpr size_t kHalf = kQuantBlock / 2;
  for (size_t b = 0; b < nb; ++b, y += kQuantBlock) {
    const float d = fp16_to_f32(x[b].d);
    for (size_t j = 0; j < kHalf; ++j) {
      y[j] = float((x[b].qs[j] & 0x0f) - 8) * d;
      y[j + kHalf] = float((x[b].qs[j] >> 4) - 8) * d;
    }
  }
}

void quantize_row_q5_0(const float* x, BlockQ5_0* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q5_0, n);
  for (size_t b = 0; b < nb; ++b, x += kQuantBlock) {
    int q[kQuantBlock];
    y[b].d = f32_to_fp16(detail::offset_codes(x, 16, q));
    detail::pack_low_nibbles(q, y[b].qs);
    std::memset(y[b].qh, 0, sizeof(y[b].qh));
    for (size_t i = 0; i < kQuantBlock; ++i) {
      y[b].qh[i / 8] = static_cast<uint8_t>(y[b].qh[i / 8] | (q[i] >> 4) << (i % 8));
    }
  }
}

void dequantize_row_q5_0(const BlockQ5_0* x, float* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q5_0, n);
  for (size_t b = 0; b < nb; ++b) {
    const float d = fp16_to_f32(x[b].d);
    for (size_t i = 0; i < kQuantBlock; ++i) *y++ = float(q5_0_code(x[b], i) - 16) * d;
  }
}

// Q2_K, Q4_K and Q5_K: value = d * scale * code - dmin * min per sub-block of kSubBlock values.
template <size_t kSubBlock, typename Block>
void dequantize_scale_min(TensorType type, const Block* x, float* y, size_t n,
                          int (*code)(const Block&, size_t)) {
  const size_t nb = detail::quant_blocks(type, n);
  for (size_t b = 0; b < nb; ++b) {
    const float d = fp16_to_f32(x[b].d), dmin = fp16_to_f32(x[b].dmin);
    for (size_t j = 0; j < kSuperBlock / kSubBlock; ++j) {
      uint8_t scale, min;
      detail::block_scale_min(x[b], j, &scale, &min);
      for (size_t i = kSubBlock * j; i < kSubBlock * j + kSubBlock; ++i) {
        *y++ = d * scale * code(x[b], i) - dmin * min;
      }
    }
  }
}

// Q3_K and Q6_K: value = d * scale * (code - offset) per sub-block of 16 values.
template <typename Block>
void dequantize_signed_scales(TensorType type, const Block* x, float* y, size_t n) {
  const size_t nb = detail::quant_blocks(type, n);
  for (size_t b = 0; b < nb; ++b) {
    const float d = fp16_to_f32(x[b].d);
    for (size_t i = 0; i < kSuperBlock; ++i) {
      *y++ = d * detail::block_scale(x[b], i / 16) * detail::block_value(x[b], i);
    }
  }
}

void dequantize_row_q4_k(const BlockQ4_K* x, float* y, size_t n) {
  dequantize_scale_min<32>(TensorType::Q4_K, x, y, n, q4_k_code);
}

void quantize_row_q8_k(const float* x, BlockQ8_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q8_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float amax = 0.0f;
    for (size_t i = 0; i < kSuperBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    y[b].d = amax / 127.0f;
    for (size_t k = 0; k < kSuperBlock / 16; ++k) {
      int sum = 0;
      for (size_t i = 16 * k; i < 16 * k + 16; ++i) {
        y[b].qs[i] = detail::q8_code(std::nearbyint(x[i] * id));
        sum += y[b].qs[i];
      }
      y[b].bsums[k] = int16_t(sum);
    }
  }
}

void dequantize_row_q2_k(const BlockQ2_K* x, float* y, size_t n) {
  dequantize_scale_min<16>(TensorType::Q2_K, x, y, n, q2_k_code);
}

void dequantize_row_q3_k(const BlockQ3_K* x, float* y, size_t n) {
  dequantize_signed_scales(TensorType::Q3_K, x, y, n);
}

void dequantize_row_q6_k(const BlockQ6_K* x, float* y, size_t n) {
  dequantize_signed_scales(TensorType::Q6_K, x, y, n);
}

}  // namespace ref

namespace detail {

// Sums over a block of values x and their integer codes q, for least-squares fits.
struct CodeSums {
  float q = 0, qq = 0, qx = 0;
};

// The sum of N values (a multiple of 4) in four lanes: an order fixed by the code, so that the
// compiler vectorizes it without reassociating float additions.
template <size_t N>
float lane_sum(const float* p) {
  float lanes[4] = {p[0], p[1], p[2], p[3]};
  for (size_t i = 4; i < N; i += 4) {
    for (size_t l = 0; l < 4; ++l) lanes[l] += p[i + l];
  }
  return (lanes[0] + lanes[2]) + (lanes[1] + lanes[3]);
}

// v limited to [lo, hi]; NaN gives lo. A select, not a branch.
inline float clamp_to(float v, float lo, float hi) {
  v = v > lo ? v : lo;
  return v < hi ? v : hi;
}

// The largest integer not above v, and the integer nearest to v, in [lo, hi] (lo an integer);
// NaN gives lo. Truncation of a non-negative float, which needs no rounding call.
inline float floor_in(float v, float lo, float hi) {
  return float(int(clamp_to(v, lo, hi) - lo)) + lo;
}
inline float nearest_in(float v, float lo, float hi) {
  return floor_in(v + 0.5f, lo, hi);
}

// The step d of a super-block's sub-block values v_j (scales or mins), which it stores as codes
// round(v_j / d) in [lo, hi]: among the steps that give the value of largest magnitude, extreme,
// the code `end` (63 or -128) or one of the 10 half steps inside it, the one with the smallest
// weighted rounding error sum w_j (v_j - d c_j)^2, where w_j says how fast sub-block j's error
// grows with the error of its value. Returned as the f16 that the block stores.
inline uint16_t pick_step(const float* v, const float* w, size_t n, float extreme, float end,
                          float lo, float hi) {
  uint16_t best = f32_to_fp16(extreme / end);
  float best_err = std::numeric_limits<float>::infinity();
  for (int k = 0; k <= 10 && extreme != 0; ++k) {
    const uint16_t step = f32_to_fp16(extreme / (end - std::copysign(0.5f * float(k), end)));
    const float d = fp16_to_f32(step), inv = 1.0f / d;
    float err = 0;
    for (size_t j = 0; j < n; ++j) {
      const float r = v[j] - d * nearest_in(v[j] * inv, lo, hi);
      err += w[j] * r * r;
    }
    if (err < best_err) {
      best_err = err;
      best = step;
    }
  }
  return best;
}

// The codes q_i = round(clamp(scaled(x_i), 0, top)) - offset of N values, written to q, and
// their sums. Clamping and rounding are separate loops because GCC does not vectorize a loop
// that converts a float to int after a select.
template <size_t N, typename Scaled>
CodeSums code_block(const float* x, Scaled scaled, float top, float offset, float* q) {
  for (size_t i = 0; i < N; ++i) q[i] = clamp_to(scaled(x[i]), 0.0f, top);
  for (size_t i = 0; i < N; ++i) q[i] = float(int(q[i] + 0.5f)) - offset;
  float qq[N], qx[N];
  for (size_t i = 0; i < N; ++i) {
    qq[i] = q[i] * q[i];
    qx[i] = q[i] * x[i];
  }
  CodeSums s;
  s.q = lane_sum<N>(q);
  s.qq = lane_sum<N>(qq);
  s.qx = lane_sum<N>(qx);
  return s;
}

// The sums of a block's values that do not depend on the codes.
struct ValueSums {
  float n = 0, x = 0, xx = 0;
};

template <size_t N>
ValueSums value_sums(const float* x) {
  float xx[N];
  for (size_t i = 0; i < N; ++i) xx[i] = x[i] * x[i];
  ValueSums v;
  v.n = float(N);
  v.x = lane_sum<N>(x);
  v.xx = lane_sum<N>(xx);
  return v;
}

// Rounds to the nearest code, then settles: at most this many times, the better neighbour of
// the least-squares fit of the current codes, then the codes nearest to it.
constexpr int kSettlePasses = 2;

// A sub-block of Q4_K or Q5_K: x_i ~ scale * q_i - min with codes in [0, top], scale >= 0 and
// min >= 0 (the formats store both as unsigned codes of the block's d and dmin), and its squared
// error.
struct ScaleMin {
  float scale = 0, min = 0;
  float err = std::numeric_limits<float>::infinity();
  float qq = 0;  // sum of the squared codes: how fast the error grows with that of the scale
};

inline float scale_min_error(const CodeSums& c, const ValueSums& v, float scale, float min) {
  // sum (scale q - min - x)^2, expanded.
  return v.xx + scale * scale * c.qq + v.n * min * min - 2 * scale * c.qx + 2 * min * v.x -
         2 * scale * min * c.q;
}

// The least-squares scale and min for fixed codes (min clamped at 0), or an infinite error
// where the codes cannot carry a positive scale.
inline ScaleMin fit_scale_min(const CodeSums& c, const ValueSums& v) {
  ScaleMin f;
  const float det = v.n * c.qq - c.q * c.q;
  if (det > 0) {
    f.scale = (v.n * c.qx - c.q * v.x) / det;
    f.min = (c.q * c.qx - c.qq * v.x) / det;
  }
  if (!(det > 0) || f.min < 0) {
    f.min = 0;
    f.scale = c.qq > 0 ? c.qx / c.qq : 0;
  }
  if (f.scale > 0) f.err = scale_min_error(c, v, f.scale, f.min);
  f.qq = c.qq;
  return f;
}

// The codes round(clamp((x_i + min) / scale, 0, top)) of a sub-block of N values.
template <size_t N>
CodeSums scale_min_codes(const float* x, float scale, float min, float top, float* q) {
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  return code_block<N>(
      x, [=](float xi) { return (xi + min) * inv; }, top, 0, q);
}

// The scale and min of a sub-block that minimise the squared error: the codes of grids spanning
// [min(x, 0), max(x)] in top - 2 to top + 4 steps, each followed by the least-squares scale and
// min of its codes; then the codes nearest to the best fit and a refit, while that lowers the
// error.
template <size_t N>
ScaleMin search_scale_min(const float* x, const ValueSums& v, float top) {
  float lo = 0, hi = x[0];
  for (size_t i = 0; i < N; ++i) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
  }
  ScaleMin best;
  if (!(hi > lo)) {  // constant, or not finite: all codes 0
    best.min = -lo;
    return best;
  }
  float q[N];
  for (int step = -10; step <= 20; ++step) {
    const float range = top + 0.2f * float(step);
    const CodeSums c = scale_min_codes<N>(x, (hi - lo) / range, -lo, top, q);
    const ScaleMin f = fit_scale_min(c, v);
    if (f.err < best.err) best = f;
  }
  for (int pass = 0; pass < 2 && best.scale > 0; ++pass) {
    const ScaleMin f = fit_scale_min(scale_min_codes<N>(x, best.scale, best.min, top, q), v);
    if (!(f.err < best.err)) break;
    best = f;
  }
  return best;
}

// The scale and min codes (in [0, code_top]) of a sub-block once the block's d and dmin are
// fixed, and its codes q (see kSettlePasses; the neighbours are the four pairs around the fit).
template <size_t N>
void settle_scale_min(const float* x, const ValueSums& v, const ScaleMin& fit, float d, float dmin,
                      float top, float code_top, uint8_t* ls, uint8_t* lm, float* q) {
  auto nearest = [=](float value, float step) {
    return step > 0 ? nearest_in(value / step, 0, code_top) : 0.0f;
  };
  auto below = [=](float value, float step) {
    return step > 0 ? floor_in(value / step, 0, code_top - 1) : 0.0f;
  };
  float s = nearest(fit.scale, d), m = nearest(fit.min, dmin);
  for (int pass = 0;; ++pass) {
    const CodeSums c = scale_min_codes<N>(x, d * s, dmin * m, top, q);
    if (pass == kSettlePasses) break;
    const ScaleMin f = fit_scale_min(c, v);
    float best_s = s, best_m = m, best_err = scale_min_error(c, v, d * s, dmin * m);
    const float s0 = below(f.scale, d), m0 = below(f.min, dmin);
    for (float cs = s0; cs <= s0 + 1; ++cs) {
      for (float cm = m0; cm <= m0 + 1; ++cm) {
        const float err = scale_min_error(c, v, d * cs, dmin * cm);
        if (err < best_err) {
          best_err = err;
          best_s = cs;
          best_m = cm;
        }
      }
    }
    if (best_s == s && best_m == m) break;
    s = best_s;
    m = best_m;
  }
  *ls = uint8_t(s);
  *lm = uint8_t(m);
}

// One super-block of sub-blocks of N values with a scale and a min (Q2_K: N = 16, codes in
// [0, 3], 4-bit scale and min codes; Q4_K, Q5_K: N = 32, codes in [0, 15] or [0, 31], 6-bit
// scale and min codes in [0, code_top]): d, dmin, the scale and min codes ls and lm of the
// sub-blocks, and the codes q of the 256 values.
template <size_t N>
void quantize_scale_min_block(const float* x, float top, float code_top, uint16_t* d16,
                              uint16_t* dmin16, uint8_t* ls, uint8_t* lm, float* q) {
  constexpr size_t kSubBlocks = kSuperBlock / N;
  ValueSums sums[kSubBlocks];
  ScaleMin fits[kSubBlocks];
  float scale[kSubBlocks], min[kSubBlocks], scale_weight[kSubBlocks], min_weight[kSubBlocks];
  float max_scale = 0, max_min = 0;
  for (size_t j = 0; j < kSubBlocks; ++j) {
    sums[j] = value_sums<N>(x + j * N);
    fits[j] = search_scale_min<N>(x + j * N, sums[j], top);
    scale[j] = fits[j].scale;
    min[j] = fits[j].min;
    scale_weight[j] = fits[j].qq;
    min_weight[j] = float(N);
    max_scale = std::max(max_scale, scale[j]);
    max_min = std::max(max_min, min[j]);
  }
  *d16 = pick_step(scale, scale_weight, kSubBlocks, max_scale, code_top, 0, code_top);
  *dmin16 = pick_step(min, min_weight, kSubBlocks, max_min, code_top, 0, code_top);
  const float d = fp16_to_f32(*d16), dmin = fp16_to_f32(*dmin16);
  for (size_t j = 0; j < kSubBlocks; ++j) {
    settle_scale_min<N>(x + j * N, sums[j], fits[j], d, dmin, top, code_top, &ls[j], &lm[j],
                        q + j * N);
  }
}

// Q3_K and Q6_K: 16 sub-blocks of 16 values x_i ~ d * scale_j * q_i with signed codes q_i in
// [-half, half - 1] and signed scale codes scale_j in [scale_lo, -scale_lo - 1].
constexpr size_t kSignedSubBlock = 16;

struct SignedFormat {
  float half;      // 32 (Q6_K) or 4 (Q3_K)
  float scale_lo;  // -128 (Q6_K) or -32 (Q3_K)
  float spread;    // the distance between the candidate grids of search_signed_sub_block
};
constexpr SignedFormat kQ6KFormat{32, -128, 0.6f};
constexpr SignedFormat kQ3KFormat{4, -32, 0.25f};

// Codes q in [-half, half - 1] from x_i * inv: round(clamp(x_i * inv + half, 0, 2 half - 1)) -
// half.
inline CodeSums signed_codes(const float* x, float inv, float half, float* q) {
  return code_block<kSignedSubBlock>(
      x, [=](float xi) { return xi * inv + half; }, 2 * half - 1, half, q);
}

// A sub-block with a signed scale: x_i ~ scale * q_i, and the sum of the squared codes.
struct ScaleFit {
  float scale = 0, qq = 0;
};

// The scale that minimises the squared error among the least-squares scales of candidate grids
// that map the value of largest magnitude to -half +- 3 spreads (the long end of the range) or
// to half - 1 +- 3 spreads.
inline ScaleFit search_signed_sub_block(const float* x, const SignedFormat& f) {
  float amax = 0, max = 0;
  for (size_t i = 0; i < kSignedSubBlock; ++i) {
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  }
  ScaleFit best;
  if (!(amax > 0 && amax < std::numeric_limits<float>::infinity())) return best;
  float q[kSignedSubBlock];
  float best_gain = 0;  // (sum q x)^2 / sum q^2: the error that the fit removes
  for (int step = -3; step <= 3; ++step) {
    for (const float end : {-f.half, f.half - 1}) {
      const CodeSums c = signed_codes(x, (end + f.spread * float(step)) / max, f.half, q);
      if (c.qq > 0 && c.qx * c.qx > best_gain * c.qq) {
        best_gain = c.qx * c.qx / c.qq;
        best.scale = c.qx / c.qq;
        best.qq = c.qq;
      }
    }
  }
  return best;
}

// The scale code of a sub-block once the block's d is fixed, and its codes q (see
// kSettlePasses).
inline float settle_signed_sub_block(const float* x, const ValueSums& v, float scale, float d,
                                     const SignedFormat& f, float* q) {
  const float lo = f.scale_lo, hi = -f.scale_lo - 1;
  float code = d != 0 ? nearest_in(scale / d, lo, hi) : 0.0f;
  for (int pass = 0;; ++pass) {
    const float step = d * code;
    const CodeSums c = signed_codes(x, step != 0 ? 1.0f / step : 0.0f, f.half, q);
    if (pass == kSettlePasses || d == 0 || !(c.qq > 0)) break;
    auto error = [&](float s) { return v.xx - 2 * s * c.qx + s * s * c.qq; };
    float best = code, best_err = error(step);
    const float below = floor_in(c.qx / c.qq / d, lo, hi - 1);
    for (float cand = below; cand <= below + 1; ++cand) {
      const float err = error(d * cand);
      if (err < best_err) {
        best_err = err;
        best = cand;
      }
    }
    if (best == code) break;
    code = best;
  }
  return code;
}

// One super-block of Q3_K or Q6_K: d, the scale codes of the sub-blocks and the codes q of the
// 256 values.
inline uint16_t quantize_signed_block(const float* x, const SignedFormat& f, int* scale_codes,
                                      float* q) {
  constexpr size_t kSubBlocks = kSuperBlock / kSignedSubBlock;
  float scales[kSubBlocks], weights[kSubBlocks];
  float max_scale = 0;
  for (size_t j = 0; j < kSubBlocks; ++j) {
    const ScaleFit fit = search_signed_sub_block(x + j * kSignedSubBlock, f);
    scales[j] = fit.scale;
    weights[j] = fit.qq;
    if (std::fabs(scales[j]) > std::fabs(max_scale)) max_scale = scales[j];
  }
  // The scale of largest magnitude gets code scale_lo (or nearly), the long end of the range.
  const uint16_t d16 =
      pick_step(scales, weights, kSubBlocks, max_scale, f.scale_lo, f.scale_lo, -f.scale_lo - 1);
  const float d = fp16_to_f32(d16);
  for (size_t j = 0; j < kSubBlocks; ++j) {
    const float* xj = x + j * kSignedSubBlock;
    scale_codes[j] = int(settle_signed_sub_block(xj, value_sums<kSignedSubBlock>(xj), scales[j], d,
                                                 f, q + j * kSignedSubBlock));
  }
  return d16;
}

// Per half of 128 values, value l (0..31) of quarter k: bits 2k..2k+1 of qs[32 half + l]
// (Q2_K's codes and the low 2 bits of Q3_K's; see k_bit_pair).
inline void pack_bit_pairs(const float* q, int offset, uint8_t* qs) {
  std::memset(qs, 0, kSuperBlock / 4);
  for (size_t i = 0; i < kSuperBlock; ++i) {
    qs[i / 128 * 32 + i % 32] |= uint8_t(((int(q[i]) + offset) & 3) << (i % 128 / 32 * 2));
  }
}

}  // namespace detail

namespace ref {

void quantize_row_q2_k(const float* x, BlockQ2_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q2_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float q[kSuperBlock];
    uint8_t ls[16], lm[16];
    detail::quantize_scale_min_block<16>(x, 3, 15, &y[b].d, &y[b].dmin, ls, lm, q);
    for (size_t j = 0; j < 16; ++j) y[b].scales[j] = uint8_t(ls[j] | lm[j] << 4);
    detail::pack_bit_pairs(q, 0, y[b].qs);
  }
}

void quantize_row_q3_k(const float* x, BlockQ3_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q3_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float q[kSuperBlock];
    int scales[16];
    y[b].d = detail::quantize_signed_block(x, detail::kQ3KFormat, scales, q);
    // Scale code + 32: its low 4 bits in a nibble of scales[j % 8] (the low one for j < 8), its
    // top 2 bits in bit pair j / 4 of scales[8 + j % 4] (see q3_k_scale).
    std::memset(y[b].scales, 0, sizeof y[b].scales);
    for (size_t j = 0; j < 16; ++j) {
      const int u = scales[j] + 32;
      y[b].scales[j % 8] |= uint8_t((u & 15) << (j / 8 * 4));
      y[b].scales[8 + j % 4] |= uint8_t((u >> 4) << (j / 4 * 2));
    }
    // Code + 4: the low 2 bits as Q2_K's, the top bit in bit 4 half + quarter of hmask[i % 32].
    detail::pack_bit_pairs(q, 4, y[b].qs);
    std::memset(y[b].hmask, 0, sizeof y[b].hmask);
    for (size_t i = 0; i < kSuperBlock; ++i) {
      const int u = int(q[i]) + 4;
      y[b].hmask[i % 32] |= uint8_t((u >> 2) << (i / 128 * 4 + i % 128 / 32));
    }
  }
}

void quantize_row_q4_k(const float* x, BlockQ4_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q4_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float q[kSuperBlock];
    uint8_t ls[8], lm[8];
    detail::quantize_scale_min_block<32>(x, 15, 63, &y[b].d, &y[b].dmin, ls, lm, q);
    sllm::pack_q4_k_scales(ls, lm, y[b].scales);
    // Sub-block 2i in the low nibbles of the i-th 32 bytes, sub-block 2i + 1 in the high ones.
    for (size_t g = 0; g < kSuperBlock / 64; ++g) {
      for (size_t l = 0; l < 32; ++l) {
        y[b].qs[32 * g + l] = uint8_t(int(q[64 * g + l]) | (int(q[64 * g + 32 + l]) << 4));
      }
    }
  }
}

void quantize_row_q5_k(const float* x, BlockQ5_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q5_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float q[kSuperBlock];
    uint8_t ls[8], lm[8];
    detail::quantize_scale_min_block<32>(x, 31, 63, &y[b].d, &y[b].dmin, ls, lm, q);
    sllm::pack_q4_k_scales(ls, lm, y[b].scales);
    // The low 4 bits as in Q4_K; the top bit of value l of sub-block j in bit j of qh[l].
    std::memset(y[b].qh, 0, sizeof y[b].qh);
    for (size_t g = 0; g < kSuperBlock / 64; ++g) {
      for (size_t l = 0; l < 32; ++l) {
        const int lo = int(q[64 * g + l]), hi = int(q[64 * g + 32 + l]);
        y[b].qs[32 * g + l] = uint8_t((lo & 15) | ((hi & 15) << 4));
        y[b].qh[l] = uint8_t(y[b].qh[l] | ((lo >> 4) << (2 * g)) | ((hi >> 4) << (2 * g + 1)));
      }
    }
  }
}

void dequantize_row_q5_k(const BlockQ5_K* x, float* y, size_t n) {
  dequantize_scale_min<32>(TensorType::Q5_K, x, y, n, q5_k_code);
}

void quantize_row_q6_k(const float* x, BlockQ6_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q6_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float q[kSuperBlock];
    int scales[16];
    y[b].d = detail::quantize_signed_block(x, detail::kQ6KFormat, scales, q);
    for (size_t j = 0; j < 16; ++j) y[b].scales[j] = int8_t(scales[j]);
    // Per half of 128 values, value l of quarter k: low 4 bits in the low (k < 2) or high nibble
    // of ql[l + 32 * (k % 2)], top 2 bits in bits 2k, 2k + 1 of qh[l].
    for (size_t half = 0; half < 2; ++half) {
      const float* qq = q + 128 * half;
      uint8_t* ql = y[b].ql + 64 * half;
      uint8_t* qh = y[b].qh + 32 * half;
      for (size_t l = 0; l < 32; ++l) {
        int u[4];
        for (size_t k = 0; k < 4; ++k) u[k] = int(qq[32 * k + l]) + 32;
        ql[l] = uint8_t((u[0] & 15) | ((u[2] & 15) << 4));
        ql[l + 32] = uint8_t((u[1] & 15) | ((u[3] & 15) << 4));
        qh[l] = uint8_t((u[0] >> 4) | ((u[1] >> 4) << 2) | ((u[2] >> 4) << 4) | ((u[3] >> 4) << 6));
      }
    }
  }
}

}  // namespace ref

namespace ref {

int32_t block_dot(const BlockQ8_0& w, const BlockQ8_0& x) {
  int32_t sum = 0;
  for (size_t i = 0; i < kQuantBlock; ++i) sum += int32_t(w.qs[i]) * x.qs[i];
  return sum;
}

int32_t block_dot(const BlockQ4_0& w, const BlockQ8_0& x) {
  constexpr size_t kHalf = kQuantBlock / 2;
  int32_t sum = 0;
  for (size_t j = 0; j < kHalf; ++j) {
    sum += ((w.qs[j] & 0x0f) - 8) * int32_t(x.qs[j]);
    sum += ((w.qs[j] >> 4) - 8) * int32_t(x.qs[j + kHalf]);
  }
  return sum;
}

int32_t block_dot(const BlockQ5_0& w, const BlockQ8_0& x) {
  int32_t sum = 0;
  for (size_t i = 0; i < kQuantBlock; ++i) sum += (q5_0_code(w, i) - 16) * int32_t(x.qs[i]);
  return sum;
}

// Per block the integer dot product, scaled by both blocks' scales and summed in f32.
template <typename Block>
float dot_blocks(TensorType type, const Block* w, const BlockQ8_0* x, size_t n) {
  const size_t nb = detail::quant_blocks(type, n);
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    sum += float(block_dot(w[b], x[b])) * (fp16_to_f32(w[b].d) * fp16_to_f32(x[b].d));
  }
  return sum;
}

float dot_q8_0(const BlockQ8_0* w, const BlockQ8_0* x, size_t n) {
  return dot_blocks(TensorType::Q8_0, w, x, n);
}

float dot_q4_0(const BlockQ4_0* w, const BlockQ8_0* x, size_t n) {
  return dot_blocks(TensorType::Q4_0, w, x, n);
}

float dot_q5_0(const BlockQ5_0* w, const BlockQ8_0* x, size_t n) {
  return dot_blocks(TensorType::Q5_0, w, x, n);
}

// Q2_K, Q4_K and Q5_K: per sub-block of kSubBlock values, its scale times the dot product of the
// codes and the activation codes, and its min times the sum of the activation codes.
template <size_t kSubBlock, typename Block>
float dot_scale_min(TensorType type, const Block* w, const BlockQ8_K* x, size_t n,
                    int (*code)(const Block&, size_t)) {
  const size_t nb = detail::quant_blocks(type, n);
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    int32_t scaled = 0, mins = 0;
    for (size_t j = 0; j < kSuperBlock / kSubBlock; ++j) {
      uint8_t scale, min;
      detail::block_scale_min(w[b], j, &scale, &min);
      int32_t dot = 0, codes = 0;
      for (size_t i = kSubBlock * j; i < kSubBlock * j + kSubBlock; ++i) {
        dot += code(w[b], i) * int32_t(x[b].qs[i]);
        codes += x[b].qs[i];
      }
      scaled += scale * dot;
      mins += min * codes;
    }
    sum += x[b].d * (fp16_to_f32(w[b].d) * float(scaled) - fp16_to_f32(w[b].dmin) * float(mins));
  }
  return sum;
}

float dot_q4_k(const BlockQ4_K* w, const BlockQ8_K* x, size_t n) {
  return dot_scale_min<32>(TensorType::Q4_K, w, x, n, q4_k_code);
}

float dot_q5_k(const BlockQ5_K* w, const BlockQ8_K* x, size_t n) {
  return dot_scale_min<32>(TensorType::Q5_K, w, x, n, q5_k_code);
}

float dot_q2_k(const BlockQ2_K* w, const BlockQ8_K* x, size_t n) {
  return dot_scale_min<16>(TensorType::Q2_K, w, x, n, q2_k_code);
}

// Q3_K and Q6_K: per sub-block of 16 the dot product of the values (codes less their offset) and
// the activation codes times the sub-block's signed scale.
template <typename Block>
float dot_signed_scales(TensorType type, const Block* w, const BlockQ8_K* x, size_t n) {
  const size_t nb = detail::quant_blocks(type, n);
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    int32_t scaled = 0;
    for (size_t j = 0; j < kSuperBlock / 16; ++j) {
      int32_t dot = 0;
      for (size_t i = 16 * j; i < 16 * j + 16; ++i) {
        dot += detail::block_value(w[b], i) * int32_t(x[b].qs[i]);
      }
      scaled += detail::block_scale(w[b], j) * dot;
    }
    sum += x[b].d * (fp16_to_f32(w[b].d) * float(scaled));
  }
  return sum;
}

float dot_q3_k(const BlockQ3_K* w, const BlockQ8_K* x, size_t n) {
  return dot_signed_scales(TensorType::Q3_K, w, x, n);
}

float dot_q6_k(const BlockQ6_K* w, const BlockQ8_K* x, size_t n) {
  return dot_signed_scales(TensorType::Q6_K, w, x, n);
}

}  // namespace ref

void quantize_row(TensorType type, const float* src, void* dst, size_t n) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case TensorType::F16:
    case TensorType::BF16: {
      uint16_t* out = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) {
        out[i] = type == TensorType::F16 ? f32_to_fp16(src[i]) : f32_to_bf16(src[i]);
      }
      return;
    }
    case TensorType::Q8_0:
      ref::quantize_row_q8_0(src, static_cast<BlockQ8_0*>(dst), n);
      return;
    case TensorType::Q4_0:
      ref::quantize_row_q4_0(src, static_cast<BlockQ4_0*>(dst), n);
      return;
    case TensorType::Q5_0:
      ref::quantize_row_q5_0(src, static_cast<BlockQ5_0*>(dst), n);
      return;
    case TensorType::Q2_K:
      ref::quantize_row_q2_k(src, static_cast<BlockQ2_K*>(dst), n);
      return;
    case TensorType::Q3_K:
      ref::quantize_row_q3_k(src, static_cast<BlockQ3_K*>(dst), n);
      return;
    case TensorType::Q4_K:
      ref::quantize_row_q4_k(src, static_cast<BlockQ4_K*>(dst), n);
      return;
    case TensorType::Q5_K:
      ref::quantize_row_q5_k(src, static_cast<BlockQ5_K*>(dst), n);
      return;
    case TensorType::Q6_K:
      ref::quantize_row_q6_k(src, static_cast<BlockQ6_K*>(dst), n);
      return;
    default:
      detail::fail(
          "cannot quantize to tensor type " + std::to_string(uint32_t(type)) +
          ": sllm writes F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K");
  }
}

void dequantize_row(TensorType type, const void* src, float* dst, size_t n) {
  switch (type) {
    case TensorType::F32:
      std::memcpy(dst, src, n * sizeof(float));
      return;
    case TensorType::F16:
    case TensorType::BF16: {
      const uint16_t* in = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) {
        dst[i] = type == TensorType::F16 ? fp16_to_f32(in[i]) : bf16_to_f32(in[i]);
      }
      return;
    }
    case TensorType::Q8_0:
      ref::dequantize_row_q8_0(static_cast<const BlockQ8_0*>(src), dst, n);
      return;
    case TensorType::Q4_0:
      ref::dequantize_row_q4_0(static_cast<const BlockQ4_0*>(src), dst, n);
      return;
    case TensorType::Q5_0:
      ref::dequantize_row_q5_0(static_cast<const BlockQ5_0*>(src), dst, n);
      return;
    case TensorType::Q2_K:
      ref::dequantize_row_q2_k(static_cast<const BlockQ2_K*>(src), dst, n);
      return;
    case TensorType::Q3_K:
      ref::dequantize_row_q3_k(static_cast<const BlockQ3_K*>(src), dst, n);
      return;
    case TensorType::Q4_K:
      ref::dequantize_row_q4_k(static_cast<const BlockQ4_K*>(src), dst, n);
      return;
    case TensorType::Q5_K:
      ref::dequantize_row_q5_k(static_cast<const BlockQ5_K*>(src), dst, n);
      return;
    case TensorType::Q6_K:
      ref::dequantize_row_q6_k(static_cast<const BlockQ6_K*>(src), dst, n);
      return;
    default:
      detail::fail(
          "cannot dequantize tensor type " + std::to_string(uint32_t(type)) +
          ": sllm reads F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K");
  }
}

}  // namespace sllm
