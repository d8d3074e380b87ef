// ---- quantized matmul: activation quantization (every target) ----

constexpr size_t kQ8Bytes = sizeof(BlockQ8_0);
constexpr size_t kQ4Bytes = sizeof(BlockQ4_0);

// roundf(v): halves away from zero (hn::Round rounds them to even). v - trunc(v) is exact, and
// trunc(2 * frac) is -1, 0 or 1.
template <class V>
HWY_INLINE V RoundHalfAway(V v) {
  const V t = hn::Trunc(v);
  const V frac = hn::Sub(v, t);
  return hn::Add(t, hn::Trunc(hn::Add(frac, frac)));
}

// Quantizes rows [t_begin, t_end) of x into out (already sized), bit-exact with the reference
// quantizer of out's format, and zeroes the padding the kernels read.
void QuantizeActivationRows(const float* x, size_t x_stride, size_t t_begin, size_t t_end,
                            sllm::detail::QuantizedActivations* out) {
  constexpr size_t kSumGroup = 16;
  const hn::CappedTag<float, kSumGroup> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const size_t N = hn::Lanes(df);
  const bool f16_scale = out->format == sllm::detail::ActivationFormat::kQ8_0;
  const size_t cols = out->cols, block = out->block(), nb = cols / block;
  for (size_t t = t_begin; t < t_end; ++t) {
    const float* xr = x + t * x_stride;
    int8_t* q = out->q.data() + t * out->q_stride;
    float* scale = out->scale.data() + t * out->scale_stride;
    int32_t* sum = out->sum.data() + t * out->sum_stride;
    for (size_t b = 0; b < nb; ++b) {
      const float* xb = xr + b * block;
      auto vmax = hn::Zero(df);
      for (size_t i = 0; i < block; i += N) vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + i)));
      const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      scale[b] = f16_scale ? fp16_to_f32(f32_to_fp16(d)) : d;
      const auto vid = hn::Set(df, id);
      for (size_t g = 0; g < block; g += kSumGroup) {
        auto vsum = hn::Zero(di);
        for (size_t i = g; i < g + kSumGroup; i += N) {
          const auto code = hn::ConvertTo(di, RoundHalfAway(hn::Mul(hn::LoadU(df, xb + i), vid)));
          vsum = hn::Add(vsum, code);
          hn::StoreU(hn::DemoteTo(d8, code), d8, q + b * block + i);
        }
        sum[(b * block + g) / kSumGroup] = hn::GetLane(hn::SumOfLanes(di, vsum));
      }
    }
    std::memset(q + cols, 0, out->q_stride - cols);
    std::fill(scale + nb, scale + out->scale_stride, 0.0f);
    std::fill(sum + cols / kSumGroup, sum + out->sum_stride, 0);
  }
}

#if HWY_TARGET == HWY_AVX3_DL
// ---- quantized matmul with AVX-512 VNNI ----
// vpdpbusd multiplies unsigned by signed bytes and adds groups of four products to int32 lanes,
// with no saturation. Q4_0 codes are unsigned already; Q8_0 weights are made unsigned by adding
// 128 (xor 0x80). Either way the offset times the sum of the activation codes is subtracted by
// starting the accumulator at its negative, which keeps every block's int32 sum exact.
//
// Highway 1.0.3 compiles this target without the avx512vnni feature although it only selects it
// on CPUs that have it, so the functions that use the instruction add the feature.
#define SLLM_VNNI __attribute__((target(HWY_TARGET_STR ",avx512vnni")))

// The f16 scales of the kBlocks blocks from p (block_bytes apart; zero past `count`), as f32.
// Scalar loads: gathers, or permutes of the vector loads, cost more here.
template <size_t kBlocks, size_t kBlockBytes>
SLLM_VNNI HWY_INLINE __m128 StepScales(const uint8_t* p, size_t count) {
  uint64_t words = 0;
  for (size_t k = 0; k < kBlocks; ++k) {
    uint16_t d = 0;
    if (k < count) std::memcpy(&d, p + k * kBlockBytes, 2);
    words |= uint64_t{d} << (16 * k);
  }
  return _mm_cvtph_ps(_mm_cvtsi64_si128(int64_t(words)));
}

