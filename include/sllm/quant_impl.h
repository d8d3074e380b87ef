#include <algorithm>
#include <cmath>

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

// round(v) as an int8 code in [-127, 127]; NaN (from a non-finite input) gives 0.
inline int8_t round_to_q8(float v) {
  const float r = std::round(v);
  if (r >= 127.0f) return 127;
  if (r <= -127.0f) return -127;
  return r == r ? static_cast<int8_t>(r) : 0;
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
    for (size_t i = 0; i < kQuantBlock; ++i) y[b].qs[i] = detail::round_to_q8(x[i] * id);
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
  constexpr size_t kHalf = kQuantBlock / 2;
  for (size_t b = 0; b < nb; ++b, x += kQuantBlock) {
    // The scale maps the value of largest magnitude to code 0 (-8 * d), so that its sign decides
    // which end of the asymmetric range [-8, 7] is used exactly.
    float amax = 0.0f, max = 0.0f;
    for (size_t i = 0; i < kQuantBlock; ++i) {
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        max = x[i];
      }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = f32_to_fp16(d);
    auto code = [id](float v) {
      const float shifted = v * id + 8.5f;  // truncation below rounds to nearest
      if (!(shifted > 0.0f)) return 0;      // also NaN
      return shifted >= 15.0f ? 15 : static_cast<int>(shifted);
    };
    for (size_t j = 0; j < kHalf; ++j) {
      y[b].qs[j] = static_cast<uint8_t>(code(x[j]) | (code(x[j + kHalf]) << 4));
    }
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

void dequantize_row_q4_k(const BlockQ4_K* x, float* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q4_K, n);
  for (size_t b = 0; b < nb; ++b) {
    const float d = fp16_to_f32(x[b].d), dmin = fp16_to_f32(x[b].dmin);
    for (int j = 0; j < 8; ++j) {
      uint8_t scale, min;
      unpack_q4_k_scales(x[b].scales, j, &scale, &min);
      for (size_t i = 32 * size_t(j); i < 32 * size_t(j) + 32; ++i) {
        *y++ = d * scale * q4_k_code(x[b], i) - dmin * min;
      }
    }
  }
}

void quantize_row_q8_k(const float* x, BlockQ8_K* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q8_K, n);
  for (size_t b = 0; b < nb; ++b, x += kSuperBlock) {
    float amax = 0.0f;
    for (size_t i = 0; i < kSuperBlock; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[b].d = d;
    for (size_t k = 0; k < kSuperBlock / 16; ++k) {
      int sum = 0;
      for (size_t i = 16 * k; i < 16 * k + 16; ++i) {
        y[b].qs[i] = detail::round_to_q8(x[i] * id);
        sum += y[b].qs[i];
      }
      y[b].bsums[k] = int16_t(sum);
    }
  }
}

void dequantize_row_q6_k(const BlockQ6_K* x, float* y, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q6_K, n);
  for (size_t b = 0; b < nb; ++b) {
    const float d = fp16_to_f32(x[b].d);
    for (size_t i = 0; i < kSuperBlock; ++i)
      *y++ = d * x[b].scales[i / 16] * (q6_k_code(x[b], i) - 32);
  }
}

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

float dot_q4_k(const BlockQ4_K* w, const BlockQ8_K* x, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q4_K, n);
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    int32_t scaled = 0, mins = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t scale, min;
      unpack_q4_k_scales(w[b].scales, j, &scale, &min);
      int32_t dot = 0, codes = 0;
      for (size_t i = 32 * size_t(j); i < 32 * size_t(j) + 32; ++i) {
        dot += q4_k_code(w[b], i) * int32_t(x[b].qs[i]);
        codes += x[b].qs[i];
      }
      scaled += scale * dot;
      mins += min * codes;
    }
    sum += x[b].d * (fp16_to_f32(w[b].d) * float(scaled) - fp16_to_f32(w[b].dmin) * float(mins));
  }
  return sum;
}

float dot_q6_k(const BlockQ6_K* w, const BlockQ8_K* x, size_t n) {
  const size_t nb = detail::quant_blocks(TensorType::Q6_K, n);
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b) {
    int32_t scaled = 0;
    for (size_t j = 0; j < kSuperBlock / 16; ++j) {
      int32_t dot = 0;
      for (size_t i = 16 * j; i < 16 * j + 16; ++i) {
        dot += (q6_k_code(w[b], i) - 32) * int32_t(x[b].qs[i]);
      }
      scaled += w[b].scales[j] * dot;
    }
    sum += x[b].d * (fp16_to_f32(w[b].d) * float(scaled));
  }
  return sum;
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
    default:
      detail::fail("cannot quantize to tensor type " + std::to_string(uint32_t(type)) +
                   ": sllm writes F32, F16, BF16, Q8_0 and Q4_0");
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
    case TensorType::Q4_K:
      ref::dequantize_row_q4_k(static_cast<const BlockQ4_K*>(src), dst, n);
      return;
    case TensorType::Q6_K:
      ref::dequantize_row_q6_k(static_cast<const BlockQ6_K*>(src), dst, n);
      return;
    default:
      detail::fail("cannot dequantize tensor type " + std::to_string(uint32_t(type)) +
                   ": sllm reads F32, F16, BF16, Q8_0, Q4_0, Q4_K and Q6_K");
  }
}

}  // namespace sllm
