// Weights and KV entries of any float type, read as f32: vectors by promotion (BF16 by a shift),
// single elements through the base layer's conversions.
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const float* HWY_RESTRICT p) {
  return hn::LoadU(d, p);
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const hwy::float16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::float16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, p));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const hwy::bfloat16_t* HWY_RESTRICT p) {
  const hn::Rebind<hwy::bfloat16_t, D> dh;
  return hn::PromoteTo(d, hn::LoadU(dh, p));
}
template <class D>
HWY_INLINE hn::Vec<D> LoadAsF32(D d, const int8_t* HWY_RESTRICT p) {
  const hn::Rebind<int32_t, D> di;
  const hn::Rebind<int8_t, D> d8;
  return hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(d8, p)));
}
HWY_INLINE float ElementAsF32(float v) {
  return v;
}
HWY_INLINE float ElementAsF32(hwy::float16_t v) {
  return fp16_to_f32(v.bits);
}
HWY_INLINE float ElementAsF32(hwy::bfloat16_t v) {
  return bf16_to_f32(v.bits);
}
HWY_INLINE float ElementAsF32(int8_t v) {
  return float(v);
}

template <class D>
HWY_INLINE float ReduceSumF32(D d, hn::Vec<D> v) {
  return hn::GetLane(hn::SumOfLanes(d, v));
}

float DotF32(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto sum0 = hn::Zero(d), sum1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    sum0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), sum0);
    sum1 = hn::MulAdd(hn::LoadU(d, a + i + N), hn::LoadU(d, b + i + N), sum1);
  }
  for (; i + N <= n; i += N) sum0 = hn::MulAdd(hn::LoadU(d, a + i), hn::LoadU(d, b + i), sum0);
  float sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(sum0, sum1)));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Register tile of the matmul: 4 weight rows times kCols activation rows. Each weight vector is
// loaded (and widened) once and multiplied with every activation row of the tile, so prefill
// reads a weight row once per kCols tokens. out[c * 4 + r] = dot(w_r, x_c). Callers with fewer
// than 4 rows repeat a row pointer and ignore the extra results. Named accumulators rather than
// an array, because arrays of vectors are not allowed on scalable targets (SVE, RVV).
template <size_t kCols, typename W>
HWY_INLINE void MatMulTile(const W* HWY_RESTRICT w0, const W* HWY_RESTRICT w1,
                           const W* HWY_RESTRICT w2, const W* HWY_RESTRICT w3, size_t k,
                           const float* HWY_RESTRICT x, size_t x_stride, float* HWY_RESTRICT out) {
  static_assert(kCols >= 1 && kCols <= 4, "tile width");
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float* x0 = x;
  const float* x1 = kCols > 1 ? x + x_stride : x;
  const float* x2 = kCols > 2 ? x + 2 * x_stride : x;
  const float* x3 = kCols > 3 ? x + 3 * x_stride : x;
  auto a00 = hn::Zero(d), a10 = a00, a20 = a00, a30 = a00;
  auto a01 = a00, a11 = a00, a21 = a00, a31 = a00;
  auto a02 = a00, a12 = a00, a22 = a00, a32 = a00;
  auto a03 = a00, a13 = a00, a23 = a00, a33 = a00;
  size_t i = 0;
  for (; i + N <= k; i += N) {
    const auto v0 = LoadAsF32(d, w0 + i), v1 = LoadAsF32(d, w1 + i);
    const auto v2 = LoadAsF32(d, w2 + i), v3 = LoadAsF32(d, w3 + i);
    const auto xv0 = hn::LoadU(d, x0 + i);
    a00 = hn::MulAdd(v0, xv0, a00);
    a10 = hn::MulAdd(v1, xv0, a10);
    a20 = hn::MulAdd(v2, xv0, a20);
    a30 = hn::MulAdd(v3, xv0, a30);
    if constexpr (kCols > 1) {
      const auto xv1 = hn::LoadU(d, x1 + i);
      a01 = hn::MulAdd(v0, xv1, a01);
      a11 = hn::MulAdd(v1, xv1, a11);
      a21 = hn::MulAdd(v2, xv1, a21);
      a31 = hn::MulAdd(v3, xv1, a31);
    }
    if constexpr (kCols > 2) {
      const auto xv2 = hn::LoadU(d, x2 + i);
      a02 = hn::MulAdd(v0, xv2, a02);
      a12 = hn::MulAdd(v1, xv2, a12);
      a22 = hn::MulAdd(v2, xv2, a22);
      a32 = hn::MulAdd(v3, xv2, a32);
    }
    if constexpr (kCols > 3) {
      const auto xv3 = hn::LoadU(d, x3 + i);
      a03 = hn::MulAdd(v0, xv3, a03);
      a13 = hn::MulAdd(v1, xv3, a13);
      a23 = hn::MulAdd(v2, xv3, a23);
      a33 = hn::MulAdd(v3, xv3, a33);
    }
  }
  out[0] = ReduceSumF32(d, a00);
  out[1] = ReduceSumF32(d, a10);
  out[2] = ReduceSumF32(d, a20);
  out[3] = ReduceSumF32(d, a30);
  if constexpr (kCols > 1) {
    out[4] = ReduceSumF32(d, a01);
    out[5] = ReduceSumF32(d, a11);
    out[6] = ReduceSumF32(d, a21);
    out[7] = ReduceSumF32(d, a31);
  }
  if constexpr (kCols > 2) {
    out[8] = ReduceSumF32(d, a02);
    out[9] = ReduceSumF32(d, a12);
    out[10] = ReduceSumF32(d, a22);
    out[11] = ReduceSumF32(d, a32);
  }
  if constexpr (kCols > 3) {
    out[12] = ReduceSumF32(d, a03);
    out[13] = ReduceSumF32(d, a13);
    out[14] = ReduceSumF32(d, a23);
    out[15] = ReduceSumF32(d, a33);
  }
  if (i == k) return;
  const W* const rows[4] = {w0, w1, w2, w3};
  const float* const cols[4] = {x0, x1, x2, x3};
  for (size_t c = 0; c < kCols; ++c) {
    for (size_t r = 0; r < 4; ++r) {
      float tail = 0;
      for (size_t j = i; j < k; ++j) tail += ElementAsF32(rows[r][j]) * cols[c][j];
      out[c * 4 + r] += tail;
    }
  }
}