SLLM_VNNI HWY_INLINE __m512i Dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  return _mm512_dpbusd_epi32(acc, u8, s8);
}

// The direct kernel (decode and small batches) streams the weight rows in their GGUF layout, one
// row after another so that the hardware prefetcher sees one sequential stream, and takes a step
// of 64 activation codes (2 Q8_0 blocks) or 128 (4 Q4_0 blocks) at a time. The int32 sums of a
// step fill 16 lanes: lanes 8k..8k+7 belong to block k of the step for Q8_0, lanes 4k..4k+3 for
// Q4_0 (Lanes() gives the block of each lane). What depends only on the activations is prepared
// once per call, kXVectors vectors per step and token: the codes, the negated correction that
// starts the accumulator, and the step's activation scales (in the low lanes of the last).
struct Q8Step {
  static constexpr size_t kBlockBytes = kQ8Bytes;
  static constexpr size_t kBlocks = 2;
  static constexpr size_t kXVectors = 3;
  // The correction is 128 times the sum of each lane's 4 codes (the weights' offset of 128).
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales, __m512i* x) {
    const __m512i v = _mm512_loadu_si512(codes);
    const __m512i bias = Dpbusd(_mm512_setzero_si512(), _mm512_set1_epi8(char(0x80)), v);
    const __m512 dx = _mm512_castps128_ps512(_mm_setr_ps(scales[0], scales[1], 0.0f, 0.0f));
    _mm512_store_si512(x, v);
    _mm512_store_si512(x + 1, _mm512_sub_epi32(_mm512_setzero_si512(), bias));
    _mm512_store_si512(x + 2, _mm512_castps_si512(dx));
  }
  struct W {
    __m512i u8;
    __m128 scales;  // of the step's blocks
  };
  // The codes of the step's 2 blocks, by two 32-byte loads. A lone last block leaves the upper
  // half to 128 (zero plus the offset); the activation codes there are zero padding, and so are
  // their correction and their scale, so it adds nothing.
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t /*bytes*/) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 2));
    const __m512i codes =
        kWhole ? _mm512_inserti64x4(
                     _mm512_castsi256_si512(lo),
                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + kQ8Bytes + 2)), 1)
               : _mm512_zextsi256_si512(lo);
    return {_mm512_xor_si512(codes, _mm512_set1_epi8(char(0x80))),
            StepScales<2, kQ8Bytes>(p, kWhole ? 2 : 1)};
  }
  // The block of each lane.
  static SLLM_VNNI HWY_INLINE __m512i Lanes() {
    return _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  }
  static SLLM_VNNI HWY_INLINE __m512i Dot(const W& w, const __m512i* x) {
    return Dpbusd(_mm512_load_si512(x + 1), w.u8, _mm512_load_si512(x));
  }
};

