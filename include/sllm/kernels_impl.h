#include <omp.h>

namespace sllm {
namespace detail {

HWY_EXPORT(DotF32);
HWY_EXPORT(MatMulRows);
HWY_EXPORT(RowToF32);
HWY_EXPORT(RmsNorm);
HWY_EXPORT(LayerNorm);
HWY_EXPORT(Add);
HWY_EXPORT(Rope);
HWY_EXPORT(Softmax);
HWY_EXPORT(SwiGlu);
HWY_EXPORT(Gelu);
HWY_EXPORT(GeGlu);
HWY_EXPORT(Attention);

std::vector<int64_t> simd_targets() {
  return hwy::SupportedAndGeneratedTargets();
}
const char* simd_target_name(int64_t target) {
  return hwy::TargetName(target);
}
void force_simd_target(int64_t target) {
  hwy::SetSupportedTargetsForTest(target);
}

float dot_f32(const float* a, const float* b, size_t n) {
  return HWY_DYNAMIC_DISPATCH(DotF32)(a, b, n);
}

void matmul(const MatrixView& w, const float* x, size_t n, size_t x_stride, float* y,
            size_t y_stride, int n_threads) {
  // Below this many multiply-adds, starting the threads costs more than it saves.
  constexpr size_t kMinParallelWork = size_t{1} << 15;
  const size_t n_tiles = (w.rows + 3) / 4;  // the kernel's tiles are 4 weight rows high
  const bool parallel = n_threads > 1 && w.rows * w.cols * n >= kMinParallelWork;
#pragma omp parallel num_threads(n_threads) if (parallel)
  {
    const size_t n_parts = size_t(omp_get_num_threads());
    const size_t part = size_t(omp_get_thread_num());
    const size_t begin = n_tiles * part / n_parts * 4;
    const size_t end = std::min(w.rows, n_tiles * (part + 1) / n_parts * 4);
    if (begin < end) HWY_DYNAMIC_DISPATCH(MatMulRows)(w, begin, end, x, n, x_stride, y, y_stride);
  }
}

void row_to_f32(TensorType type, const uint8_t* src, size_t n, float* dst) {
  if (type == TensorType::F32 || type == TensorType::F16 || type == TensorType::BF16) {
    HWY_DYNAMIC_DISPATCH(RowToF32)(type, src, n, dst);
  } else {
    dequantize_row(type, src, dst, n);  // one row per token: the reference code is fast enough
  }
}

void rmsnorm(const float* x, const float* weight, size_t n, float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsNorm)(x, weight, n, eps, out);
}

void layernorm(const float* x, const float* weight, const float* bias, size_t n, float eps,
               float* out) {
  HWY_DYNAMIC_DISPATCH(LayerNorm)(x, weight, bias, n, eps, out);
}

void add(float* y, const float* x, size_t n) {
  HWY_DYNAMIC_DISPATCH(Add)(y, x, n);
}

void rope(float* x, size_t n_heads, size_t head_dim, size_t rope_dim, const float* cos,
          const float* sin, RopeStyle style) {
  HWY_DYNAMIC_DISPATCH(Rope)(x, n_heads, head_dim, rope_dim, cos, sin, style);
}

void rope_table(size_t pos, size_t rope_dim, float base, const float* freq_factors, RopeStyle style,
                float* cos, float* sin) {
  const size_t half = rope_dim / 2;
  for (size_t i = 0; i < half; ++i) {
    double theta = double(pos) * std::pow(double(base), -2.0 * double(i) / double(rope_dim));
    if (freq_factors != nullptr) theta /= freq_factors[i];
    const float c = float(std::cos(theta)), s = float(std::sin(theta));
    const size_t j = style == RopeStyle::kNeox ? i : 2 * i;
    const size_t k = style == RopeStyle::kNeox ? i + half : 2 * i + 1;
    cos[j] = c;
    cos[k] = c;
    sin[j] = -s;
    sin[k] = s;
  }
}

void softmax(float* x, size_t n) {
  HWY_DYNAMIC_DISPATCH(Softmax)(x, n);
}

void swiglu(const float* gate, const float* up, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(SwiGlu)(gate, up, n, out);
}

void gelu(const float* x, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(Gelu)(x, n, out);
}

const float* gelu_f16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t bits = 0; bits < t.size(); ++bits) {
      const float x = fp16_to_f32(uint16_t(bits));
      const float y =
          0.5f * x * (1.0f + std::tanh(0.79788456080286535588f * x * (1.0f + 0.044715f * x * x)));
      t[bits] = fp16_to_f32(f32_to_fp16(y));
    }
    return t;
  }();
  return table.data();
}

void geglu(const float* gate, const float* up, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(GeGlu)(gate, up, n, out);
}

void attention(const float* q, size_t n_q, size_t head_dim, const PagedRows& keys,
               const PagedRows& values, size_t begin, size_t end, float scale, float* out) {
  HWY_DYNAMIC_DISPATCH(Attention)(q, n_q, head_dim, keys, values, begin, end, scale, out);
}

}  // namespace detail

namespace ref {

float dot_f32(const float* a, const float* b, size_t n) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += double(a[i]) * b[i];
  return float(sum);
}

