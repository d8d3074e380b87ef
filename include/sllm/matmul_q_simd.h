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

// Quantizes rows [t_begin, t_end) of x into out (already sized), bit-exact with
// ref::quantize_row_q8_0, and zeroes the padding the kernels read.
void QuantizeActivationRows(const float* x, size_t x_stride, size_t t_begin, size_t t_end,
                            sllm::detail::QuantizedActivations* out) {
  const hn::CappedTag<float, kQuantBlock> df;
  const hn::Rebind<int32_t, decltype(df)> di;
  const hn::Rebind<int8_t, decltype(df)> d8;
  const size_t N = hn::Lanes(df);
  const size_t cols = out->cols, nb = cols / kQuantBlock;
  for (size_t t = t_begin; t < t_end; ++t) {
    const float* xr = x + t * x_stride;
    int8_t* q = out->q.data() + t * out->q_stride;
    float* scale = out->scale.data() + t * out->block_stride;
    int32_t* sum = out->sum.data() + t * out->block_stride;
    for (size_t b = 0; b < nb; ++b) {
      const float* xb = xr + b * kQuantBlock;
      auto vmax = hn::Zero(df);
      for (size_t i = 0; i < kQuantBlock; i += N) {
        vmax = hn::Max(vmax, hn::Abs(hn::LoadU(df, xb + i)));
      }
      const float amax = hn::GetLane(hn::MaxOfLanes(df, vmax));
      const float d = amax / 127.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      scale[b] = fp16_to_f32(f32_to_fp16(d));
      const auto vid = hn::Set(df, id);
      auto vsum = hn::Zero(di);
      for (size_t i = 0; i < kQuantBlock; i += N) {
        const auto code = hn::ConvertTo(di, RoundHalfAway(hn::Mul(hn::LoadU(df, xb + i), vid)));
        vsum = hn::Add(vsum, code);
        hn::StoreU(hn::DemoteTo(d8, code), d8, q + b * kQuantBlock + i);
      }
      sum[b] = hn::GetLane(hn::SumOfLanes(di, vsum));
    }
    std::memset(q + cols, 0, out->q_stride - cols);
    std::fill(scale + nb, scale + out->block_stride, 0.0f);
    std::fill(sum + nb, sum + out->block_stride, 0);
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

// Scales of up to 16 consecutive blocks starting at p (offsets[i] = i * block bytes), as f32;
// zero past `count`. Each lane reads the block's first 4 bytes: its f16 scale and 2 codes.
SLLM_VNNI HWY_INLINE __m512 GatherScales(const uint8_t* p, __m512i offsets, size_t count) {
  const __mmask16 valid = count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1);
  const __m512i raw = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), valid, offsets, p, 1);
  return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw));
}

SLLM_VNNI HWY_INLINE __m512i BlockOffsets(size_t block_bytes) {
  return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                            _mm512_set1_epi32(int32_t(block_bytes)));
}

SLLM_VNNI HWY_INLINE __m512i Dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  return _mm512_dpbusd_epi32(acc, u8, s8);
}