struct Q4Step {
  static constexpr size_t kBlockBytes = kQ4Bytes;
  static constexpr size_t kBlocks = 4;
  static constexpr size_t kXVectors = 4;
  // Byte k of a block's codes holds values k (low nibble) and k + 16 (high nibble), so the
  // activation codes are regrouped to match: lo = values 0-15 of the 4 blocks, hi = 16-31. The
  // correction is 8 times the sum of each lane's 8 codes (the weight codes are value + 8).
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales, __m512i* x) {
    const __m512i x0 = _mm512_loadu_si512(codes);
    const __m512i x1 = _mm512_loadu_si512(codes + 64);
    const __m512i lo = _mm512_shuffle_i64x2(x0, x1, 0x88);
    const __m512i hi = _mm512_shuffle_i64x2(x0, x1, 0xdd);
    const __m512i eight = _mm512_set1_epi8(8);
    const __m512i bias = Dpbusd(Dpbusd(_mm512_setzero_si512(), eight, lo), eight, hi);
    const __m512 dx = _mm512_castps128_ps512(_mm_loadu_ps(scales));
    _mm512_store_si512(x, lo);
    _mm512_store_si512(x + 1, hi);
    _mm512_store_si512(x + 2, _mm512_sub_epi32(_mm512_setzero_si512(), bias));
    _mm512_store_si512(x + 3, _mm512_castps_si512(dx));
  }
  struct W {
    __m512i lo, hi;
    __m128 scales;  // of the step's blocks
  };
  // The 16 code bytes of each of the 4 blocks, picked from loads at +0 and +8 (72 bytes); a
  // partial step reads only its `bytes` and leaves zeros.
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t bytes) {
    alignas(64) static constexpr uint8_t kCodeBytes[64] = {
        2,   3,   4,   5,   6,   7,   8,   9,   10,  11,  12,  13,  14,  15,  16,  17,
        20,  21,  22,  23,  24,  25,  26,  27,  28,  29,  30,  31,  32,  33,  34,  35,
        38,  39,  40,  41,  42,  43,  44,  45,  46,  47,  48,  49,  50,  51,  52,  53,
        112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127};
    const __m512i v0 = kWhole ? _mm512_loadu_si512(p)
                              : _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, unsigned(bytes)), p);
    const __m512i v1 = kWhole
                           ? _mm512_loadu_si512(p + 8)
                           : _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, unsigned(bytes - 8)), p + 8);
    const __m512i codes = _mm512_permutex2var_epi8(v0, _mm512_load_si512(kCodeBytes), v1);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    return {_mm512_and_si512(codes, low4), _mm512_and_si512(_mm512_srli_epi16(codes, 4), low4),
            StepScales<4, kQ4Bytes>(p, bytes / kQ4Bytes)};
  }
  static SLLM_VNNI HWY_INLINE __m512i Lanes() {
    return _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  }
  static SLLM_VNNI HWY_INLINE __m512i Dot(const W& w, const __m512i* x) {
    return Dpbusd(Dpbusd(_mm512_load_si512(x + 2), w.lo, _mm512_load_si512(x)), w.hi,
                  _mm512_load_si512(x + 1));
  }
};

// The prepared activation vectors of n tokens from t0: token t, step s at
// out + (t * steps + s) * Step::kXVectors.
template <class Step>
SLLM_VNNI void PrepareTokens(const sllm::detail::QuantizedActivations& x, size_t t0, size_t n,
                             size_t steps, __m512i* out) {
  for (size_t t = 0; t < n; ++t) {
    for (size_t s = 0; s < steps; ++s) {
      Step::PrepareX(x.codes(t0 + t) + s * Step::kBlocks * kQuantBlock,
                     x.scales(t0 + t) + s * Step::kBlocks, out + (t * steps + s) * Step::kXVectors);
    }
  }
}

// One step of one row for T tokens: `bytes` of the row from p, added to acc.
template <class Step, int T, bool kWhole>
SLLM_VNNI HWY_INLINE void DirectStep(const uint8_t* p, size_t bytes, const __m512i* const (&xp)[T],
                                     size_t s, __m512 (&acc)[T]) {
  const typename Step::W wv = Step::template LoadW<kWhole>(p, bytes);
  for (int t = 0; t < T; ++t) {
    const __m512i* x = xp[t] + s * Step::kXVectors;
    // The products of the few block scales, then spread over the lanes.
    const __m128 dwdx =
        _mm_mul_ps(wv.scales, _mm_load_ps(reinterpret_cast<const float*>(x + Step::kXVectors - 1)));
    const __m512 scale = _mm512_permutexvar_ps(Step::Lanes(), _mm512_castps128_ps512(dwdx));
    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(Step::Dot(wv, x)), scale, acc[t]);
  }
}