// Activation rows per register tile: 4 x 4 accumulators need the 32 vector registers of
// AVX-512 (and NEON/SVE); x86 targets with 16 registers use 4 x 2.
#if HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3
constexpr size_t kMatMulCols = 2;
#else
constexpr size_t kMatMulCols = 4;
#endif

template <size_t kCols, typename W>
HWY_INLINE void MatMulTileStore(const W* const* rows, size_t n_rows, size_t k, const float* x,
                                size_t x_stride, float* y, size_t y_stride) {
  float out[16];
  MatMulTile<kCols>(rows[0], rows[1], rows[2], rows[3], k, x, x_stride, out);
  for (size_t c = 0; c < kCols; ++c) {
    for (size_t r = 0; r < n_rows; ++r) y[c * y_stride + r] = out[c * 4 + r];
  }
}

// Activation rows [t_begin, t_end) times weight rows [row_begin, row_end).
template <typename W>
void MatMulBlock(const detail::MatrixView& w, size_t row_begin, size_t row_end, const float* x,
                 size_t t_begin, size_t t_end, size_t x_stride, float* y, size_t y_stride) {
  const size_t k = w.cols;
  for (size_t r = row_begin; r < row_end; r += 4) {
    const size_t n_rows = HWY_MIN(size_t{4}, row_end - r);
    const W* rows[4];
    for (size_t i = 0; i < 4; ++i) {
      rows[i] = reinterpret_cast<const W*>(w.data + (r + HWY_MIN(i, n_rows - 1)) * w.row_bytes);
    }
    size_t t = t_begin;
    for (; t + kMatMulCols <= t_end; t += kMatMulCols) {
      MatMulTileStore<kMatMulCols>(rows, n_rows, k, x + t * x_stride, x_stride,
                                   y + t * y_stride + r, y_stride);
    }
    const float* xt = x + t * x_stride;
    float* yt = y + t * y_stride + r;
    switch (t_end - t) {
      case 3:
        MatMulTileStore<3>(rows, n_rows, k, xt, x_stride, yt, y_stride);
        break;
      case 2:
        MatMulTileStore<2>(rows, n_rows, k, xt, x_stride, yt, y_stride);
        break;
      case 1:
        MatMulTileStore<1>(rows, n_rows, k, xt, x_stride, yt, y_stride);
        break;
      default:
        break;
    }
  }
}

// Activations are taken in blocks of about 256 KiB, which stay in L2 while every weight row of
// this thread passes over them; the weights are then read once per block (decode: once).
template <typename W>
void MatMulRowsOfType(const detail::MatrixView& w, size_t row_begin, size_t row_end, const float* x,
                      size_t n, size_t x_stride, float* y, size_t y_stride) {
  constexpr size_t kBlockBytes = size_t{256} << 10;
  const size_t fit = kBlockBytes / (HWY_MAX(w.cols, size_t{1}) * sizeof(float));
  const size_t block = HWY_MAX(kMatMulCols, fit / kMatMulCols * kMatMulCols);
  for (size_t t = 0; t < n; t += block) {
    MatMulBlock<W>(w, row_begin, row_end, x, t, HWY_MIN(n, t + block), x_stride, y, y_stride);
  }
}