// The 16 int32 lanes of a pair of Q8_0 blocks: lanes 0-7 block 0, 8-15 block 1.
// The 16 int32 lanes of a quad of Q4_0 blocks: lanes 4k..4k+3 block k.
// Scale lane patterns (indices into 16 per-block scales) for pair p and quad q:
SLLM_VNNI HWY_INLINE __m512i PairScaleIndex(size_t p) {
  return _mm512_add_epi32(_mm512_set1_epi32(int32_t(2 * p)),
                          _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0));
}
SLLM_VNNI HWY_INLINE __m512i QuadScaleIndex(size_t q) {
  return _mm512_add_epi32(_mm512_set1_epi32(int32_t(4 * q)),
                          _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
}

// Direct kernel (decode and small batches): R weight rows times T activation rows, reading the
// weights in their GGUF layout, each loaded vector used for the T tokens. Blocks are taken 16 at
// a time so that their scales are gathered once per row into one vector.
template <int R, int T>
SLLM_VNNI void DirectTileQ8(const uint8_t* w, size_t row_bytes, size_t nb,
                            const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                            size_t y_stride, size_t r0) {
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m512i offsets = BlockOffsets(kQ8Bytes);
  const uint8_t* wr[R];
  for (int r = 0; r < R; ++r) wr[r] = w + (r0 + r) * row_bytes;
  const int8_t* xq[T];
  const float* xs[T];
  for (int t = 0; t < T; ++t) {
    xq[t] = x.codes(t0 + t);
    xs[t] = x.scales(t0 + t);
  }
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (size_t g0 = 0; g0 < nb; g0 += 16) {
    const size_t count = std::min<size_t>(16, nb - g0);
    __m512 scale[R][T];
    for (int r = 0; r < R; ++r) {
      const __m512 dw = GatherScales(wr[r] + g0 * kQ8Bytes, offsets, count);
      for (int t = 0; t < T; ++t) scale[r][t] = _mm512_mul_ps(dw, _mm512_loadu_ps(xs[t] + g0));
    }
    for (size_t p = 0; 2 * p < count; ++p) {
      const size_t blk = g0 + 2 * p;
      const bool pair = blk + 1 < nb;
      __m512i xv[T], ncorr[T];
      for (int t = 0; t < T; ++t) {
        // Past the last block the codes are zero padding, so a lone block needs no mask here.
        xv[t] = _mm512_loadu_si512(xq[t] + blk * kQuantBlock);
        ncorr[t] =
            _mm512_sub_epi32(_mm512_setzero_si512(), Dpbusd(_mm512_setzero_si512(), flip, xv[t]));
      }
      const __m512i sidx = PairScaleIndex(p);
      for (int r = 0; r < R; ++r) {
        const uint8_t* pb = wr[r] + blk * kQ8Bytes;
        const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + 2));
        const __m512i wv =
            pair ? _mm512_inserti64x4(
                       _mm512_castsi256_si512(lo),
                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb + kQ8Bytes + 2)), 1)
                 : _mm512_zextsi256_si512(lo);
        const __m512i wu = _mm512_xor_si512(wv, flip);
        for (int t = 0; t < T; ++t) {
          const __m512i isum = Dpbusd(ncorr[t], wu, xv[t]);
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
                                      _mm512_permutexvar_ps(sidx, scale[r][t]), acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) y[(t0 + t) * y_stride + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
  }
}

template <int R, int T>
SLLM_VNNI void DirectTileQ4(const uint8_t* w, size_t row_bytes, size_t nb,
                            const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                            size_t y_stride, size_t r0) {
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const __m512i eight = _mm512_set1_epi8(8);
  const __m512i offsets = BlockOffsets(kQ4Bytes);
  // Gathers the 16 code bytes of each of 4 blocks from two loads at +0 and +8 (72 bytes).
  alignas(64) static constexpr uint8_t kCodeBytes[64] = {
      2,   3,   4,   5,   6,   7,   8,   9,   10,  11,  12,  13,  14,  15,  16,  17,
      20,  21,  22,  23,  24,  25,  26,  27,  28,  29,  30,  31,  32,  33,  34,  35,
      38,  39,  40,  41,  42,  43,  44,  45,  46,  47,  48,  49,  50,  51,  52,  53,
      112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127};
  const __m512i code_bytes = _mm512_load_si512(kCodeBytes);
  const uint8_t* wr[R];
  for (int r = 0; r < R; ++r) wr[r] = w + (r0 + r) * row_bytes;
  const int8_t* xq[T];
  const float* xs[T];
  for (int t = 0; t < T; ++t) {
    xq[t] = x.codes(t0 + t);
    xs[t] = x.scales(t0 + t);
  }
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  }
  for (size_t g0 = 0; g0 < nb; g0 += 16) {
    const size_t count = std::min<size_t>(16, nb - g0);
    __m512 scale[R][T];
    for (int r = 0; r < R; ++r) {
      const __m512 dw = GatherScales(wr[r] + g0 * kQ4Bytes, offsets, count);
      for (int t = 0; t < T; ++t) scale[r][t] = _mm512_mul_ps(dw, _mm512_loadu_ps(xs[t] + g0));
    }
    for (size_t q = 0; 4 * q < count; ++q) {
      const size_t blk = g0 + 4 * q;
      const size_t bytes = std::min<size_t>(4, nb - blk) * kQ4Bytes;
      // Byte k of the codes holds values k (low nibble) and k + 16 (high nibble), so the
      // activation codes are regrouped to match: lo = values 0-15 of the 4 blocks, hi = 16-31.
      __m512i xlo[T], xhi[T], ncorr[T];
      for (int t = 0; t < T; ++t) {
        const __m512i x0 = _mm512_loadu_si512(xq[t] + blk * kQuantBlock);
        const __m512i x1 = _mm512_loadu_si512(xq[t] + blk * kQuantBlock + 64);
        xlo[t] = _mm512_shuffle_i64x2(x0, x1, 0x88);
        xhi[t] = _mm512_shuffle_i64x2(x0, x1, 0xdd);
        const __m512i sum8 = Dpbusd(Dpbusd(_mm512_setzero_si512(), eight, xlo[t]), eight, xhi[t]);
        ncorr[t] = _mm512_sub_epi32(_mm512_setzero_si512(), sum8);
      }
      const __m512i sidx = QuadScaleIndex(q);
      for (int r = 0; r < R; ++r) {
        const uint8_t* pb = wr[r] + blk * kQ4Bytes;
        __m512i v0, v1;
        if (bytes == 4 * kQ4Bytes) {
          v0 = _mm512_loadu_si512(pb);
          v1 = _mm512_loadu_si512(pb + 8);
        } else {  // the row's last blocks: read none of the bytes after them
          v0 = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, unsigned(bytes)), pb);
          v1 = _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, unsigned(bytes - 8)), pb + 8);
        }
        const __m512i codes = _mm512_permutex2var_epi8(v0, code_bytes, v1);
        const __m512i lo = _mm512_and_si512(codes, low4);
        const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(codes, 4), low4);
        for (int t = 0; t < T; ++t) {
          const __m512i isum = Dpbusd(Dpbusd(ncorr[t], lo, xlo[t]), hi, xhi[t]);
          acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum),
                                      _mm512_permutexvar_ps(sidx, scale[r][t]), acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) y[(t0 + t) * y_stride + r0 + r] = _mm512_reduce_add_ps(acc[r][t]);
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
constexpr size_t kPanelTokens = 6;