// Row r of the weights times T prepared tokens from t0. Even and odd steps add to separate
// accumulators, which halves the chain of dependent additions.
template <class Step, int T>
SLLM_VNNI void DirectRow(const uint8_t* row, size_t nb, const __m512i* prepared, size_t steps,
                         size_t t0, float* y, size_t y_stride, size_t r) {
  constexpr size_t kStepBytes = Step::kBlocks * Step::kBlockBytes;
  const __m512i* xp[T];
  for (int t = 0; t < T; ++t) xp[t] = prepared + size_t(t) * steps * Step::kXVectors;
  __m512 even[T], odd[T];
  for (int t = 0; t < T; ++t) even[t] = odd[t] = _mm512_setzero_ps();
  const size_t whole = nb / Step::kBlocks;
  size_t s = 0;
  for (; s + 2 <= whole; s += 2) {
    DirectStep<Step, T, true>(row + s * kStepBytes, kStepBytes, xp, s, even);
    DirectStep<Step, T, true>(row + (s + 1) * kStepBytes, kStepBytes, xp, s + 1, odd);
  }
  if (s < whole) {
    DirectStep<Step, T, true>(row + s * kStepBytes, kStepBytes, xp, s, even);
    ++s;
  }
  if (s < steps) {
    DirectStep<Step, T, false>(row + s * kStepBytes, (nb - s * Step::kBlocks) * Step::kBlockBytes,
                               xp, s, odd);
  }
  for (int t = 0; t < T; ++t) {
    y[(t0 + t) * y_stride + r] = _mm512_reduce_add_ps(_mm512_add_ps(even[t], odd[t]));
  }
}

// Rows [row_begin, row_end) for x's tokens, two at a time.
template <class Step>
SLLM_VNNI void DirectMatmul(const uint8_t* w, size_t row_bytes, size_t nb,
                            const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                            size_t row_begin, size_t row_end) {
  const size_t steps = (nb + Step::kBlocks - 1) / Step::kBlocks;
  static thread_local sllm::detail::AlignedBuffer<uint8_t> buffer;
  for (size_t t0 = 0; t0 < x.n; t0 += 2) {
    const size_t n = std::min<size_t>(2, x.n - t0);
    const size_t bytes = n * steps * Step::kXVectors * sizeof(__m512i);
    if (buffer.size() < bytes) buffer.resize(bytes);
    __m512i* prepared = reinterpret_cast<__m512i*>(buffer.data());
    PrepareTokens<Step>(x, t0, n, steps, prepared);
    for (size_t r = row_begin; r < row_end; ++r) {
      if (n == 2) {
        DirectRow<Step, 2>(w + r * row_bytes, nb, prepared, steps, t0, y, y_stride, r);
      } else {
        DirectRow<Step, 1>(w + r * row_bytes, nb, prepared, steps, t0, y, y_stride, r);
      }
    }
  }
}

// Packed kernel (prefill). A panel of 16 * kPanelVectors weight rows is repacked per block into
// vectors whose lane i holds 4 consecutive unsigned codes of row i, so that one vpdpbusd with a
// broadcast group of 4 activation codes advances 16 rows at once and the int32 lane of each row
// holds the whole block's sum after 8 of them. Per block the panel holds 8 code groups and then
// the f32 scales, each as kPanelVectors vectors of 64 bytes.
constexpr size_t kPanelVectors = 2;
constexpr size_t kPanelRows = 16 * kPanelVectors;
constexpr size_t kPanelBlockBytes = 9 * kPanelVectors * 64;
constexpr int kPanelTokens = 6;

// Transposes the 4x4 matrices of 32-bit lanes in each 128-bit chunk of a, b, c, d.
SLLM_VNNI HWY_INLINE void Transpose4x4(__m512i& a, __m512i& b, __m512i& c, __m512i& d) {
  const __m512i ab_lo = _mm512_unpacklo_epi32(a, b);
  const __m512i ab_hi = _mm512_unpackhi_epi32(a, b);
  const __m512i cd_lo = _mm512_unpacklo_epi32(c, d);
  const __m512i cd_hi = _mm512_unpackhi_epi32(c, d);
  a = _mm512_unpacklo_epi64(ab_lo, cd_lo);
  b = _mm512_unpackhi_epi64(ab_lo, cd_lo);
  c = _mm512_unpacklo_epi64(ab_hi, cd_hi);
  d = _mm512_unpackhi_epi64(ab_hi, cd_hi);
}