// Weight rows [row_begin, row_end) of the matmul (one thread's share).
void MatMulRows(const detail::MatrixView& w, size_t row_begin, size_t row_end, const float* x,
                size_t n, size_t x_stride, float* y, size_t y_stride) {
  switch (w.type) {
    case TensorType::F16:
      return MatMulRowsOfType<hwy::float16_t>(w, row_begin, row_end, x, n, x_stride, y, y_stride);
    case TensorType::BF16:
      return MatMulRowsOfType<hwy::bfloat16_t>(w, row_begin, row_end, x, n, x_stride, y, y_stride);
    default:
      return MatMulRowsOfType<float>(w, row_begin, row_end, x, n, x_stride, y, y_stride);
  }
}

template <typename W>
HWY_INLINE void RowToF32OfType(const W* HWY_RESTRICT src, size_t n, float* HWY_RESTRICT dst) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(LoadAsF32(d, src + i), d, dst + i);
  for (; i < n; ++i) dst[i] = ElementAsF32(src[i]);
}

void RowToF32(TensorType type, const uint8_t* src, size_t n, float* dst) {
  switch (type) {
    case TensorType::F16:
      return RowToF32OfType(reinterpret_cast<const hwy::float16_t*>(src), n, dst);
    case TensorType::BF16:
      return RowToF32OfType(reinterpret_cast<const hwy::bfloat16_t*>(src), n, dst);
    default:
      return RowToF32OfType(reinterpret_cast<const float*>(src), n, dst);
  }
}