// Packs rows [r0, r0 + n_rows) (n_rows <= kPanelRows) of a Q8_0 or Q4_0 matrix; lanes of rows
// past n_rows are never stored, so they are left as the gathers' zeros.
SLLM_VNNI void PackPanel(TensorType type, const uint8_t* w, size_t row_bytes, size_t nb, size_t r0,
                         size_t n_rows, uint8_t* panel) {
  const bool q8 = type == TensorType::Q8_0;
  const size_t block_bytes = q8 ? kQ8Bytes : kQ4Bytes;
  const __m512i rows =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(int32_t(row_bytes)));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (size_t v = 0; v < kPanelVectors; ++v) {
    const size_t first = v * 16;
    if (first >= n_rows) break;
    const size_t live = std::min<size_t>(16, n_rows - first);
    const __mmask16 valid = live == 16 ? __mmask16(0xffff) : __mmask16((1u << live) - 1);
    const uint8_t* base = w + (r0 + first) * row_bytes;
    for (size_t b = 0; b < nb; ++b) {
      const uint8_t* p = base + b * block_bytes;
      uint8_t* out = panel + b * kPanelBlockBytes + v * 64;
      if (q8) {
        for (size_t g = 0; g < 8; ++g) {
          const __m512i raw = _mm512_mask_i32gather_epi32(zero, valid, rows, p + 2 + 4 * g, 1);
          _mm512_store_si512(out + g * kPanelVectors * 64, _mm512_xor_si512(raw, flip));
        }
      } else {
        for (size_t g = 0; g < 4; ++g) {
          const __m512i raw = _mm512_mask_i32gather_epi32(zero, valid, rows, p + 2 + 4 * g, 1);
          _mm512_store_si512(out + g * kPanelVectors * 64, _mm512_and_si512(raw, low4));
          _mm512_store_si512(out + (g + 4) * kPanelVectors * 64,
                             _mm512_and_si512(_mm512_srli_epi32(raw, 4), low4));
        }
      }
      const __m512i raw = _mm512_mask_i32gather_epi32(zero, valid, rows, p, 1);
      _mm512_store_ps(out + 8 * kPanelVectors * 64, _mm512_cvtph_ps(_mm512_cvtepi32_epi16(raw)));
    }
  }
}