float element_to_f32(TensorType type, const uint8_t* row, size_t i) {
  uint16_t h;
  switch (type) {
    case TensorType::F16:
      std::memcpy(&h, row + 2 * i, 2);
      return fp16_to_f32(h);
    case TensorType::BF16:
      std::memcpy(&h, row + 2 * i, 2);
      return bf16_to_f32(h);
    case TensorType::I8: {
      float scale;
      std::memcpy(&scale, row, 4);
      return scale * float(int8_t(row[4 + i]));
    }
    default: {
      float f;
      std::memcpy(&f, row + 4 * i, 4);
      return f;
    }
  }
}

void matmul(const detail::MatrixView& w, const float* x, size_t n, size_t x_stride, float* y,
            size_t y_stride) {
  for (size_t t = 0; t < n; ++t) {
    for (size_t r = 0; r < w.rows; ++r) {
      double sum = 0;
      for (size_t c = 0; c < w.cols; ++c) {
        sum += double(element_to_f32(w.type, w.data + r * w.row_bytes, c)) * x[t * x_stride + c];
      }
      y[t * y_stride + r] = float(sum);
    }
  }
}

void rmsnorm(const float* x, const float* weight, size_t n, float eps, float* out) {
  double sum_sq = 0;
  for (size_t i = 0; i < n; ++i) sum_sq += double(x[i]) * x[i];
  const double scale = 1.0 / std::sqrt(sum_sq / double(n) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = float(x[i] * scale * weight[i]);
}

void layernorm(const float* x, const float* weight, const float* bias, size_t n, float eps,
               float* out) {
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += x[i];
  const double mean = sum / double(n);
  double sum_sq = 0;
  for (size_t i = 0; i < n; ++i) sum_sq += (x[i] - mean) * (x[i] - mean);
  const double scale = 1.0 / std::sqrt(sum_sq / double(n) + eps);
  for (size_t i = 0; i < n; ++i) out[i] = float((x[i] - mean) * scale * weight[i] + bias[i]);
}

void add(float* y, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void rope(float* x, size_t n_heads, size_t head_dim, size_t rope_dim, size_t pos, float base,
          const float* freq_factors, RopeStyle style) {
  const size_t half = rope_dim / 2;
  for (size_t h = 0; h < n_heads; ++h) {
    for (size_t i = 0; i < half; ++i) {
      const double factor = freq_factors != nullptr ? freq_factors[i] : 1.0;
      const double theta =
          double(pos) / std::pow(double(base), double(2 * i) / double(rope_dim)) / factor;
      // The rotated pair: adjacent elements, or one from each half of the rotated part.
      float* p0 = x + h * head_dim + (style == RopeStyle::kNeox ? i : 2 * i);
      float* p1 = style == RopeStyle::kNeox ? p0 + half : p0 + 1;
      const double x0 = *p0, x1 = *p1;
      *p0 = float(x0 * std::cos(theta) - x1 * std::sin(theta));
      *p1 = float(x0 * std::sin(theta) + x1 * std::cos(theta));
    }
  }
}

void softmax(float* x, size_t n) {
  if (n == 0) return;
  double max = x[0];
  for (size_t i = 1; i < n; ++i) max = std::max(max, double(x[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(x[i] - max);
  for (size_t i = 0; i < n; ++i) x[i] = float(std::exp(x[i] - max) / sum);
}

void swiglu(const float* gate, const float* up, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = float(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

double gelu(double x) {
  const double sqrt_2_over_pi = 0.79788456080286535588;
  return 0.5 * x * (1.0 + std::tanh(sqrt_2_over_pi * (x + 0.044715 * x * x * x)));
}

void gelu(const float* x, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i];
    if (!(v > -10.0f)) {
      out[i] = std::isnan(v) ? v : 0.0f;
    } else if (v >= 10.0f) {
      out[i] = v;
    } else {
      const double rounded = fp16_to_f32(f32_to_fp16(v));
      out[i] = fp16_to_f32(f32_to_fp16(float(gelu(rounded))));
    }
  }
}

void geglu(const float* gate, const float* up, size_t n, float* out) {
  gelu(gate, n, out);
  for (size_t i = 0; i < n; ++i) out[i] = float(double(out[i]) * up[i]);
}

void attention(const float* q, size_t head_dim, const detail::PagedRows& keys,
               const detail::PagedRows& values, size_t begin, size_t end, float scale, float* out) {
  std::vector<double> p(end - begin);
  double max = -INFINITY;
  for (size_t j = begin; j < end; ++j) {
    double dot = 0;
    for (size_t i = 0; i < head_dim; ++i) {
      dot += double(q[i]) * element_to_f32(keys.type, keys.row(j), i);
    }
    p[j - begin] = scale * dot;
    max = std::max(max, p[j - begin]);
  }
  double sum = 0;
  for (double& v : p) sum += (v = std::exp(v - max));
  for (size_t i = 0; i < head_dim; ++i) {
    double acc = 0;
    for (size_t j = begin; j < end; ++j) {
      acc += p[j - begin] * element_to_f32(values.type, values.row(j), i);
    }
    out[i] = float(acc / sum);
  }
}

}  // namespace ref
}  // namespace sllm