// 16 bytes at offset of each of 16 rows (row i at rows + i * row_bytes; zeros for i >= live),
// as 4 vectors: vector g holds bytes 4g..4g+3 of row i in lane i.
SLLM_VNNI HWY_INLINE void TransposeRows(const uint8_t* rows, size_t row_bytes, size_t live,
                                        size_t offset, __m512i (&out)[4]) {
  auto row = [&](size_t i) SLLM_VNNI {
    return i < live
               ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows + i * row_bytes + offset))
               : _mm_setzero_si128();
  };
  for (size_t j = 0; j < 4; ++j) {
    __m512i z = _mm512_castsi128_si512(row(j));
    z = _mm512_inserti32x4(z, row(j + 4), 1);
    z = _mm512_inserti32x4(z, row(j + 8), 2);
    out[j] = _mm512_inserti32x4(z, row(j + 12), 3);
  }
  Transpose4x4(out[0], out[1], out[2], out[3]);
}

// Packs rows [r0, r0 + n_rows) (n_rows <= kPanelRows) of a Q8_0 or Q4_0 matrix; lanes of rows
// past n_rows hold zeros.
SLLM_VNNI void PackPanel(TensorType type, const uint8_t* w, size_t row_bytes, size_t nb, size_t r0,
                         size_t n_rows, uint8_t* panel) {
  const bool q8 = type == TensorType::Q8_0;
  const size_t block_bytes = q8 ? kQ8Bytes : kQ4Bytes;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  constexpr size_t kGroupStride = kPanelVectors * 64;
  for (size_t v = 0; v < kPanelVectors; ++v) {
    const size_t first = v * 16;
    const size_t live = first < n_rows ? std::min<size_t>(16, n_rows - first) : 0;
    const uint8_t* base = w + (r0 + first) * row_bytes;
    for (size_t b = 0; b < nb; ++b) {
      const uint8_t* p = base + b * block_bytes;
      uint8_t* out = panel + b * kPanelBlockBytes + v * 64;
      __m512i groups[4];
      if (q8) {
        for (size_t half = 0; half < 2; ++half) {
          TransposeRows(p, row_bytes, live, 2 + 16 * half, groups);
          for (size_t g = 0; g < 4; ++g) {
            _mm512_store_si512(out + (4 * half + g) * kGroupStride,
                               _mm512_xor_si512(groups[g], flip));
          }
        }
      } else {
        TransposeRows(p, row_bytes, live, 2, groups);
        for (size_t g = 0; g < 4; ++g) {
          _mm512_store_si512(out + g * kGroupStride, _mm512_and_si512(groups[g], low4));
          _mm512_store_si512(out + (g + 4) * kGroupStride,
                             _mm512_and_si512(_mm512_srli_epi32(groups[g], 4), low4));
        }
      }
      alignas(32) uint16_t d[16] = {};
      for (size_t i = 0; i < live; ++i) std::memcpy(&d[i], p + i * row_bytes, 2);
      _mm512_store_ps(out + 8 * kGroupStride,
                      _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(d))));
    }
  }
}