// T tokens from t0 times a packed panel of rows [r0, r0 + n_rows). offset: what packing added
// to the weight codes (128 for Q8_0, 8 for Q4_0 whose codes are value + 8).
template <int T>
SLLM_VNNI void PanelTile(const uint8_t* panel, size_t nb, int offset,
                         const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                         size_t y_stride, size_t r0, size_t n_rows) {
  constexpr size_t V = kPanelVectors;
  const int8_t* xq[T];
  const float* xs[T];
  const int32_t* xsum[T];
  for (int t = 0; t < T; ++t) {
    xq[t] = x.codes(t0 + t);
    xs[t] = x.scales(t0 + t);
    xsum[t] = x.sums(t0 + t);
  }
  __m512 acc[T][V];
  for (int t = 0; t < T; ++t) {
    for (size_t v = 0; v < V; ++v) acc[t][v] = _mm512_setzero_ps();
  }
  for (size_t b = 0; b < nb; ++b) {
    const uint8_t* pb = panel + b * kPanelBlockBytes;
    __m512i isum[T][V];
    for (int t = 0; t < T; ++t) {
      const __m512i start = _mm512_set1_epi32(-xsum[t][b] * offset);
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

SLLM_VNNI void PanelTokens(const uint8_t* panel, size_t nb, int offset,
                           const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                           size_t r0, size_t n_rows) {
  size_t t0 = 0;
  for (; t0 + kPanelTokens <= x.n; t0 += kPanelTokens) {
    PanelTile<kPanelTokens>(panel, nb, offset, x, t0, y, y_stride, r0, n_rows);
  }
  switch (x.n - t0) {
    case 5:
      PanelTile<5>(panel, nb, offset, x, t0, y, y_stride, r0, n_rows);
      break;
    case 4:
      PanelTile<4>(panel, nb, offset, x, t0, y, y_stride, r0, n_rows);
      break;
    case 3:
      PanelTile<3>(panel, nb, offset, x, t0, y, y_stride, r0, n_rows);
      break;
    case 2:
      PanelTile<2>(panel, nb, offset, x, t0, y, y_stride, r0, n_rows);
      break;
    case 1:
      PanelTile<1>(panel, nb, offset, x, t0, y, y_stride, r0, n_rows);
      break;
    default:
      break;
  }
}

// Below this many activation rows the direct kernel is faster than packing panels.
constexpr size_t kPackedMinTokens = 4;

template <int R, int T>
SLLM_VNNI void DirectTile(TensorType type, const uint8_t* w, size_t row_bytes, size_t nb,
                          const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                          size_t y_stride, size_t r0) {
  if (type == TensorType::Q8_0) {
    DirectTileQ8<R, T>(w, row_bytes, nb, x, t0, y, y_stride, r0);
  } else {
    DirectTileQ4<R, T>(w, row_bytes, nb, x, t0, y, y_stride, r0);
  }
}

template <int R>
SLLM_VNNI void DirectRows(TensorType type, const uint8_t* w, size_t row_bytes, size_t nb,
                          const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                          size_t r0) {
  size_t t0 = 0;
  for (; t0 + 2 <= x.n; t0 += 2) DirectTile<R, 2>(type, w, row_bytes, nb, x, t0, y, y_stride, r0);
  if (t0 < x.n) DirectTile<R, 1>(type, w, row_bytes, nb, x, t0, y, y_stride, r0);
}

SLLM_VNNI void MatmulQRows(TensorType type, const uint8_t* w, size_t cols,
                           const sllm::detail::QuantizedActivations* x, float* y, size_t y_stride,
                           size_t row_begin, size_t row_end) {
  const size_t nb = cols / kQuantBlock;
  const size_t row_bytes = nb * (type == TensorType::Q8_0 ? kQ8Bytes : kQ4Bytes);
  if (x->n < kPackedMinTokens) {
    size_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) DirectRows<4>(type, w, row_bytes, nb, *x, y, y_stride, r);
    for (; r < row_end; ++r) DirectRows<1>(type, w, row_bytes, nb, *x, y, y_stride, r);
    return;
  }
  static thread_local sllm::detail::AlignedBuffer<uint8_t> panel;
  panel.resize(nb * kPanelBlockBytes);
  const int offset = type == TensorType::Q8_0 ? 128 : 8;
  for (size_t r = row_begin; r < row_end; r += kPanelRows) {
    const size_t n_rows = std::min(kPanelRows, row_end - r);
    PackPanel(type, w, row_bytes, nb, r, n_rows, panel.data());
    PanelTokens(panel.data(), nb, offset, *x, y, y_stride, r, n_rows);
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

void MatmulQRows(TensorType type, const uint8_t* w, size_t cols,
                 const sllm::detail::QuantizedActivations* x, float* y, size_t y_stride,
                 size_t row_begin, size_t row_end) {
  const size_t nb = cols / kQuantBlock;
  const bool q8 = type == TensorType::Q8_0;
  const size_t row_bytes = nb * (q8 ? kQ8Bytes : kQ4Bytes);
  for (size_t r = row_begin; r < row_end; ++r) {
    const uint8_t* wr = w + r * row_bytes;
    for (size_t t = 0; t < x->n; ++t) {
      y[t * y_stride + r] = q8 ? RowDotQ8(wr, nb, x->codes(t), x->scales(t))
                               : RowDotQ4(wr, nb, x->codes(t), x->scales(t));
    }
  }
}
#endif  // HWY_TARGET == HWY_AVX3_DL