void RmsNorm(const float* HWY_RESTRICT x, const float* HWY_RESTRICT weight, size_t n, float eps,
             float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto sum = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::LoadU(d, x + i);
    sum = hn::MulAdd(v, v, sum);
  }
  float sum_sq = ReduceSumF32(d, sum);
  for (; i < n; ++i) sum_sq += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(sum_sq / float(n) + eps);
  const auto vscale = hn::Set(d, scale);
  i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::Mul(hn::LoadU(d, x + i), vscale);
    hn::StoreU(hn::Mul(v, hn::LoadU(d, weight + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

void LayerNorm(const float* HWY_RESTRICT x, const float* HWY_RESTRICT weight,
               const float* HWY_RESTRICT bias, size_t n, float eps, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  auto vsum = hn::Zero(d);
  size_t i = 0;
  for (; i + N <= n; i += N) vsum = hn::Add(vsum, hn::LoadU(d, x + i));
  float sum = ReduceSumF32(d, vsum);
  for (; i < n; ++i) sum += x[i];
  const float mean = sum / float(n);
  // The variance from the centred values (not E[x^2] - mean^2, which cancels badly).
  const auto vmean = hn::Set(d, mean);
  auto vsum_sq = hn::Zero(d);
  i = 0;
  for (; i + N <= n; i += N) {
    const auto c = hn::Sub(hn::LoadU(d, x + i), vmean);
    vsum_sq = hn::MulAdd(c, c, vsum_sq);
  }
  float sum_sq = ReduceSumF32(d, vsum_sq);
  for (; i < n; ++i) sum_sq += (x[i] - mean) * (x[i] - mean);
  const float scale = 1.0f / std::sqrt(sum_sq / float(n) + eps);
  const auto vscale = hn::Set(d, scale);
  i = 0;
  for (; i + N <= n; i += N) {
    const auto v = hn::Mul(hn::Sub(hn::LoadU(d, x + i), vmean), vscale);
    hn::StoreU(hn::MulAdd(v, hn::LoadU(d, weight + i), hn::LoadU(d, bias + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = (x[i] - mean) * scale * weight[i] + bias[i];
}

void Add(float* HWY_RESTRICT y, const float* HWY_RESTRICT x, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N)
    hn::StoreU(hn::Add(hn::LoadU(d, y + i), hn::LoadU(d, x + i)), d, y + i);
  for (; i < n; ++i) y[i] += x[i];
}

void Rope(float* HWY_RESTRICT x, size_t n_heads, size_t head_dim, size_t rope_dim,
          const float* HWY_RESTRICT cos, const float* HWY_RESTRICT sin, RopeStyle style) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const size_t half = rope_dim / 2;
  if (style == RopeStyle::kNeox) {
    // Element i pairs with i + half: vectors of the two halves rotate each other.
    for (size_t h = 0; h < n_heads; ++h) {
      float* p = x + h * head_dim;
      size_t i = 0;
      for (; i + N <= half; i += N) {
        const auto a = hn::LoadU(d, p + i), b = hn::LoadU(d, p + half + i);
        const auto ra = hn::MulAdd(a, hn::LoadU(d, cos + i), hn::Mul(b, hn::LoadU(d, sin + i)));
        const auto rb =
            hn::MulAdd(b, hn::LoadU(d, cos + half + i), hn::Mul(a, hn::LoadU(d, sin + half + i)));
        hn::StoreU(ra, d, p + i);
        hn::StoreU(rb, d, p + half + i);
      }
      for (; i < half; ++i) {
        const float a = p[i], b = p[half + i];
        p[i] = a * cos[i] + b * sin[i];
        p[half + i] = b * cos[half + i] + a * sin[half + i];
      }
    }
    return;
  }
  // Vectors hold whole pairs when N is even; Reverse2 swaps the two lanes of each pair, so
  // x * cos + swapped * sin rotates every pair (sin carries the sign of each lane).
  const size_t vector_end = N % 2 == 0 ? rope_dim / N * N : 0;
  for (size_t h = 0; h < n_heads; ++h) {
    float* p = x + h * head_dim;
    size_t i = 0;
    for (; i < vector_end; i += N) {
      const auto v = hn::LoadU(d, p + i);
      const auto swapped = hn::Reverse2(d, v);
      const auto r = hn::MulAdd(v, hn::LoadU(d, cos + i), hn::Mul(swapped, hn::LoadU(d, sin + i)));
      hn::StoreU(r, d, p + i);
    }
    for (; i < rope_dim; i += 2) {
      const float x0 = p[i], x1 = p[i + 1];
      p[i] = x0 * cos[i] + x1 * sin[i];
      p[i + 1] = x1 * cos[i + 1] + x0 * sin[i + 1];
    }
  }
}

void Softmax(float* HWY_RESTRICT x, size_t n) {
  if (n == 0) return;
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  float max = x[0];
  if (n >= N) {
    auto vmax = hn::LoadU(d, x);
    for (i = N; i + N <= n; i += N) vmax = hn::Max(vmax, hn::LoadU(d, x + i));
    max = hn::GetLane(hn::MaxOfLanes(d, vmax));
  }
  for (; i < n; ++i) max = HWY_MAX(max, x[i]);
  const auto vmax = hn::Set(d, max);
  auto vsum = hn::Zero(d);
  i = 0;
  for (; i + N <= n; i += N) {
    const auto e = hn::Exp(d, hn::Sub(hn::LoadU(d, x + i), vmax));
    vsum = hn::Add(vsum, e);
    hn::StoreU(e, d, x + i);
  }
  float sum = ReduceSumF32(d, vsum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  const float inv = 1.0f / sum;
  const auto vinv = hn::Set(d, inv);
  i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vinv), d, x + i);
  for (; i < n; ++i) x[i] *= inv;
}

void SwiGlu(const float* gate, const float* up, size_t n, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  // exp(-g) overflows to inf for g < -88, where silu(g) is 0 to float precision; clamping the
  // argument keeps the vector exp in its valid range.
  const auto max_arg = hn::Set(d, 88.0f);
  const auto one = hn::Set(d, 1.0f);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(d, gate + i);
    const auto e = hn::Exp(d, hn::Min(hn::Neg(g), max_arg));
    const auto silu = hn::Div(g, hn::Add(one, e));
    hn::StoreU(hn::Mul(silu, hn::LoadU(d, up + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

// The f16 bits of x, rounded to nearest even, for |x| <= 10 (in 32-bit lanes). Normal halves:
// the exponent rebiased (127 -> 15) and 13 mantissa bits dropped after adding 0xFFF and the
// lowest kept bit; subnormal ones (|x| < 2^-14, steps of 2^-24): adding 0.5f, whose ulp is
// 2^-24, rounds to the step and leaves the count in the low bits.
template <class D>
HWY_INLINE hn::Vec<hn::RebindToSigned<D>> HalfBits(D d, hn::Vec<D> x) {
  const hn::RebindToUnsigned<D> du;
  const auto abs = hn::Abs(x);
  const auto bits = hn::BitCast(du, abs);
  const auto odd = hn::And(hn::ShiftRight<13>(bits), hn::Set(du, 1));
  const auto normal = hn::ShiftRight<13>(
      hn::Add(hn::Sub(bits, hn::Set(du, 112u << 23)), hn::Add(hn::Set(du, 0xFFFu), odd)));
  const auto half_step = hn::Set(d, 0.5f);
  const auto subnormal =
      hn::Sub(hn::BitCast(du, hn::Add(abs, half_step)), hn::BitCast(du, half_step));
  const auto magnitude = hn::IfThenElse(
      hn::RebindMask(du, hn::Lt(abs, hn::Set(d, 6.103515625e-05f))), subnormal, normal);
  const auto sign = hn::ShiftRight<16>(hn::BitCast(du, hn::And(x, hn::Set(d, -0.0f))));
  return hn::BitCast(hn::RebindToSigned<D>(), hn::Or(magnitude, sign));
}

// gelu as detail::gelu describes it: a lookup of x rounded to f16 in table, 0 at or below
// -10, x at or above 10 (and NaN for NaN).
template <class D>
HWY_INLINE hn::Vec<D> GeluOf(D d, hn::Vec<D> x, const float* table) {
  const auto limit = hn::Set(d, 10.0f);
  const auto clamped = hn::Min(hn::Max(x, hn::Neg(limit)), limit);
  auto y = hn::GatherIndex(d, table, HalfBits(d, clamped));
  y = hn::IfThenElse(hn::Ge(x, limit), x, y);
  y = hn::IfThenZeroElse(hn::Le(x, hn::Neg(limit)), y);
  return hn::IfThenElse(hn::IsNaN(x), x, y);
}

HWY_INLINE float GeluOf(float x, const float* table) {
  if (std::isnan(x) || x >= 10.0f) return x;
  return x <= -10.0f ? 0.0f : table[f32_to_fp16(x)];
}

void Gelu(const float* x, size_t n, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float* table = detail::gelu_f16_table();
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(GeluOf(d, hn::LoadU(d, x + i), table), d, out + i);
  for (; i < n; ++i) out[i] = GeluOf(x[i], table);
}

void GeGlu(const float* gate, const float* up, size_t n, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float* table = detail::gelu_f16_table();
  size_t i = 0;
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::Mul(GeluOf(d, hn::LoadU(d, gate + i), table), hn::LoadU(d, up + i)), d, out + i);
  }
  for (; i < n; ++i) out[i] = GeluOf(gate[i], table) * up[i];
}

// A KV row's elements and the scale they are multiplied by (1 but for I8 rows).
template <typename KV>
HWY_INLINE const KV* KvElements(const uint8_t* row, float& scale) {
  if constexpr (std::is_same<KV, int8_t>::value) {
    std::memcpy(&scale, row, sizeof(float));
    return reinterpret_cast<const int8_t*>(row + sizeof(float));
  } else {
    scale = 1.0f;
    return reinterpret_cast<const KV*>(row);
  }
}

// Query heads whose scores are computed together, one a lane: a group of eight query heads
// shares each KV head in the models we run, and eight-lane multiply-adds run two a cycle on the
// cores we target (Zen 4, Intel's), as many lanes a cycle as sixteen-lane ones.
constexpr size_t kAttentionHeads = 8;
// Vectors of the value pass hold at most this many lanes.
constexpr size_t kAttentionLanes = 16;
// Tokens of a chunk of the attention: their keys and values are widened to f32 once for every
// query head of the group, and the softmax's running maximum moves once per chunk.
constexpr size_t kAttentionChunk = 32;
// Tokens whose scores are summed at once: eight independent chains of multiply-adds hide the
// latency of each.
constexpr size_t kScoreTokens = 8;

// Calls f(c, row) for the rows of tokens j0 + c, c < n, of a paged view, walking the block table
// rather than dividing per row.
template <class F>
HWY_INLINE void ForEachRow(const detail::PagedRows& rows, size_t j0, size_t n, const F& f) {
  size_t block = j0 / rows.block_tokens, in_block = j0 % rows.block_tokens;
  for (size_t c = 0; c < n; ++c) {
    f(c, rows.blocks[block] + rows.offset + in_block * rows.token_stride);
    if (++in_block == rows.block_tokens) {
      in_block = 0;
      ++block;
    }
  }
}

// Rows [j0, j0 + n) of a paged view widened to f32 and multiplied by their row scales (I8) into
// out (n rows of stride floats: the dim elements, then zeros): the scores and the weighted sums
// then need no scales.
template <typename KV, class D>
HWY_INLINE void WidenRows(D d, const detail::PagedRows& rows, size_t j0, size_t n, size_t dim,
                          size_t stride, float* HWY_RESTRICT out) {
  const size_t N = hn::Lanes(d);
  constexpr bool kScaled = std::is_same<KV, int8_t>::value;
  ForEachRow(rows, j0, n, [&](size_t c, const uint8_t* row) {
    float scale;
    const KV* e = KvElements<KV>(row, scale);
    const auto vscale = hn::Set(d, scale);
    float* HWY_RESTRICT o = out + c * stride;
    size_t i = 0;
    for (; i + N <= dim; i += N) {
      const auto x = LoadAsF32(d, e + i);
      hn::StoreU(kScaled ? hn::Mul(x, vscale) : x, d, o + i);
    }
    for (; i < dim; ++i) o[i] = kScaled ? ElementAsF32(e[i]) * scale : ElementAsF32(e[i]);
    for (; i < stride; ++i) o[i] = 0.0f;
  });
}

// Asks for the cache lines of a paged view's rows, in order from a token on, a few rows at a
// time. A sequence's blocks need not be adjacent (sequences take blocks in turn), so a KV head's
// rows may lie in short runs (a block's tokens) far apart, which the hardware prefetcher does not
// follow: attention asks for the rows kPrefetchChunks chunks ahead while it computes one. The
// lines go to L2 (locality 2), not L1, where they would evict the chunk's widened rows; and a few
// rows at a time, between score computations, since a burst of requests stalls on the full miss
// queue.
constexpr size_t kPrefetchChunks = 2;
class RowPrefetcher {
 public:
  RowPrefetcher(const detail::PagedRows& rows, size_t j, size_t end, size_t row_bytes)
      : rows_(rows),
        block_(j / rows.block_tokens),
        in_block_(j % rows.block_tokens),
        next_(j),
        end_(end),
        row_bytes_(row_bytes) {}
  // Asks for the rows before token j not asked for yet.
  HWY_INLINE void ask_until(size_t j) {
    for (j = HWY_MIN(j, end_); next_ < j; ++next_) {
      const uint8_t* row = rows_.blocks[block_] + rows_.offset + in_block_ * rows_.token_stride;
      for (size_t b = 0; b < row_bytes_; b += 64) __builtin_prefetch(row + b, 0, 2);
      if (++in_block_ == rows_.block_tokens) {
        in_block_ = 0;
        ++block_;
      }
    }
  }

 private:
  const detail::PagedRows& rows_;
  size_t block_, in_block_, next_, end_;
  size_t row_bytes_;
};

// The scores of a group of Lanes(dh) query heads, one a lane, with the chunk's n keys k (rows of
// stride floats): row c of s (Lanes(dh) floats) is sum_i qt_i k_ci, where row i of qt holds
// element i of the group's queries. Each key element is broadcast from memory into a
// multiply-add with a row of qt, so that no score needs a sum across lanes, and a row of qt is
// loaded once for kScoreTokens keys. The rows of the chunk [ahead, ahead + kAttentionChunk) are
// asked for in pieces, one before each kScoreTokens keys.
template <class DH>
HWY_INLINE void GroupScores(DH dh, const float* HWY_RESTRICT k, size_t n, size_t stride, size_t dim,
                            const float* HWY_RESTRICT qt, float* HWY_RESTRICT s, size_t ahead,
                            size_t pieces, size_t& piece, RowPrefetcher& keys_ahead,
                            RowPrefetcher& values_ahead) {
  const size_t G = hn::Lanes(dh);
  size_t c = 0;
  for (; c < n; c += kScoreTokens) {
    const size_t until = ahead + ++piece * kAttentionChunk / pieces;
    keys_ahead.ask_until(until);
    values_ahead.ask_until(until);
    if (c + kScoreTokens > n) break;
    const float* HWY_RESTRICT k0 = k + c * stride;
    const float* HWY_RESTRICT k1 = k0 + stride;
    const float* HWY_RESTRICT k2 = k0 + 2 * stride;
    const float* HWY_RESTRICT k3 = k0 + 3 * stride;
    const float* HWY_RESTRICT k4 = k0 + 4 * stride;
    const float* HWY_RESTRICT k5 = k0 + 5 * stride;
    const float* HWY_RESTRICT k6 = k0 + 6 * stride;
    const float* HWY_RESTRICT k7 = k0 + 7 * stride;
    auto s0 = hn::Zero(dh), s1 = hn::Zero(dh), s2 = hn::Zero(dh), s3 = hn::Zero(dh);
    auto s4 = hn::Zero(dh), s5 = hn::Zero(dh), s6 = hn::Zero(dh), s7 = hn::Zero(dh);
    for (size_t i = 0; i < dim; ++i) {
      const auto q = hn::LoadU(dh, qt + i * G);
      s0 = hn::MulAdd(q, hn::Set(dh, k0[i]), s0);
      s1 = hn::MulAdd(q, hn::Set(dh, k1[i]), s1);
      s2 = hn::MulAdd(q, hn::Set(dh, k2[i]), s2);
      s3 = hn::MulAdd(q, hn::Set(dh, k3[i]), s3);
      s4 = hn::MulAdd(q, hn::Set(dh, k4[i]), s4);
      s5 = hn::MulAdd(q, hn::Set(dh, k5[i]), s5);
      s6 = hn::MulAdd(q, hn::Set(dh, k6[i]), s6);
      s7 = hn::MulAdd(q, hn::Set(dh, k7[i]), s7);
    }
    float* HWY_RESTRICT sc = s + c * G;
    hn::StoreU(s0, dh, sc);
    hn::StoreU(s1, dh, sc + G);
    hn::StoreU(s2, dh, sc + 2 * G);
    hn::StoreU(s3, dh, sc + 3 * G);
    hn::StoreU(s4, dh, sc + 4 * G);
    hn::StoreU(s5, dh, sc + 5 * G);
    hn::StoreU(s6, dh, sc + 6 * G);
    hn::StoreU(s7, dh, sc + 7 * G);
  }
  // The last keys of a short chunk (the end of the range), one at a time.
  for (; c < n; ++c) {
    const float* HWY_RESTRICT kc = k + c * stride;
    auto sc = hn::Zero(dh);
    for (size_t i = 0; i < dim; ++i)
      sc = hn::MulAdd(hn::LoadU(dh, qt + i * G), hn::Set(dh, kc[i]), sc);
    hn::StoreU(sc, dh, s + c * G);
  }
}

// acc_h += sum_c p_ch v_c over the chunk's n tokens for four heads h: rows h of acc (stride
// floats) and lanes h of the rows of p (p_row floats). A vector of each value row is loaded once
// for the four heads, whose sums are four independent chains of multiply-adds.
template <class D>
HWY_INLINE void AddWeightedRows4(D d, const float* HWY_RESTRICT p, size_t p_row,
                                 const float* HWY_RESTRICT v, size_t n, size_t stride,
                                 float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(d);
  float* HWY_RESTRICT acc1 = acc + stride;
  float* HWY_RESTRICT acc2 = acc + 2 * stride;
  float* HWY_RESTRICT acc3 = acc + 3 * stride;
  for (size_t i = 0; i < stride; i += N) {
    auto a0 = hn::LoadU(d, acc + i), a1 = hn::LoadU(d, acc1 + i);
    auto a2 = hn::LoadU(d, acc2 + i), a3 = hn::LoadU(d, acc3 + i);
    for (size_t c = 0; c < n; ++c) {
      const auto vc = hn::LoadU(d, v + c * stride + i);
      const float* HWY_RESTRICT pc = p + c * p_row;
      a0 = hn::MulAdd(hn::Set(d, pc[0]), vc, a0);
      a1 = hn::MulAdd(hn::Set(d, pc[1]), vc, a1);
      a2 = hn::MulAdd(hn::Set(d, pc[2]), vc, a2);
      a3 = hn::MulAdd(hn::Set(d, pc[3]), vc, a3);
    }
    hn::StoreU(a0, d, acc + i);
    hn::StoreU(a1, d, acc1 + i);
    hn::StoreU(a2, d, acc2 + i);
    hn::StoreU(a3, d, acc3 + i);
  }
}

// The same for one head, four vectors of acc at a time (four independent chains), then one.
template <class D>
HWY_INLINE void AddWeightedRows1(D d, const float* HWY_RESTRICT p, size_t p_row,
                                 const float* HWY_RESTRICT v, size_t n, size_t stride,
                                 float* HWY_RESTRICT acc) {
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + 4 * N <= stride; i += 4 * N) {
    auto a0 = hn::LoadU(d, acc + i), a1 = hn::LoadU(d, acc + i + N);
    auto a2 = hn::LoadU(d, acc + i + 2 * N), a3 = hn::LoadU(d, acc + i + 3 * N);
    for (size_t c = 0; c < n; ++c) {
      const auto pc = hn::Set(d, p[c * p_row]);
      const float* HWY_RESTRICT vc = v + c * stride + i;
      a0 = hn::MulAdd(pc, hn::LoadU(d, vc), a0);
      a1 = hn::MulAdd(pc, hn::LoadU(d, vc + N), a1);
      a2 = hn::MulAdd(pc, hn::LoadU(d, vc + 2 * N), a2);
      a3 = hn::MulAdd(pc, hn::LoadU(d, vc + 3 * N), a3);
    }
    hn::StoreU(a0, d, acc + i);
    hn::StoreU(a1, d, acc + i + N);
    hn::StoreU(a2, d, acc + i + 2 * N);
    hn::StoreU(a3, d, acc + i + 3 * N);
  }
  for (; i < stride; i += N) {
    auto a = hn::LoadU(d, acc + i);
    for (size_t c = 0; c < n; ++c) {
      a = hn::MulAdd(hn::Set(d, p[c * p_row]), hn::LoadU(d, v + c * stride + i), a);
    }
    hn::StoreU(a, d, acc + i);
  }
}

template <typename KV>
void AttentionOfType(const float* HWY_RESTRICT q, size_t n_q, size_t dim,
                     const detail::PagedRows& keys, const detail::PagedRows& values, size_t begin,
                     size_t end, float scale, float* HWY_RESTRICT out) {
  const hn::CappedTag<float, kAttentionLanes> d;
  const hn::CappedTag<float, kAttentionHeads> dh;
  const size_t N = hn::Lanes(d), G = hn::Lanes(dh);
  constexpr size_t C = kAttentionChunk;
  const size_t stride = (dim + N - 1) / N * N;  // rows padded with zeros to whole vectors
  const size_t groups = (n_q + G - 1) / G;      // heads padded with zeros to whole groups
  const size_t heads = groups * G;
  // The chunk's keys and values in f32 (times their row scales), per group the query heads times
  // scale transposed (dim rows of G lanes), the output sums of the heads (padded rows), per
  // group the chunk's scores (C rows of G lanes, turned into weights in place), and per head the
  // running maximum and sum.
  static thread_local std::vector<float> buffer;
  const size_t need = 2 * C * stride + heads * (dim + stride + C + 2);
  if (buffer.size() < need) buffer.resize(need);
  float* HWY_RESTRICT k = buffer.data();
  float* HWY_RESTRICT v = k + C * stride;
  float* HWY_RESTRICT qt = v + C * stride;
  float* HWY_RESTRICT acc = qt + heads * dim;
  float* HWY_RESTRICT s = acc + heads * stride;
  float* HWY_RESTRICT max = s + heads * C;
  float* HWY_RESTRICT sum = max + heads;
  for (size_t h = 0; h < heads; ++h) {
    float* HWY_RESTRICT qth = qt + h / G * dim * G + h % G;
    for (size_t i = 0; i < dim; ++i) qth[i * G] = h < n_q ? q[h * dim + i] * scale : 0.0f;
  }
  std::fill(acc, acc + heads * stride, 0.0f);
  std::fill(max, max + heads, -INFINITY);
  std::fill(sum, sum + heads, 0.0f);
  const size_t row_bytes = dim * sizeof(KV) + (std::is_same<KV, int8_t>::value ? sizeof(float) : 0);
  RowPrefetcher keys_ahead(keys, begin + kPrefetchChunks * C, end, row_bytes);
  RowPrefetcher values_ahead(values, begin + kPrefetchChunks * C, end, row_bytes);
  for (size_t j0 = begin; j0 < end; j0 += C) {
    const size_t n = HWY_MIN(C, end - j0);
    WidenRows<KV>(d, keys, j0, n, dim, stride, k);
    WidenRows<KV>(d, values, j0, n, dim, stride, v);
    const size_t pieces = (n + kScoreTokens - 1) / kScoreTokens * groups;
    size_t piece = 0;
    for (size_t g = 0; g < groups; ++g) {
      float* HWY_RESTRICT sg = s + g * C * G;
      GroupScores(dh, k, n, stride, dim, qt + g * dim * G, sg, j0 + kPrefetchChunks * C, pieces,
                  piece, keys_ahead, values_ahead);
      float* HWY_RESTRICT max_g = max + g * G;
      float* HWY_RESTRICT sum_g = sum + g * G;
      auto vmax = hn::Set(dh, -INFINITY);
      for (size_t c = 0; c < n; ++c) vmax = hn::Max(vmax, hn::LoadU(dh, sg + c * G));
      // A head with a new maximum: what was summed so far was weighted by exp(. - max) of the
      // old one.
      HWY_ALIGN float chunk_max[kAttentionHeads];
      hn::StoreU(vmax, dh, chunk_max);
      for (size_t j = 0; j < G; ++j) {
        if (chunk_max[j] <= max_g[j]) continue;
        const float rescale = std::exp(max_g[j] - chunk_max[j]);
        sum_g[j] *= rescale;
        const auto vr = hn::Set(d, rescale);
        float* HWY_RESTRICT ah = acc + (g * G + j) * stride;
        for (size_t i = 0; i < stride; i += N) {
          hn::StoreU(hn::Mul(hn::LoadU(d, ah + i), vr), d, ah + i);
        }
        max_g[j] = chunk_max[j];
      }
      // The weights exp(s - max), summed, Lanes(d) / G tokens a vector (their heads' maxima
      // repeated): the chunk's n rows of G lanes are one array.
      HWY_ALIGN float tiled[kAttentionLanes];
      for (size_t x = 0; x < N; ++x) tiled[x] = max_g[x % G];
      const auto vm = hn::LoadU(d, tiled);
      auto vsum = hn::Zero(d);
      for (size_t x = 0; x < n * G; x += N) {
        const auto e = hn::IfThenElseZero(hn::FirstN(d, n * G - x),
                                          hn::Exp(d, hn::Sub(hn::LoadU(d, sg + x), vm)));
        vsum = hn::Add(vsum, e);
        hn::StoreU(e, d, sg + x);
      }
      hn::StoreU(vsum, d, tiled);
      for (size_t x = 0; x < N; ++x) sum_g[x % G] += tiled[x];
      const size_t group_heads = HWY_MIN(G, n_q - g * G);
      float* HWY_RESTRICT acc_g = acc + g * G * stride;
      size_t j = 0;
      for (; j + 4 <= group_heads; j += 4) {
        AddWeightedRows4(d, sg + j, G, v, n, stride, acc_g + j * stride);
      }
      for (; j < group_heads; ++j) AddWeightedRows1(d, sg + j, G, v, n, stride, acc_g + j * stride);
    }
  }
  for (size_t h = 0; h < n_q; ++h) {
    const float inv = 1.0f / sum[h];
    for (size_t i = 0; i < dim; ++i) out[h * dim + i] = acc[h * stride + i] * inv;
  }
}

void Attention(const float* q, size_t n_q, size_t head_dim, const detail::PagedRows& keys,
               const detail::PagedRows& values, size_t begin, size_t end, float scale, float* out) {
  switch (keys.type) {
    case TensorType::F16:
      AttentionOfType<hwy::float16_t>(q, n_q, head_dim, keys, values, begin, end, scale, out);
      break;
    case TensorType::I8:
      AttentionOfType<int8_t>(q, n_q, head_dim, keys, values, begin, end, scale, out);
      break;
    default:
      AttentionOfType<float>(q, n_q, head_dim, keys, values, begin, end, scale, out);
      break;
  }
}