// T tokens from t0 times a packed panel of rows [r0, r0 + n_rows). starts: per token and block,
// minus the sum of its codes times what packing added to the weight codes (128 for Q8_0, 8 for
// Q4_0 whose codes are value + 8), nb entries per token.
template <int T>
SLLM_VNNI void PanelTile(const uint8_t* panel, size_t nb, const int32_t* starts,
                         const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                         size_t y_stride, size_t r0, size_t n_rows) {
  constexpr size_t V = kPanelVectors;
  const int8_t* xq[T];
  const float* xs[T];
  const int32_t* xstart[T];
  for (int t = 0; t < T; ++t) {
    xq[t] = x.codes(t0 + t);
    xs[t] = x.scales(t0 + t);
    xstart[t] = starts + (t0 + t) * nb;
  }
  __m512 acc[T][V];
  for (int t = 0; t < T; ++t) {
    for (size_t v = 0; v < V; ++v) acc[t][v] = _mm512_setzero_ps();
  }
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* pb = panel + b * kPanelBlockBytes;
    __m512i isum[T][V];
    for (int t = 0; t < T; ++t) {
      const __m512i start = _mm512_set1_epi32(xstart[t][b]);
      for (size_t v = 0; v < V; ++v) isum[t][v] = start;
    }
    for (size_t g = 0; g < 8; ++g) {
      __m512i wv[V];
      for (size_t v = 0; v < V; ++v) wv[v] = _mm512_load_si512(pb + (g * V + v) * 64);
      for (int t = 0; t < T; ++t) {
        int32_t group;
        std::memcpy(&group, xq[t] + b * kQuantBlock + 4 * g, 4);
        const __m512i xb = _mm512_set1_epi32(group);
        for (size_t v = 0; v < V; ++v) isum[t][v] = Dpbusd(isum[t][v], wv[v], xb);
      }
    }
    __m512 dw[V];
    for (size_t v = 0; v < V; ++v) dw[v] = _mm512_load_ps(pb + (8 * V + v) * 64);
    for (int t = 0; t < T; ++t) {
      const __m512 dx = _mm512_set1_ps(xs[t][b]);
      for (size_t v = 0; v < V; ++v) {
        acc[t][v] =
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t][v]), _mm512_mul_ps(dw[v], dx), acc[t][v]);
      }
    }
  }
  for (size_t v = 0; v < V; ++v) {
    if (16 * v >= n_rows) break;
    const size_t live = std::min<size_t>(16, n_rows - 16 * v);
    const __mmask16 valid = live == 16 ? __mmask16(0xffff) : __mmask16((1u << live) - 1);
    for (int t = 0; t < T; ++t) {
      _mm512_mask_storeu_ps(y + (t0 + t) * y_stride + r0 + 16 * v, valid, acc[t][v]);
    }
  }
}

// The last rem < kPanelTokens tokens, with a tile of exactly that many.
template <int T>
SLLM_VNNI void PanelRemainder(size_t rem, const uint8_t* panel, size_t nb, const int32_t* starts,
                              const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                              size_t y_stride, size_t r0, size_t n_rows) {
  if (rem == T) {
    PanelTile<T>(panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  } else if constexpr (T > 1) {
    PanelRemainder<T - 1>(rem, panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  }
}

SLLM_VNNI void PanelTokens(const uint8_t* panel, size_t nb, const int32_t* starts,
                           const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                           size_t r0, size_t n_rows) {
  size_t t0 = 0;
  for (; t0 + kPanelTokens <= x.n; t0 += kPanelTokens) {
    PanelTile<kPanelTokens>(panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  }
  if (t0 < x.n) {
    PanelRemainder<kPanelTokens - 1>(x.n - t0, panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  }
}

// From this many activation rows on, packing panels is faster than streaming the weights.
constexpr size_t kPackedMinTokens = 3;

SLLM_VNNI void MatmulQRows(TensorType type, const uint8_t* w, size_t cols, size_t row_bytes,
                           const sllm::detail::QuantizedActivations* x, float* y, size_t y_stride,
                           size_t row_begin, size_t row_end) {
  const size_t nb = cols / kQuantBlock;
  if (x->n < kPackedMinTokens) {
    if (type == TensorType::Q8_0) {
      DirectMatmul<Q8Step>(w, row_bytes, nb, *x, y, y_stride, row_begin, row_end);
    } else {
      DirectMatmul<Q4Step>(w, row_bytes, nb, *x, y, y_stride, row_begin, row_end);
    }
    return;
  }
  static thread_local sllm::detail::AlignedBuffer<uint8_t> panel;
  static thread_local sllm::detail::AlignedBuffer<int32_t> starts;
  // The buffers only grow: matrices of different widths alternate.
  if (panel.size() < nb * kPanelBlockBytes) panel.resize(nb * kPanelBlockBytes);
  if (starts.size() < x->n * nb) starts.resize(x->n * nb);
  const int32_t offset = type == TensorType::Q8_0 ? 128 : 8;
  for (size_t t = 0; t < x->n; ++t) {
    const int32_t* sums = x->sums(t);  // per 16 codes
    for (size_t b = 0; b < nb; ++b) starts[t * nb + b] = -(sums[2 * b] + sums[2 * b + 1]) * offset;
  }
  for (size_t r = row_begin; r < row_end; r += kPanelRows) {
    const size_t n_rows = std::min(kPanelRows, row_end - r);
    PackPanel(type, w, row_bytes, nb, r, n_rows, panel.data());
    PanelTokens(panel.data(), nb, starts.data(), *x, y, y_stride, r, n_rows);
  }
}

#undef SLLM_VNNI
#else
// ---- quantized matmul, portable: int8 codes widened to int16, pairwise products summed to int32
// (pmaddwd on x86), one weight row and one activation row at a time ----

HWY_INLINE float RowDotQ8(const uint8_t* w, size_t nb, const int8_t* xq, const float* xs) {
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Repartition<float, decltype(d16)> df;
  const size_t N = hn::Lanes(d16);
  auto acc = hn::Zero(df);
  for (size_t b = 0; b < nb; ++b, w += kQ8Bytes, xq += kQuantBlock) {
    const int8_t* codes = reinterpret_cast<const int8_t*>(w + 2);
    auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
    for (size_t i = 0; i < kQuantBlock; i += N) {
      sum0 = hn::ReorderWidenMulAccumulate(d32, hn::PromoteTo(d16, hn::LoadU(d8, codes + i)),
                                           hn::PromoteTo(d16, hn::LoadU(d8, xq + i)), sum0, sum1);
    }
    uint16_t d;
    std::memcpy(&d, w, 2);
    acc = hn::MulAdd(hn::ConvertTo(df, hn::Add(sum0, sum1)), hn::Set(df, fp16_to_f32(d) * xs[b]),
                     acc);
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

HWY_INLINE float RowDotQ4(const uint8_t* w, size_t nb, const int8_t* xq, const float* xs) {
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Rebind<uint8_t, decltype(d16)> du8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Repartition<float, decltype(d16)> df;
  const size_t N = hn::Lanes(d16);
  constexpr size_t kHalf = kQuantBlock / 2;
  const auto low4 = hn::Set(du8, uint8_t{0x0f});
  const auto eight = hn::Set(d16, int16_t{8});
  auto acc = hn::Zero(df);
  for (size_t b = 0; b < nb; ++b, w += kQ4Bytes, xq += kQuantBlock) {
    auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
    for (size_t i = 0; i < kHalf; i += N) {
      const auto packed = hn::LoadU(du8, w + 2 + i);
      const auto lo = hn::Sub(hn::PromoteTo(d16, hn::And(packed, low4)), eight);
      const auto hi = hn::Sub(hn::PromoteTo(d16, hn::ShiftRight<4>(packed)), eight);
      const auto x_lo = hn::PromoteTo(d16, hn::LoadU(d8, xq + i));
      const auto x_hi = hn::PromoteTo(d16, hn::LoadU(d8, xq + kHalf + i));
      sum0 = hn::ReorderWidenMulAccumulate(d32, lo, x_lo, sum0, sum1);
      sum0 = hn::ReorderWidenMulAccumulate(d32, hi, x_hi, sum0, sum1);
    }
    uint16_t d;
    std::memcpy(&d, w, 2);
    acc = hn::MulAdd(hn::ConvertTo(df, hn::Add(sum0, sum1)), hn::Set(df, fp16_to_f32(d) * xs[b]),
                     acc);
  }
  return hn::GetLane(hn::SumOfLanes(df, acc));
}

void MatmulQRows(TensorType type, const uint8_t* w, size_t cols, size_t row_bytes,
                 const sllm::detail::QuantizedActivations* x, float* y, size_t y_stride,
                 size_t row_begin, size_t row_end) {
  const size_t nb = cols / kQuantBlock;
  const bool q8 = type == TensorType::Q8_0;
  for (size_t r = row_begin; r < row_end; ++r) {
    const uint8_t* wr = w + r * row_bytes;
    for (size_t t = 0; t < x->n; ++t) {
      y[t * y_stride + r] = q8 ? RowDotQ8(wr, nb, x->codes(t), x->scales(t))
                               : RowDotQ4(wr, nb, x->codes(t), x->scales(t));
    }
  }
}
#endif  // HWY_TARGET == HWY_AVX3_DL
