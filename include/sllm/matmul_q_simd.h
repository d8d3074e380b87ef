// ---- quantized matmul: activation quantization (every target) ----

constexpr size_t kQ8Bytes = sizeof(BlockQ8_0);
constexpr size_t kQ4Bytes = sizeof(BlockQ4_0);
constexpr size_t kQ5Bytes = sizeof(BlockQ5_0);

// Quantizes rows [t_begin, t_end) of x into out (already sized), bit-exact with the reference
// quantizer of out's format (ref::quantize_activations_q8_0 or ref::quantize_row_q8_k: hn::Round
// rounds halves to even, as they do), and zeroes the padding the kernels read.
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
      const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
      scale[b] = f16_scale ? fp16_to_f32(f32_to_fp16(amax / 127.0f)) : amax / 127.0f;
      const auto vid = hn::Set(df, id);
      for (size_t g = 0; g < block; g += kSumGroup) {
        auto vsum = hn::Zero(di);
        for (size_t i = g; i < g + kSumGroup; i += N) {
          const auto code = hn::ConvertTo(di, hn::Round(hn::Mul(hn::LoadU(df, xb + i), vid)));
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

// Q4_K and Q5_K blocks (kHighBit: Q5_K, whose codes have a fifth bit) both start with d, dmin and
// the 12 scale bytes and differ only in their codes: Q5_K has the top bits (qh) before the low 4
// bits (qs), which are laid out as Q4_K's.
template <bool kHighBit>
struct ScaleMinBlock {
  static constexpr size_t kBytes = kHighBit ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
  static constexpr size_t kQs = kHighBit ? offsetof(BlockQ5_K, qs) : offsetof(BlockQ4_K, qs);
  static constexpr size_t kQh = offsetof(BlockQ5_K, qh);
};

#if HWY_TARGET == HWY_AVX3_DL
// ---- quantized matmul with AVX-512 VNNI ----
// vpdpbusd multiplies unsigned by signed bytes and adds groups of four products to int32 lanes,
// with no saturation. Q4_0 codes are unsigned already; Q8_0 weights are made unsigned by adding
// 128 (xor 0x80). Either way the offset times the sum of the activation codes is subtracted by
// starting the accumulator at its negative, which keeps every block's int32 sum exact.
//
// Highway 1.0.3 compiles this target without the avx512vnni feature although it only selects it
// on CPUs that have it, so the functions that use the instruction add the feature; likewise GFNI
// (vgf2p8affineqb), which every CPU with this target's features has (Ice Lake, Zen 4 and later).
#define SLLM_VNNI __attribute__((target(HWY_TARGET_STR ",avx512vnni,gfni")))

SLLM_VNNI HWY_INLINE __m512i Dpbusd(__m512i acc, __m512i u8, __m512i s8) {
  return _mm512_dpbusd_epi32(acc, u8, s8);
}
// vpdpwssd: adds the products of the int16 pairs of each lane.
SLLM_VNNI HWY_INLINE __m512i Dpwssd(__m512i acc, __m512i a, __m512i b) {
  return _mm512_dpwssd_epi32(acc, a, b);
}

// v, kept in a register: an activation vector that several weight rows multiply is loaded once,
// where GCC would fold its load into each instruction that reads it and so load it once per row.
template <class V>
SLLM_VNNI HWY_INLINE V InRegister(V v) {
  asm("" : "+v"(v));
  return v;
}

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

// The 64 bytes at p + offset of a step whose first `bytes` belong to the row (zeros past them
// unless kWhole).
template <bool kWhole>
SLLM_VNNI HWY_INLINE __m512i LoadStepBytes(const uint8_t* p, size_t offset, size_t bytes) {
  if (kWhole) return _mm512_loadu_si512(p + offset);
  const size_t n = bytes > offset ? std::min<size_t>(64, bytes - offset) : 0;
  return _mm512_maskz_loadu_epi8(_bzhi_u64(~0ull, unsigned(n)), p + offset);
}

// The direct kernel (decode and small batches) streams the weight rows in their GGUF layout, two
// rows at a time, and takes a step of kBlocks blocks of kBlockValues values at a time: 256
// activation codes (8 Q8_0 blocks), 512 (16 Q4_0 blocks) or 256 (1 K-quant block). What depends
// only on the activations is prepared once per call, kXVectors vectors per step and token
// (PrepareX), and Accumulate adds a step of the weight rows times one token to a vector of f32
// partial sums per row. Where kRowsShareActivations, Accumulate takes both rows and loads each
// activation vector once for them; otherwise (K-quants, whose weights of two rows fill the
// registers: sharing spilled and measured slower) it takes one row.
//
// Q8_0 and Q4_0: the weights of a step are transposed so that every int32 lane of vpdpbusd adds
// the products of one block only, over all the step's code vectors: lane i of a Q4_0 step sums
// the 32 products of block LaneBlock(i), lane i of a Q8_0 step 16 products, half of block
// LaneBlock(i). The int32 sums are then converted and scaled once per step and token, for all 16
// lanes at once, by the product of each lane's weight and activation block scales. The prepared
// vectors are the activation codes transposed alike, the negated correction that starts the
// accumulator, and the activation scale of each lane's block.

// A step's f16 weight scales for the lanes (of LaneBlock), as f32: the blocks of each half of
// the step lie within 128 bytes, whose scales one permute picks.
template <class Step>
struct LaneTables {
  alignas(64) uint16_t scale_words[2][32] = {};  // per half of the step, the word of each lane
  alignas(64) int32_t blocks[16] = {};           // the block of each lane
  alignas(64) int32_t offsets[16] = {};          // and its first byte in the step
  uint32_t upper = 0;                            // lanes whose block is in the second half
  constexpr LaneTables() {
    constexpr size_t kHalf = Step::kBlocks / 2;
    for (size_t i = 0; i < 16; ++i) {
      const size_t block = Step::LaneBlock(i);
      blocks[i] = int32_t(block);
      offsets[i] = int32_t(block * Step::kBlockBytes);
      scale_words[block / kHalf][i] = uint16_t(block % kHalf * Step::kBlockBytes / 2);
      if (block >= kHalf) upper |= 1u << i;
    }
  }
};
template <class Step>
constexpr LaneTables<Step> kLaneTables{};

template <class Step, bool kWhole>
SLLM_VNNI HWY_INLINE __m512 LaneWeightScales(const uint8_t* p, size_t bytes) {
  constexpr size_t kUpper = Step::kBlocks / 2 * Step::kBlockBytes;
  const LaneTables<Step>& lanes = kLaneTables<Step>;
  const __m512i low = _mm512_permutex2var_epi16(LoadStepBytes<kWhole>(p, 0, bytes),
                                                _mm512_load_si512(lanes.scale_words[0]),
                                                LoadStepBytes<kWhole>(p, 64, bytes));
  const __m512i high = _mm512_permutex2var_epi16(LoadStepBytes<kWhole>(p, kUpper, bytes),
                                                 _mm512_load_si512(lanes.scale_words[1]),
                                                 LoadStepBytes<kWhole>(p, kUpper + 64, bytes));
  const __m512i words = _mm512_mask_blend_epi16(lanes.upper, low, high);
  return _mm512_cvtph_ps(_mm512_castsi512_si256(words));
}

// The prepared vectors after the kCodeVectors code vectors x[0..): the correction (minus
// `offset` times the sum of each lane's activation codes) and each lane's activation scale.
template <class Step>
SLLM_VNNI HWY_INLINE void PrepareLaneTerms(const float* scales, uint8_t offset, __m512i* x) {
  __m512i sum = _mm512_setzero_si512();
  for (size_t k = 0; k < Step::kCodeVectors; ++k) {
    sum = Dpbusd(sum, _mm512_set1_epi8(char(offset)), _mm512_load_si512(x + k));
  }
  const __m512 dx = Step::kBlocks == 16
                        ? _mm512_loadu_ps(scales)
                        : _mm512_castps256_ps512(_mm256_loadu_ps(scales));  // 8 blocks
  _mm512_store_si512(x + Step::kCodeVectors, _mm512_sub_epi32(_mm512_setzero_si512(), sum));
  _mm512_store_ps(reinterpret_cast<float*>(x + Step::kCodeVectors + 1),
                  _mm512_permutexvar_ps(_mm512_load_si512(kLaneTables<Step>.blocks), dx));
}

template <size_t kCodeVectors>
struct LaneBlockW {
  __m512i codes[kCodeVectors];
  __m512 scales;  // the weight scale of each lane's block
};

template <class Step, int kRows>
SLLM_VNNI HWY_INLINE void AccumulateLanes(const typename Step::W (&w)[kRows], const __m512i* x,
                                          __m512 (&acc)[kRows]) {
  const __m512i start = InRegister(_mm512_load_si512(x + Step::kCodeVectors));
  __m512i sum[kRows];
  for (int i = 0; i < kRows; ++i) sum[i] = start;
  for (size_t k = 0; k < Step::kCodeVectors; ++k) {
    const __m512i xk = InRegister(_mm512_load_si512(x + k));
    for (int i = 0; i < kRows; ++i) sum[i] = Dpbusd(sum[i], w[i].codes[k], xk);
  }
  const __m512 x_scales =
      InRegister(_mm512_load_ps(reinterpret_cast<const float*>(x + Step::kXVectors - 1)));
  for (int i = 0; i < kRows; ++i) {
    acc[i] =
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum[i]), _mm512_mul_ps(w[i].scales, x_scales), acc[i]);
  }
}

// Q8_0: 8 blocks. Code vector j of a pair of blocks (2j, 2j + 1) holds their 64 codes in order;
// transposing the 4x4 int32 lanes of each 128-bit chunk of the 4 vectors gives lane 4c + m of
// vector k codes 4(c % 2) + k.. of block 2m + c / 2: each lane keeps to half of one block.
struct Q8Step {
  static constexpr bool kRowsShareActivations = true;
  static constexpr size_t kBlockBytes = kQ8Bytes;
  static constexpr size_t kBlockValues = kQuantBlock;
  static constexpr size_t kBlocks = 8;
  static constexpr size_t kCodeVectors = 4;
  static constexpr size_t kXVectors = kCodeVectors + 2;
  static constexpr size_t LaneBlock(size_t i) { return 2 * (i % 4) + i / 8; }
  // The correction is 128 times the sum of each lane's codes (the weights' offset of 128).
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales,
                                            const int32_t* /*sums*/, __m512i* x) {
    __m512i v[4];
    for (size_t j = 0; j < 4; ++j) v[j] = _mm512_loadu_si512(codes + 64 * j);
    Transpose4x4(v[0], v[1], v[2], v[3]);
    for (size_t k = 0; k < 4; ++k) _mm512_store_si512(x + k, v[k]);
    PrepareLaneTerms<Q8Step>(scales, 0x80, x);
  }
  using W = LaneBlockW<kCodeVectors>;
  // The codes made unsigned (xor 0x80). Past the row's `bytes` of a partial step the codes are
  // 128 (zero plus the offset) and the scales zero; the activation codes there are zero padding,
  // and so are their correction and their scale, so they add nothing.
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t bytes) {
    W w;
    for (size_t j = 0; j < 4; ++j) {
      auto half = [&](size_t block) SLLM_VNNI {
        const uint8_t* codes = p + block * kQ8Bytes + 2;
        if (kWhole) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes));
        const size_t offset = block * kQ8Bytes + 2;
        const size_t n = bytes > offset ? std::min<size_t>(32, bytes - offset) : 0;
        return _mm256_maskz_loadu_epi8(_bzhi_u32(~0u, unsigned(n)), codes);
      };
      w.codes[j] = _mm512_inserti64x4(_mm512_castsi256_si512(half(2 * j)), half(2 * j + 1), 1);
    }
    Transpose4x4(w.codes[0], w.codes[1], w.codes[2], w.codes[3]);
    for (size_t k = 0; k < 4; ++k) {
      w.codes[k] = _mm512_xor_si512(w.codes[k], _mm512_set1_epi8(char(0x80)));
    }
    w.scales = LaneWeightScales<Q8Step, kWhole>(p, bytes);
    return w;
  }
  template <int kRows>
  static SLLM_VNNI HWY_INLINE void Accumulate(const W (&w)[kRows], const __m512i* x,
                                              __m512 (&acc)[kRows]) {
    AccumulateLanes<Q8Step, kRows>(w, x, acc);
  }
};

// Q4_0 and Q5_0, whose codes are value + offset: the activation codes of a step regrouped as
// LoadNibbles lays out the weights (values 4k.. and 16 + 4k.. of each lane's block), then the
// correction and scales.
template <class Step>
SLLM_VNNI HWY_INLINE void PrepareNibbleX(const int8_t* codes, const float* scales, uint8_t offset,
                                         __m512i* x) {
  __m512i lo[4], hi[4];
  for (size_t j = 0; j < 4; ++j) {
    const __m512i x0 = _mm512_loadu_si512(codes + 128 * j);
    const __m512i x1 = _mm512_loadu_si512(codes + 128 * j + 64);
    lo[j] = _mm512_shuffle_i64x2(x0, x1, 0x88);  // values 0-15 of blocks 4j..4j+3
    hi[j] = _mm512_shuffle_i64x2(x0, x1, 0xdd);  // values 16-31
  }
  Transpose4x4(lo[0], lo[1], lo[2], lo[3]);
  Transpose4x4(hi[0], hi[1], hi[2], hi[3]);
  for (size_t k = 0; k < 4; ++k) {
    _mm512_store_si512(x + k, lo[k]);
    _mm512_store_si512(x + 4 + k, hi[k]);
  }
  PrepareLaneTerms<Step>(scales, offset, x);
}

// The high nibble of each byte, by one affine map of its bits (bit i of the result is bit i + 4)
// instead of a shift and a mask.
SLLM_VNNI HWY_INLINE __m512i HighNibbles(__m512i v) {
  return _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(0x1020408000000000ll), 0);
}

// The byte of two 64-byte loads (at +0 and +kSecond of 4 blocks of kBlockBytes) that holds code
// byte i of block q (at kCodeOffset in its block), for _mm512_permutex2var_epi8: from the first
// load when all of the block's 16 code bytes are in it.
template <size_t kBlockBytes, size_t kCodeOffset, size_t kSecond>
struct NibbleTable {
  alignas(64) uint8_t index[64] = {};
  constexpr NibbleTable() {
    for (size_t q = 0; q < 4; ++q) {
      const size_t start = q * kBlockBytes + kCodeOffset;
      for (size_t i = 0; i < 16; ++i) {
        index[16 * q + i] = uint8_t(start + 16 <= 64 ? start + i : 64 + start + i - kSecond);
      }
    }
  }
};

// The 8 code vectors of a step of 16 blocks whose 16 code bytes hold values k (low nibble) and
// k + 16 (high nibble) at kCodeOffset: each group of 4 blocks picked from two loads, one 128-bit
// chunk per block, then transposed, so that lane 4c + m of vector k holds code bytes 4k..4k+3 of
// block 4m + c; vectors 0-3 are their low nibbles, 4-7 the high ones.
template <size_t kBlockBytes, size_t kCodeOffset, bool kWhole>
SLLM_VNNI HWY_INLINE void LoadNibbles(const uint8_t* p, size_t bytes, __m512i (&codes)[8]) {
  constexpr size_t kSecond = 4 * kBlockBytes - 64;  // the second load ends with the 4th block
  static constexpr NibbleTable<kBlockBytes, kCodeOffset, kSecond> kTable{};
  __m512i v[4];
  for (size_t j = 0; j < 4; ++j) {
    v[j] = _mm512_permutex2var_epi8(LoadStepBytes<kWhole>(p, 4 * j * kBlockBytes, bytes),
                                    _mm512_load_si512(kTable.index),
                                    LoadStepBytes<kWhole>(p, 4 * j * kBlockBytes + kSecond, bytes));
  }
  Transpose4x4(v[0], v[1], v[2], v[3]);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  for (size_t k = 0; k < 4; ++k) {
    codes[k] = _mm512_and_si512(v[k], low4);
    codes[4 + k] = HighNibbles(v[k]);
  }
}

// Q4_0: 16 blocks. Byte k of a block's codes holds values k (low nibble) and k + 16 (high
// nibble). Vector j holds the 16 code bytes of blocks 4j..4j+3, one per 128-bit chunk; transposed
// as for Q8_0, lane 4c + m of vector k holds code bytes 4k..4k+3 of block 4m + c, and their low
// and high nibbles make the 8 code vectors. The activation codes are regrouped to match (values
// 4k.. and 16 + 4k.. of the lane's block). The correction is 8 times the sum of each lane's codes
// (the weight codes are value + 8).
struct Q4Step {
  static constexpr bool kRowsShareActivations = true;
  static constexpr size_t kBlockBytes = kQ4Bytes;
  static constexpr size_t kBlockValues = kQuantBlock;
  static constexpr size_t kBlocks = 16;
  static constexpr size_t kCodeVectors = 8;
  static constexpr size_t kXVectors = kCodeVectors + 2;
  static constexpr size_t LaneBlock(size_t i) { return 4 * (i % 4) + i / 4; }
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales,
                                            const int32_t* /*sums*/, __m512i* x) {
    PrepareNibbleX<Q4Step>(codes, scales, 8, x);
  }
  using W = LaneBlockW<kCodeVectors>;
  // Past the row's `bytes` of a partial step codes and scales are zero.
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t bytes) {
    W w;
    LoadNibbles<kQ4Bytes, 2, kWhole>(p, bytes, w.codes);
    w.scales = LaneWeightScales<Q4Step, kWhole>(p, bytes);
    return w;
  }
  template <int kRows>
  static SLLM_VNNI HWY_INLINE void Accumulate(const W (&w)[kRows], const __m512i* x,
                                              __m512 (&acc)[kRows]) {
    AccumulateLanes<Q4Step, kRows>(w, x, acc);
  }
};

// Q5_0: 16 blocks of 22 bytes (f16 d, 4 bytes qh, 16 code bytes as Q4_0's), laid out as Q4_0's
// with each value's fifth bit (16) added from qh: the codes are value + 16. A gather gives each
// lane its block's d (the low half of the word at the block's start) and another its qh, whose
// bits vpshufbitqmb turns into a byte mask per code vector: byte b of lane i in vector k takes
// bit 4k + b (16 + 4k + b for the high nibbles) of lane i's qh.
struct Q5Step : Q4Step {
  static constexpr size_t kBlockBytes = kQ5Bytes;
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales,
                                            const int32_t* /*sums*/, __m512i* x) {
    PrepareNibbleX<Q5Step>(codes, scales, 16, x);
  }
  // Past the row's `bytes` of a partial step codes and scales are zero.
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t bytes) {
    W w;
    LoadNibbles<kQ5Bytes, 6, kWhole>(p, bytes, w.codes);
    const __m512i offsets = _mm512_load_si512(kLaneTables<Q5Step>.offsets);
    const __mmask16 live =
        kWhole ? __mmask16(0xffff)
               : _mm512_cmplt_epi32_mask(_mm512_load_si512(kLaneTables<Q5Step>.blocks),
                                         _mm512_set1_epi32(int(bytes / kQ5Bytes)));
    const __m512i zero = _mm512_setzero_si512();
    const __m512i d = _mm512_mask_i32gather_epi32(zero, live, offsets, p, 1);
    const __m512i qh = _mm512_mask_i32gather_epi32(zero, live, offsets, p + 2, 1);
    const __m512i sixteen = _mm512_set1_epi8(16);
    for (size_t k = 0; k < 8; ++k) {
      const uint64_t bit = k < 4 ? 4 * k : 16 + 4 * (k - 4);
      const uint64_t lane = bit | (bit + 1) << 8 | (bit + 2) << 16 | (bit + 3) << 24;
      const __m512i select = _mm512_set1_epi64(int64_t(lane | (lane + 0x20202020ull) << 32));
      const __mmask64 fifth = _mm512_bitshuffle_epi64_mask(qh, select);
      w.codes[k] = _mm512_mask_add_epi8(w.codes[k], fifth, w.codes[k], sixteen);
    }
    w.scales = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d));
    return w;
  }
};

// K-quants: a step is one 256-value block. Each int32 lane of vpdpbusd sums 4 products of a code
// below 64 (Q6_K; below 32 for Q5_K, 16 for Q4_K) and an activation code of magnitude at most 127,
// so it stays below 2^15 and vpdpwssd can multiply it by its sub-block's scale (the low int16 of a
// lane whose high int16 is 0) and add the product to the block's sum in one instruction. The
// block's f32 scales multiply that sum once per block and token.
//
// The scales of the lanes of each of 4 code vectors, from the 16 int32 lanes of `all`: lane i of
// vector k takes lane kFirst[k] + i / kLanesPerScale, plus 2 for the upper 8 lanes when
// kLanesPerScale is 8 (Q4_K's vectors hold sub-blocks j and j + 2).
template <int kLanesPerScale>
SLLM_VNNI HWY_INLINE void SpreadScales(__m512i all, __m512i (&out)[4]) {
  for (int k = 0; k < 4; ++k) {
    alignas(64) int32_t index[16];
    for (int i = 0; i < 16; ++i) {
      index[i] = kLanesPerScale == 8 ? (k / 2 * 4 + k % 2 + (i / 8) * 2) : 4 * k + i / 4;
    }
    out[k] = _mm512_permutexvar_epi32(_mm512_load_si512(index), all);
  }
}

// A K-quant step's activation scale, in every lane of its last prepared vector (x[5]).
SLLM_VNNI HWY_INLINE __m512 StepXScale(const __m512i* x) {
  return _mm512_load_ps(reinterpret_cast<const float*>(x + 5));
}

// The 8 scales and 8 mins of a Q4_K block as bytes 0..7 and 8..15, from its 12 scale bytes (and 4
// bytes after them, unused): see unpack_q4_k_scales.
SLLM_VNNI HWY_INLINE __m128i UnpackQ4KScales(const uint8_t* scales) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales));
  // Low bits: scales 0-3 and mins 0-3 are the low 6 bits of bytes 0-3 and 4-7; scales 4-7 and
  // mins 4-7 the low and high nibbles of bytes 8-11.
  const __m128i low =
      _mm_shuffle_epi8(b, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
  const __m128i low_bits = _mm_or_si128(
      _mm_and_si128(low, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)),
      _mm_and_si128(_mm_srli_epi16(low, 4),
                    _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
  // High bits of scales 4-7 and mins 4-7: the top 2 bits of bytes 0-3 and 4-7, as bits 4-5.
  const __m128i high =
      _mm_shuffle_epi8(b, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
  return _mm_or_si128(low_bits, _mm_and_si128(_mm_srli_epi16(high, 2), _mm_set1_epi8(0x30)));
}

// Q5_K's codes: codes plus 16 in the bytes whose bit `bit` is set in qh (the codes are below 16).
SLLM_VNNI HWY_INLINE __m512i WithTopBit(__m512i codes, __m512i qh, __m512i bit) {
  return _mm512_mask_add_epi8(codes, _mm512_test_epi8_mask(qh, bit), codes, _mm512_set1_epi8(16));
}

// The f16 at p in every lane (by vcvtph2ps: no call per block).
SLLM_VNNI HWY_INLINE __m512 BroadcastHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

// The f16 pair at p (a K-quant block's d and dmin) in every lane of first and second.
SLLM_VNNI HWY_INLINE void BroadcastHalves(const uint8_t* p, __m512& first, __m512& second) {
  uint32_t pair;
  std::memcpy(&pair, p, 4);
  const __m128 both = _mm_cvtph_ps(_mm_cvtsi32_si128(int(pair)));
  first = _mm512_broadcastss_ps(both);
  second = _mm512_broadcastss_ps(_mm_movehdup_ps(both));
}

// What every K-quant step is: one 256-value block per step, 6 prepared activation vectors per
// step and token, and the rows accumulated one at a time.
struct KQuantStep {
  static constexpr bool kRowsShareActivations = false;
  static constexpr size_t kBlockValues = kSuperBlock;
  static constexpr size_t kBlocks = 1;
  static constexpr size_t kXVectors = 6;
};

// Q4_K and Q5_K (kHighBit: its codes, below 32, are the only difference).
template <bool kHighBit>
struct ScaleMinStep : KQuantStep {
  using Block = ScaleMinBlock<kHighBit>;
  static constexpr size_t kBlockBytes = Block::kBytes;
  // Each 32 bytes of codes hold sub-block 2k in their low nibbles and 2k + 1 in their high ones,
  // and a 64-byte load two such groups, so the activation codes are regrouped to match: vector 2h
  // holds sub-blocks 4h and 4h + 2, vector 2h + 1 sub-blocks 4h + 1 and 4h + 3. Vector 4 holds the
  // sums of the 8 sub-blocks' codes in lanes 8..15 (where the weights keep their mins), vector 5
  // the scale in every lane.
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales,
                                            const int32_t* sums, __m512i* x) {
    auto pair = [codes](size_t a, size_t b) SLLM_VNNI {
      const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + a));
      const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b));
      return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    };
    _mm512_store_si512(x, pair(0, 64));
    _mm512_store_si512(x + 1, pair(32, 96));
    _mm512_store_si512(x + 2, pair(128, 192));
    _mm512_store_si512(x + 3, pair(160, 224));
    // The sums are per 16 codes: lane 2j + lane 2j + 1 is sub-block j's, moved to lane 8 + j.
    const __m512i s16 = _mm512_loadu_si512(sums);
    const __m512i s32 = _mm512_add_epi32(s16, _mm512_srli_epi64(s16, 32));
    const __m512i to_upper = _mm512_set_epi32(14, 12, 10, 8, 6, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_store_si512(x + 4, _mm512_maskz_permutexvar_epi32(0xff00, to_upper, s32));
    _mm512_store_si512(x + 5, _mm512_castps_si512(_mm512_set1_ps(scales[0])));
  }
  struct W {
    __m512i codes[4];
    __m512i scales[4];  // of each lane's sub-block
    __m512i mins;       // lanes 8..15: the mins of sub-blocks 0..7 (lanes 0..7: their scales)
    __m512 d, dmin;     // in every lane
  };
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t /*bytes*/) {
    W w;
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int h = 0; h < 2; ++h) {
      const __m512i v = _mm512_loadu_si512(p + Block::kQs + 64 * h);
      w.codes[2 * h] = _mm512_and_si512(v, low4);
      w.codes[2 * h + 1] = HighNibbles(v);
    }
    if constexpr (kHighBit) {
      // Code vector k holds sub-blocks j = 4 (k / 2) + k % 2 and j + 2 in its halves, value l of
      // each at byte l; the top bit of value l of sub-block j is bit j of qh[l].
      const __m512i qh = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + Block::kQh)));
      for (int k = 0; k < 4; ++k) {
        const int j = 4 * (k / 2) + k % 2;
        const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8(char(1 << j)),
                                               _mm256_set1_epi8(char(1 << (j + 2))), 1);
        w.codes[k] = WithTopBit(w.codes[k], qh, bit);
      }
    }
    w.mins = _mm512_cvtepu8_epi32(UnpackQ4KScales(p + 4));
    SpreadScales<8>(w.mins, w.scales);
    BroadcastHalves(p, w.d, w.dmin);
    return w;
  }
  static SLLM_VNNI HWY_INLINE __m512 Accumulate(const W& w, const __m512i* x, __m512 acc) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i sums[2] = {zero, zero};  // two chains of vpdpwssd, half as long
    for (int k = 0; k < 4; ++k) {
      sums[k % 2] =
          Dpwssd(sums[k % 2], Dpbusd(zero, w.codes[k], _mm512_load_si512(x + k)), w.scales[k]);
    }
    const __m512i sum = _mm512_add_epi32(sums[0], sums[1]);
    // Lanes 8..15: min times the sum of the sub-block's activation codes (both below 2^15;
    // lanes 0..7 are 0).
    const __m512i mins = Dpwssd(zero, w.mins, _mm512_load_si512(x + 4));
    const __m512 block = _mm512_fmsub_ps(_mm512_cvtepi32_ps(sum), w.d,
                                         _mm512_mul_ps(_mm512_cvtepi32_ps(mins), w.dmin));
    return _mm512_fmadd_ps(block, StepXScale(x), acc);
  }
};

using Q4KStep = ScaleMinStep<false>;
using Q5KStep = ScaleMinStep<true>;

// The K-quant steps whose weights come in 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K), with their
// activation vectors: the codes in their order, the sums of the 16 sub-blocks' codes, the scale in
// every lane.
struct OrderedKQuantStep : KQuantStep {
  static SLLM_VNNI HWY_INLINE void PrepareX(const int8_t* codes, const float* scales,
                                            const int32_t* sums, __m512i* x) {
    for (int k = 0; k < 4; ++k) _mm512_store_si512(x + k, _mm512_loadu_si512(codes + 64 * k));
    _mm512_store_si512(x + 4, _mm512_loadu_si512(sums));
    _mm512_store_si512(x + 5, _mm512_castps_si512(_mm512_set1_ps(scales[0])));
  }
};

// The affine bit map (vgf2p8affineqb) that moves bits first..first + n - 1 of each byte to bits
// to..to + n - 1 and clears the others: output bit i takes the input bits of matrix byte 7 - i.
constexpr int64_t BitsTo(int to, int first, int n) {
  uint64_t map = 0;
  for (int i = 0; i < n; ++i) map |= uint64_t(1) << (first + i) << 8 * (7 - (to + i));
  return int64_t(map);
}
// One bit map for the lower 256-bit half of a vector, another for the upper.
SLLM_VNNI HWY_INLINE __m512i HalvesMap(int64_t lower, int64_t upper) {
  return _mm512_inserti64x4(_mm512_set1_epi64(lower), _mm256_set1_epi64x(upper), 1);
}

// Code vector k of a Q2_K block (the low 2 bits of Q3_K's codes), from its 64 bytes of qs: values
// 64k..64k+63, quarters 2 (k % 2) and 2 (k % 2) + 1 of half k / 2 in its 256-bit halves (value l
// of quarter q: bit pair q of qs[32 half + l]).
SLLM_VNNI HWY_INLINE __m512i KBitPairs(const uint8_t* qs, int k) {
  const int half = k / 2, quarter = 2 * (k % 2);
  const __m512i bytes =
      _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * half)));
  return _mm512_gf2p8affine_epi64_epi8(
      bytes, HalvesMap(BitsTo(0, 2 * quarter, 2), BitsTo(0, 2 * quarter + 2, 2)), 0);
}

// Q2_K: the codes in their order (KBitPairs), and Q4_K's W and Accumulate with one scale and one
// min per 16 codes (mins in every lane).
struct Q2KStep : OrderedKQuantStep {
  static constexpr size_t kBlockBytes = sizeof(BlockQ2_K);
  using W = Q4KStep::W;
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t /*bytes*/) {
    W w;
    for (int k = 0; k < 4; ++k) w.codes[k] = KBitPairs(p + offsetof(BlockQ2_K, qs), k);
    const __m512i scale_min = _mm512_cvtepu8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + offsetof(BlockQ2_K, scales))));
    SpreadScales<4>(_mm512_and_si512(scale_min, _mm512_set1_epi32(0x0f)), w.scales);
    w.mins = _mm512_srli_epi32(scale_min, 4);
    BroadcastHalves(p + offsetof(BlockQ2_K, d), w.d, w.dmin);
    return w;
  }
  static SLLM_VNNI HWY_INLINE __m512 Accumulate(const W& w, const __m512i* x, __m512 acc) {
    return Q4KStep::Accumulate(w, x, acc);
  }
};

// Q3_K and Q6_K: 16 sub-blocks of 16 values, each with a signed integer scale, and codes stored
// plus 2^kOffsetShift (unsigned); a Step adds LoadW.
template <int kOffsetShift>
struct SubBlock16Step : OrderedKQuantStep {
  struct W {
    __m512i codes[4];   // values 64k.. in order, plus the offset
    __m512i scales[4];  // of each lane's sub-block
    __m512i all;        // lane j: the scale of sub-block j (its low int16; the high one is 0)
    __m512 d;           // in every lane
  };
  static SLLM_VNNI HWY_INLINE __m512 Accumulate(const W& w, const __m512i* x, __m512 acc) {
    const __m512i zero = _mm512_setzero_si512();
    // The offset times the scaled code sums comes off.
    const __m512i offset = Dpwssd(zero, w.all, _mm512_load_si512(x + 4));
    __m512i sum = _mm512_sub_epi32(zero, _mm512_slli_epi32(offset, kOffsetShift));
    for (int k = 0; k < 4; ++k) {
      sum = Dpwssd(sum, Dpbusd(zero, w.codes[k], _mm512_load_si512(x + k)), w.scales[k]);
    }
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(w.d, StepXScale(x)), acc);
  }
};

// vpermb indexes into the 16 bytes at a Q3_K block's offset 94 (two bytes of codes, the 12 scale
// bytes, d): the first byte of lane j gets the scale byte that holds the low 4 bits of scale j
// (byte j % 8), or with kHigh its top 2 bits (byte 8 + j % 4).
template <bool kHigh>
struct Q3KScaleBytes {
  alignas(64) uint8_t index[64] = {};
  constexpr Q3KScaleBytes() {
    for (size_t lane = 0; lane < 16; ++lane) {
      index[4 * lane] = uint8_t(2 + (kHigh ? 8 + lane % 4 : lane % 8));
    }
  }
};

// The 16 scales of a Q3_K block (q3_k_scale) in int32 lanes (the low int16 signed, the high one
// 0, for vpdpwssd), from the 16 bytes at its offset 94: each lane's two source bytes picked by
// vpermb, then one bit map per qword takes the nibble (lanes 8-15 the high one) and the bit pair
// (lane / 4) of them.
SLLM_VNNI HWY_INLINE __m512i UnpackQ3KScales(const uint8_t* p) {
  static constexpr Q3KScaleBytes<false> kLow{};
  static constexpr Q3KScaleBytes<true> kHigh{};
  const __m512i b = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  constexpr __mmask64 kFirstBytes = 0x1111111111111111ull;
  const __m512i low = _mm512_maskz_permutexvar_epi8(kFirstBytes, _mm512_load_si512(kLow.index), b);
  const __m512i high =
      _mm512_maskz_permutexvar_epi8(kFirstBytes, _mm512_load_si512(kHigh.index), b);
  // Qword m holds lanes 2m and 2m + 1: nibble m / 4, bit pair m / 2.
  const __m512i low_map =
      _mm512_set_epi64(BitsTo(0, 4, 4), BitsTo(0, 4, 4), BitsTo(0, 4, 4), BitsTo(0, 4, 4),
                       BitsTo(0, 0, 4), BitsTo(0, 0, 4), BitsTo(0, 0, 4), BitsTo(0, 0, 4));
  const __m512i high_map =
      _mm512_set_epi64(BitsTo(4, 6, 2), BitsTo(4, 6, 2), BitsTo(4, 4, 2), BitsTo(4, 4, 2),
                       BitsTo(4, 2, 2), BitsTo(4, 2, 2), BitsTo(4, 0, 2), BitsTo(4, 0, 2));
  const __m512i codes = _mm512_or_si512(_mm512_gf2p8affine_epi64_epi8(low, low_map, 0),
                                        _mm512_gf2p8affine_epi64_epi8(high, high_map, 0));
  return _mm512_and_si512(_mm512_sub_epi32(codes, _mm512_set1_epi32(32)),
                          _mm512_set1_epi32(0xffff));
}

// Q3_K: the low 2 bits of the codes as Q2_K's, plus 4 where bit 4 half + quarter of hmask[l] is
// set (value l of the quarter; see KBitPairs).
struct Q3KStep : SubBlock16Step<2> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ3_K);
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t /*bytes*/) {
    W w;
    const __m512i hmask = _mm512_broadcast_i64x4(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + offsetof(BlockQ3_K, hmask))));
    for (int k = 0; k < 4; ++k) {
      const int first = 4 * (k / 2) + 2 * (k % 2);  // the hmask bit of the lower 256-bit half
      const __m512i top = _mm512_gf2p8affine_epi64_epi8(
          hmask, HalvesMap(BitsTo(2, first, 1), BitsTo(2, first + 1, 1)), 0);
      w.codes[k] = _mm512_or_si512(KBitPairs(p + offsetof(BlockQ3_K, qs), k), top);
    }
    w.all = UnpackQ3KScales(p + offsetof(BlockQ3_K, scales) - 2);
    SpreadScales<4>(w.all, w.scales);
    w.d = BroadcastHalf(p + offsetof(BlockQ3_K, d));
    return w;
  }
};

struct Q6KStep : SubBlock16Step<5> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ6_K);
  // Codes 64h..64h+63 of half h: the low nibbles of ql[64h..], and values 128h + 64.. the high
  // ones; their top 2 bits are bit pairs of qh[32h..32h+31], 0-1 and 2-3 for the first 64, 4-5
  // and 6-7 for the next (per 32 values), mapped to bits 4-5.
  template <bool kWhole>
  static SLLM_VNNI HWY_INLINE W LoadW(const uint8_t* p, size_t /*bytes*/) {
    W w;
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (int h = 0; h < 2; ++h) {
      const __m512i ql = _mm512_loadu_si512(p + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 128 + 32 * h)));
      w.codes[2 * h] = _mm512_or_si512(
          _mm512_and_si512(ql, low4),
          _mm512_gf2p8affine_epi64_epi8(qh, HalvesMap(BitsTo(4, 0, 2), BitsTo(4, 2, 2)), 0));
      w.codes[2 * h + 1] = _mm512_or_si512(
          HighNibbles(ql),
          _mm512_gf2p8affine_epi64_epi8(qh, HalvesMap(BitsTo(4, 4, 2), BitsTo(4, 6, 2)), 0));
    }
    w.all = _mm512_cvtepu16_epi32(
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 192))));
    SpreadScales<4>(w.all, w.scales);
    w.d = BroadcastHalf(p + offsetof(BlockQ6_K, d));
    return w;
  }
};

// The prepared activation vectors of x's tokens: token t, step s at
// out + (t * steps + s) * Step::kXVectors, or, side by side, at
// out + (s * x.n + t) * Step::kXVectors (see kSideBySideBytes).
template <class Step>
SLLM_VNNI void PrepareTokens(const sllm::detail::QuantizedActivations& x, size_t steps,
                             bool side_by_side, __m512i* out) {
  constexpr size_t kStepValues = Step::kBlocks * Step::kBlockValues;
  for (size_t t = 0; t < x.n; ++t) {
    for (size_t s = 0; s < steps; ++s) {
      const size_t at = side_by_side ? s * x.n + t : t * steps + s;
      Step::PrepareX(x.codes(t) + s * kStepValues, x.scales(t) + s * Step::kBlocks,
                     x.sums(t) + s * kStepValues / 16, out + at * Step::kXVectors);
    }
  }
}

// The sums of the lanes of a, b, c and d, in lanes 0..3: one reduction for all four costs
// less than four, which matters for short rows.
SLLM_VNNI HWY_INLINE __m128 SumLanes4(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Per 128-bit chunk: a0+a2, b0+b2, a1+a3, b1+b3 (ab), likewise cd, then each chunk's sums.
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
  const __m512 chunks = _mm512_add_ps(
      _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
      _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
  const __m256 half =
      _mm256_add_ps(_mm512_castps512_ps256(chunks), _mm512_extractf32x8_ps(chunks, 1));
  return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

// From this many activation rows on, packing panels is faster than streaming the weights.
constexpr size_t kPackedMinTokens = 5;

// How far ahead of the bytes being read the direct kernel asks for weights, into L1 (prefetcht0;
// a prefetch past the end of the mapping is dropped, never a fault). Two rows read side by side
// without it are twice as slow out of cache (the hardware prefetchers lose two interleaved
// streams in one page). Into L1 rather than L2: a Q4_0 step loads its 18-byte blocks in 12
// overlapping pieces, each of which would miss L1; whole-model Q4_0 decode on 2 threads ran
// 1.1-1.5 times as fast (six alternations), the other formats alike or slightly faster.
// 4-16 KiB ahead measured alike; 32 KiB, most of L1, slower.
constexpr size_t kDirectPrefetchBytes = 8192;

// Four tokens whose prepared activations take at most this many bytes are laid out side by side,
// each step's vectors together, and the direct kernel prefetches every other line of them: their
// 40 prefetches a step cost more than the misses they would save. Larger ones keep each token's
// steps together, all prefetched. Measured with matmul_q alone (Q4_0, 4 tokens, 2 threads, ns
// per 512 weights): 2048 columns (10 KiB) 4.9-5.2 side by side against 5.7-5.9, from L3 and from
// a 37.7 MB matrix; 5632 columns (28 KiB) 5.6-5.9 side by side, 5.3-5.5 the other way. The layout
// is written in PrepareTokens and read in DirectRows; one shared stride helper in its place
// changed the generated code and measured 5-10% slower for four sequences (bench_paged).
constexpr size_t kSideBySideBytes = size_t{12} << 10;

// kRows consecutive rows from r (kRows * row_bytes bytes from rows) times T prepared tokens. Two
// rows at a time keep twice the independent chains of sums in flight, and the prefetches walk the
// pair's bytes in order, as the rows advance. kSideBySide: how the tokens were prepared.
template <class Step, int T, int kRows, bool kSideBySide>
SLLM_VNNI void DirectRows(const uint8_t* rows, size_t row_bytes, size_t nb, const __m512i* prepared,
                          size_t steps, float* y, size_t y_stride, size_t r) {
  constexpr size_t kStepBytes = Step::kBlocks * Step::kBlockBytes;
  __m512 acc[T][kRows];
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < kRows; ++i) acc[t][i] = _mm512_setzero_ps();
  }
  // Token t's vectors of step s from prepared + s * step_vectors + t * token_vectors.
  const size_t step_vectors = kSideBySide ? T * Step::kXVectors : Step::kXVectors;
  const size_t token_vectors = kSideBySide ? Step::kXVectors : steps * Step::kXVectors;
  auto step = [&](auto whole_step, size_t s, size_t bytes) SLLM_VNNI {
    constexpr bool kWhole = decltype(whole_step)::value;
    const uint8_t* p = rows + s * kStepBytes;
    const __m512i* x = prepared + s * step_vectors;
    if constexpr (Step::kRowsShareActivations) {
      typename Step::W w[kRows];
      for (int i = 0; i < kRows; ++i) w[i] = Step::template LoadW<kWhole>(p + i * row_bytes, bytes);
      for (int t = 0; t < T; ++t) Step::Accumulate(w, x + t * token_vectors, acc[t]);
    } else {
      for (int i = 0; i < kRows; ++i) {
        const typename Step::W w = Step::template LoadW<kWhole>(p + i * row_bytes, bytes);
        for (int t = 0; t < T; ++t)
          acc[t][i] = Step::Accumulate(w, x + t * token_vectors, acc[t][i]);
      }
    }
  };
  const uint8_t* ahead = rows + kDirectPrefetchBytes;
  const size_t whole = nb / Step::kBlocks;
  size_t s = 0;
  for (; s < whole; ++s) {
    for (size_t b = 0; b < kRows * kStepBytes; b += 64) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + kRows * s * kStepBytes + b), _MM_HINT_T0);
    }
    if constexpr (Step::kRowsShareActivations) {
      // The next step's activation vectors of every token, into L1. While the weights come from
      // memory, the weight stream pushes them out of L1 once they pass ~6 KiB (4 tokens of 2048
      // columns: 10 KiB) and each reload waits behind the weight misses, so the arithmetic no
      // longer overlaps the stream: 4 Q4_0 tokens took 1.6 times as long per row as from L3, with
      // this as long as one token (memory speed). Their vectors are read again every row pair.
      // After a row's last step the last token's are past the buffer: a prefetch never faults.
      const __m512i* next = prepared + (s + 1) * step_vectors;
      if constexpr (kSideBySide) {
        for (size_t v = 0; v < T * Step::kXVectors; v += 2) {
          _mm_prefetch(reinterpret_cast<const char*>(next + v), _MM_HINT_T0);
        }
      } else {
        for (int t = 0; t < T; ++t) {
          for (size_t v = 0; v < Step::kXVectors; ++v) {
            _mm_prefetch(reinterpret_cast<const char*>(next + t * token_vectors + v), _MM_HINT_T0);
          }
        }
      }
    }
    step(std::true_type(), s, kStepBytes);
  }
  if (s < steps) step(std::false_type(), s, (nb - s * Step::kBlocks) * Step::kBlockBytes);
  for (int i = 0; i < kRows; ++i) {
    __m512 sum[4];
    for (int t = 0; t < 4; ++t) sum[t] = t < T ? acc[t][i] : _mm512_setzero_ps();
    alignas(16) float dots[4];
    _mm_store_ps(dots, SumLanes4(sum[0], sum[1], sum[2], sum[3]));
    for (int t = 0; t < T; ++t) y[t * y_stride + r + i] = dots[t];
  }
}

// Rows [row_begin, row_end) times T prepared tokens, two rows at a time.
template <class Step, int T, bool kSideBySide = false>
SLLM_VNNI void DirectTokens(const uint8_t* w, size_t row_bytes, size_t nb, const __m512i* prepared,
                            size_t steps, float* y, size_t y_stride, size_t row_begin,
                            size_t row_end) {
  size_t r = row_begin;
  for (; r + 2 <= row_end; r += 2) {
    DirectRows<Step, T, 2, kSideBySide>(w + r * row_bytes, row_bytes, nb, prepared, steps, y,
                                        y_stride, r);
  }
  if (r < row_end) {
    DirectRows<Step, T, 1, kSideBySide>(w + r * row_bytes, row_bytes, nb, prepared, steps, y,
                                        y_stride, r);
  }
}

// Rows [row_begin, row_end) for x's tokens, fewer than kPackedMinTokens: each weight row is read
// from memory once for all the tokens, which is what a batch of sequences decoding together needs.
template <class Step>
SLLM_VNNI void DirectMatmul(const uint8_t* w, size_t row_bytes, size_t nb,
                            const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                            size_t row_begin, size_t row_end) {
  static_assert(kPackedMinTokens == 5, "DirectMatmul takes 1 to 4 tokens");
  const size_t steps = (nb + Step::kBlocks - 1) / Step::kBlocks;
  static thread_local sllm::detail::AlignedBuffer<uint8_t> buffer;
  const size_t bytes = x.n * steps * Step::kXVectors * sizeof(__m512i);
  if (buffer.size() < bytes) buffer.resize(bytes);
  __m512i* prepared = reinterpret_cast<__m512i*>(buffer.data());
  const bool side_by_side = Step::kRowsShareActivations && x.n == 4 && bytes <= kSideBySideBytes;
  PrepareTokens<Step>(x, steps, side_by_side, prepared);
  switch (x.n) {
    case 1:
      return DirectTokens<Step, 1>(w, row_bytes, nb, prepared, steps, y, y_stride, row_begin,
                                   row_end);
    case 2:
      return DirectTokens<Step, 2>(w, row_bytes, nb, prepared, steps, y, y_stride, row_begin,
                                   row_end);
    case 3:
      return DirectTokens<Step, 3>(w, row_bytes, nb, prepared, steps, y, y_stride, row_begin,
                                   row_end);
    default:
      if constexpr (Step::kRowsShareActivations) {
        if (side_by_side) {
          return DirectTokens<Step, 4, true>(w, row_bytes, nb, prepared, steps, y, y_stride,
                                             row_begin, row_end);
        }
      }
      return DirectTokens<Step, 4>(w, row_bytes, nb, prepared, steps, y, y_stride, row_begin,
                                   row_end);
  }
}

// Packed kernels (prefill). A panel of 16 * kPanelVectors weight rows is repacked per block into
// vectors whose lane i holds 4 consecutive unsigned codes of row i, so that one vpdpbusd with a
// broadcast group of 4 activation codes advances 16 rows at once. Per block a panel holds kItems
// items (code groups, then the rows' scales), each kPanelVectors vectors of 64 bytes. A panel type
// has Pack (a panel from the matrix), Starts (what a tile needs of each token and block, kStarts
// int32 values, prepared once per call) and Tile<T> (T tokens times a panel, T <= kTokens).
constexpr size_t kPanelVectors = 2;
constexpr size_t kPanelRows = 16 * kPanelVectors;
constexpr size_t kItemBytes = kPanelVectors * 64;

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

// How many lanes of panel vector v hold rows of the matrix, of a panel of n_rows.
inline size_t PanelLive(size_t n_rows, size_t v) {
  const size_t first = 16 * v;
  return first < n_rows ? std::min<size_t>(16, n_rows - first) : 0;
}

// Per-row values of a block (scales, mins) for the lanes of a panel vector: item k, lane i.
template <size_t kCount, typename T>
SLLM_VNNI HWY_INLINE void StoreLanes(const T (&lanes)[kCount][16], uint8_t* out) {
  static_assert(sizeof(T) == 4, "a lane is 32 bits");
  for (size_t k = 0; k < kCount; ++k) {
    _mm512_store_si512(out + k * kItemBytes, _mm512_loadu_si512(lanes[k]));
  }
}

// What a tile of T tokens from t0 reads of each token: its activation codes and scales and its
// part of the starts prepared for the call (starts_per_token int32 values per token), and the
// tile's f32 sums, zeroed.
template <int T>
struct TileTokens {
  const int8_t* codes[T];
  const float* scales[T];
  const int32_t* starts[T];
  __m512 acc[T][kPanelVectors];
  SLLM_VNNI HWY_INLINE TileTokens(const sllm::detail::QuantizedActivations& x, size_t t0,
                                  const int32_t* all_starts, size_t starts_per_token) {
    for (int t = 0; t < T; ++t) {
      codes[t] = x.codes(t0 + t);
      scales[t] = x.scales(t0 + t);
      starts[t] = all_starts + (t0 + t) * starts_per_token;
      for (size_t v = 0; v < kPanelVectors; ++v) acc[t][v] = _mm512_setzero_ps();
    }
  }
};

// y of tokens t0.. and rows r0.. from a tile's sums: lane i of acc[t][v] is row r0 + 16v + i.
template <int T>
SLLM_VNNI HWY_INLINE void StoreTile(const __m512 (&acc)[T][kPanelVectors], float* y,
                                    size_t y_stride, size_t t0, size_t r0, size_t n_rows) {
  for (size_t v = 0; v < kPanelVectors; ++v) {
    const size_t live = PanelLive(n_rows, v);
    if (live == 0) break;
    const __mmask16 valid = live == 16 ? __mmask16(0xffff) : __mmask16((1u << live) - 1);
    for (int t = 0; t < T; ++t) {
      _mm512_mask_storeu_ps(y + (t0 + t) * y_stride + r0 + 16 * v, valid, acc[t][v]);
    }
  }
}

// The 4 activation codes from p, in every lane.
SLLM_VNNI HWY_INLINE __m512i BroadcastGroup(const int8_t* p) {
  int32_t group;
  std::memcpy(&group, p, 4);
  return _mm512_set1_epi32(group);
}

// The fifth bits of 4 Q5_0 values from bit `first` of each lane's qh, as 16 in each of the
// lane's 4 bytes where set: multiplying spreads the 4 bits to bits 0, 8, 16 and 24.
SLLM_VNNI HWY_INLINE __m512i FifthBits(__m512i qh, unsigned first) {
  const __m512i bits = _mm512_and_si512(_mm512_srl_epi32(qh, _mm_cvtsi32_si128(int(first))),
                                        _mm512_set1_epi32(0x0f));
  const __m512i spread = _mm512_and_si512(_mm512_mullo_epi32(bits, _mm512_set1_epi32(0x00204081)),
                                          _mm512_set1_epi32(0x01010101));
  return _mm512_slli_epi32(spread, 4);
}

// Q8_0, Q4_0 and Q5_0: per block 8 code groups, after which the int32 lane of each row holds the
// whole block's sum, then the rows' f32 scales.
struct BlockPanel {
  static constexpr size_t kItems = 9;
  static constexpr size_t kStarts = 1;
  static constexpr int kTokens = 6;

  static SLLM_VNNI void Pack(TensorType type, const uint8_t* w, size_t row_bytes, size_t nb,
                             size_t r0, size_t n_rows, uint8_t* panel) {
    const bool q8 = type == TensorType::Q8_0, q5 = type == TensorType::Q5_0;
    const size_t block_bytes = q8 ? kQ8Bytes : q5 ? kQ5Bytes : kQ4Bytes;
    const __m512i flip = _mm512_set1_epi8(char(0x80));
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    for (size_t v = 0; v < kPanelVectors; ++v) {
      const size_t live = PanelLive(n_rows, v);
      const uint8_t* base = w + (r0 + 16 * v) * row_bytes;
      for (size_t b = 0; b < nb; ++b) {
        const uint8_t* p = base + b * block_bytes;
        uint8_t* out = panel + b * kItems * kItemBytes + v * 64;
        __m512i groups[4];
        if (q8) {
          for (size_t half = 0; half < 2; ++half) {
            TransposeRows(p, row_bytes, live, 2 + 16 * half, groups);
            for (size_t g = 0; g < 4; ++g) {
              _mm512_store_si512(out + (4 * half + g) * kItemBytes,
                                 _mm512_xor_si512(groups[g], flip));
            }
          }
        } else {
          TransposeRows(p, row_bytes, live, q5 ? 6 : 2, groups);
          alignas(64) uint32_t qh[16] = {};
          if (q5) {
            for (size_t i = 0; i < live; ++i) std::memcpy(&qh[i], p + i * row_bytes + 2, 4);
          }
          const __m512i qhv = _mm512_load_si512(qh);
          for (size_t g = 0; g < 4; ++g) {
            __m512i lo = _mm512_and_si512(groups[g], low4);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi32(groups[g], 4), low4);
            if (q5) {
              lo = _mm512_or_si512(lo, FifthBits(qhv, unsigned(4 * g)));
              hi = _mm512_or_si512(hi, FifthBits(qhv, unsigned(16 + 4 * g)));
            }
            _mm512_store_si512(out + g * kItemBytes, lo);
            _mm512_store_si512(out + (g + 4) * kItemBytes, hi);
          }
        }
        alignas(32) uint16_t d[16] = {};
        for (size_t i = 0; i < live; ++i) std::memcpy(&d[i], p + i * row_bytes, 2);
        _mm512_store_ps(out + 8 * kItemBytes,
                        _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(d))));
      }
    }
  }

  // Per token and block, minus the sum of its codes times what packing added to the weight codes
  // (128 for Q8_0, 8 for Q4_0 whose codes are value + 8, 16 for Q5_0).
  static void Starts(TensorType type, const sllm::detail::QuantizedActivations& x, size_t nb,
                     int32_t* starts) {
    const int32_t offset = type == TensorType::Q8_0 ? 128 : type == TensorType::Q5_0 ? 16 : 8;
    for (size_t t = 0; t < x.n; ++t) {
      const int32_t* sums = x.sums(t);  // per 16 codes
      for (size_t b = 0; b < nb; ++b) {
        starts[t * nb + b] = -(sums[2 * b] + sums[2 * b + 1]) * offset;
      }
    }
  }

  template <int T>
  static SLLM_VNNI void Tile(const uint8_t* panel, size_t nb, const int32_t* starts,
                             const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                             size_t y_stride, size_t r0, size_t n_rows) {
    constexpr size_t V = kPanelVectors;
    TileTokens<T> tile(x, t0, starts, nb);
    auto& acc = tile.acc;
    for (size_t b = 0; b < nb; ++b) {
      const uint8_t* pb = panel + b * kItems * kItemBytes;
      __m512i isum[T][V];
      for (int t = 0; t < T; ++t) {
        const __m512i start = _mm512_set1_epi32(tile.starts[t][b]);
        for (size_t v = 0; v < V; ++v) isum[t][v] = start;
      }
      for (size_t g = 0; g < 8; ++g) {
        __m512i wv[V];
        for (size_t v = 0; v < V; ++v) wv[v] = _mm512_load_si512(pb + g * kItemBytes + v * 64);
        for (int t = 0; t < T; ++t) {
          const __m512i xb = BroadcastGroup(tile.codes[t] + b * kQuantBlock + 4 * g);
          for (size_t v = 0; v < V; ++v) isum[t][v] = Dpbusd(isum[t][v], wv[v], xb);
        }
      }
      __m512 dw[V];
      for (size_t v = 0; v < V; ++v) dw[v] = _mm512_load_ps(pb + 8 * kItemBytes + v * 64);
      for (int t = 0; t < T; ++t) {
        const __m512 dx = _mm512_set1_ps(tile.scales[t][b]);
        for (size_t v = 0; v < V; ++v) {
          acc[t][v] =
              _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[t][v]), _mm512_mul_ps(dw[v], dx), acc[t][v]);
        }
      }
    }
    StoreTile<T>(acc, y, y_stride, t0, r0, n_rows);
  }
};

// The K-quant panels' tile (Panel derives from SubBlockPanel<Panel>): per block and sub-block the
// int32 sum of its code groups times the rows' scale of the sub-block (item kScales + j), added up
// over the block in int32; then Panel::AddBlock adds the block's f32 terms. A sub-block's sum
// starts at zero, or where Panel::kSubBlockStarts at the token's starts entry of the sub-block.
template <class Panel>
struct SubBlockPanel {
  // Panel::PackBlock packs one block of the live rows of a panel vector (row i at p + i *
  // row_bytes) into its items at out.
  static SLLM_VNNI void Pack(TensorType /*type*/, const uint8_t* w, size_t row_bytes, size_t nb,
                             size_t r0, size_t n_rows, uint8_t* panel) {
    for (size_t v = 0; v < kPanelVectors; ++v) {
      const size_t live = PanelLive(n_rows, v);
      const uint8_t* base = w + (r0 + 16 * v) * row_bytes;
      for (size_t b = 0; b < nb; ++b) {
        Panel::PackBlock(base + b * Panel::kBlockBytes, row_bytes, live,
                         panel + b * Panel::kItems * kItemBytes + v * 64);
      }
    }
  }

  template <int T>
  static SLLM_VNNI void Tile(const uint8_t* panel, size_t nb, const int32_t* starts,
                             const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                             size_t y_stride, size_t r0, size_t n_rows) {
    constexpr size_t V = kPanelVectors;
    constexpr size_t kValues = kSuperBlock / Panel::kSubBlocks, kGroups = kValues / 4;
    TileTokens<T> tile(x, t0, starts, Panel::kStarts * nb);
    auto& acc = tile.acc;
    for (size_t b = 0; b < nb; ++b) {
      const uint8_t* pb = panel + b * Panel::kItems * kItemBytes;
      __m512i sum[T][V];
      for (int t = 0; t < T; ++t) {
        for (size_t v = 0; v < V; ++v) sum[t][v] = _mm512_setzero_si512();
      }
      for (size_t j = 0; j < Panel::kSubBlocks; ++j) {
        __m512i isum[T][V];
        for (int t = 0; t < T; ++t) {
          const __m512i start = Panel::kSubBlockStarts
                                    ? _mm512_set1_epi32(tile.starts[t][Panel::kStarts * b + j])
                                    : _mm512_setzero_si512();
          for (size_t v = 0; v < V; ++v) isum[t][v] = start;
        }
        for (size_t g = 0; g < kGroups; ++g) {
          __m512i wv[V];
          for (size_t v = 0; v < V; ++v) {
            wv[v] = _mm512_load_si512(pb + (kGroups * j + g) * kItemBytes + v * 64);
          }
          for (int t = 0; t < T; ++t) {
            const __m512i xb =
                BroadcastGroup(tile.codes[t] + b * kSuperBlock + kValues * j + 4 * g);
            for (size_t v = 0; v < V; ++v) isum[t][v] = Dpbusd(isum[t][v], wv[v], xb);
          }
        }
        for (size_t v = 0; v < V; ++v) {
          const __m512i scale = _mm512_load_si512(pb + (Panel::kScales + j) * kItemBytes + v * 64);
          for (int t = 0; t < T; ++t) {
            sum[t][v] = _mm512_add_epi32(sum[t][v], _mm512_mullo_epi32(isum[t][v], scale));
          }
        }
      }
      for (int t = 0; t < T; ++t) {
        const __m512 dx = _mm512_set1_ps(tile.scales[t][b]);
        const int32_t* block_starts = tile.starts[t] + Panel::kStarts * b;
        for (size_t v = 0; v < V; ++v) {
          acc[t][v] = Panel::AddBlock(pb + v * 64, sum[t][v], dx, block_starts, acc[t][v]);
        }
      }
    }
    StoreTile<T>(acc, y, y_stride, t0, r0, n_rows);
  }
};

// The code groups of a block's 64 bytes of 2-bit codes at qs in each of the live rows: group
// 4j + g holds values 4g..4g+3 of sub-block j of 16 (value l of quarter k of half h is bit pair k
// of qs[32h + l]). With hmask (Q3_K), plus 4 where bit 4h + k of hmask[l] is set.
SLLM_VNNI HWY_INLINE void PackBitPairs(const uint8_t* qs, const uint8_t* hmask, size_t row_bytes,
                                       size_t live, uint8_t* out) {
  for (size_t c = 0; c < 2; ++c) {
    __m512i top[4] = {};
    if (hmask != nullptr) TransposeRows(hmask, row_bytes, live, 16 * c, top);
    for (size_t h = 0; h < 2; ++h) {
      __m512i bytes[4];
      TransposeRows(qs, row_bytes, live, 32 * h + 16 * c, bytes);
      for (size_t g = 0; g < 4; ++g) {
        for (size_t k = 0; k < 4; ++k) {
          const size_t group = 32 * h + 8 * k + 4 * c + g;  // values 4 group..
          const __m512i low =
              _mm512_and_si512(_mm512_srli_epi32(bytes[g], unsigned(2 * k)), _mm512_set1_epi8(3));
          const __mmask64 set =
              _mm512_test_epi8_mask(top[g], _mm512_set1_epi8(char(1 << (4 * h + k))));
          _mm512_store_si512(out + group * kItemBytes,
                             _mm512_mask_add_epi8(low, set, low, _mm512_set1_epi8(4)));
        }
      }
    }
  }
}

// Q2_K, Q4_K and Q5_K: per block the 64 code groups in value order (group 4 (V / 4) j + g: values
// 4g..4g+3 of sub-block j of V = 256 / kSubBlocks), the rows' kSubBlocks sub-block scales (int32),
// their mins as pairs (sub-blocks 2k and 2k + 1 as the low and high int16 of a lane), d and dmin
// (f32). Each sub-block's int32 sum is multiplied by its scale; the mins are multiplied by the
// pairs of activation code sums (kStarts) with vpdpwssd. Panel adds kBlockBytes and PackBlock.
template <class Panel, size_t kSubBlockCount>
struct ScaleMinPanelBase : SubBlockPanel<Panel> {
  static constexpr size_t kSubBlocks = kSubBlockCount;
  static constexpr size_t kStarts = kSubBlocks / 2;
  static constexpr size_t kItems = 64 + kSubBlocks + kStarts + 2;
  static constexpr int kTokens = 4;
  static constexpr bool kSubBlockStarts = false;
  static constexpr size_t kScales = 64, kMins = 64 + kSubBlocks, kD = kMins + kStarts;

  // The scales, mins, d and dmin of the live rows of a panel vector, from their blocks at p (d and
  // dmin the f16 pair at d_offset; scale_min_of(row, j, scale, min) unpacks sub-block j's).
  template <class ScaleMinOf>
  static SLLM_VNNI void PackScaleMins(const uint8_t* p, size_t row_bytes, size_t live,
                                      size_t d_offset, ScaleMinOf scale_min_of, uint8_t* out) {
    alignas(64) int32_t scales[kSubBlocks][16] = {}, mins[kStarts][16] = {};
    alignas(64) float d[2][16] = {};
    for (size_t i = 0; i < live; ++i) {
      const uint8_t* row = p + i * row_bytes;
      uint8_t scale[kSubBlocks], min[kSubBlocks];
      for (size_t j = 0; j < kSubBlocks; ++j) scale_min_of(row, j, &scale[j], &min[j]);
      for (size_t j = 0; j < kSubBlocks; ++j) scales[j][i] = scale[j];
      for (size_t k = 0; k < kStarts; ++k) mins[k][i] = min[2 * k] | min[2 * k + 1] << 16;
      uint16_t h[2];
      std::memcpy(h, row + d_offset, 4);
      d[0][i] = fp16_to_f32(h[0]);
      d[1][i] = fp16_to_f32(h[1]);
    }
    StoreLanes(scales, out + kScales * kItemBytes);
    StoreLanes(mins, out + kMins * kItemBytes);
    StoreLanes(d, out + kD * kItemBytes);
  }

  // Per token, block and pair k of sub-blocks: the sums of the codes of sub-blocks 2k and 2k + 1
  // as the low and high int16.
  static void Starts(TensorType /*type*/, const sllm::detail::QuantizedActivations& x, size_t nb,
                     int32_t* starts) {
    constexpr size_t kSums = kSuperBlock / kSubBlocks / 16;  // sums of 16 codes per sub-block
    for (size_t t = 0; t < x.n; ++t) {
      const int32_t* sums = x.sums(t);  // per 16 codes
      for (size_t k = 0; k < kStarts * nb; ++k) {
        int32_t pair[2] = {0, 0};
        for (size_t i = 0; i < 2 * kSums; ++i) pair[i / kSums] += sums[2 * kSums * k + i];
        starts[t * kStarts * nb + k] =
            int32_t(uint32_t(uint16_t(pair[0])) | uint32_t(pair[1]) << 16);
      }
    }
  }

  // The block's sum times d dx, less the mins times the pairs of sub-block code sums times dmin dx
  // (pv: the panel vector's lanes of the block).
  static SLLM_VNNI HWY_INLINE __m512 AddBlock(const uint8_t* pv, __m512i sum, __m512 dx,
                                              const int32_t* block_starts, __m512 acc) {
    __m512i mins = _mm512_setzero_si512();
    for (size_t k = 0; k < kStarts; ++k) {
      mins = Dpwssd(mins, _mm512_load_si512(pv + (kMins + k) * kItemBytes),
                    _mm512_set1_epi32(block_starts[k]));
    }
    const __m512 d = _mm512_load_ps(pv + kD * kItemBytes);
    const __m512 dmin = _mm512_load_ps(pv + (kD + 1) * kItemBytes);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, dx), acc);
    return _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins), _mm512_mul_ps(dmin, dx), acc);
  }
};

// Q4_K and Q5_K (kHighBit; the codes with their fifth bit): 8 sub-blocks of 32.
template <bool kHighBit>
struct ScaleMinPanel : ScaleMinPanelBase<ScaleMinPanel<kHighBit>, 8> {
  using Base = ScaleMinPanelBase<ScaleMinPanel<kHighBit>, 8>;
  using Block = ScaleMinBlock<kHighBit>;
  static constexpr size_t kBlockBytes = Block::kBytes;
  static SLLM_VNNI void PackBlock(const uint8_t* p, size_t row_bytes, size_t live, uint8_t* out) {
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    // Q5_K: the top bits of values 16 half.. (bit j of qh[l] for value l of sub-block j).
    __m512i qh[2][4] = {};
    if constexpr (kHighBit) {
      for (size_t half = 0; half < 2; ++half) {
        TransposeRows(p, row_bytes, live, Block::kQh + 16 * half, qh[half]);
      }
    }
    // Bytes 16c..16c+15 of the codes: values 16 (c % 2).. of sub-blocks 2 (c / 2) (low
    // nibbles) and 2 (c / 2) + 1 (high nibbles).
    for (size_t c = 0; c < 8; ++c) {
      __m512i groups[4];
      TransposeRows(p, row_bytes, live, Block::kQs + 16 * c, groups);
      const size_t first = 16 * (c / 2) + 4 * (c % 2);
      for (size_t g = 0; g < 4; ++g) {
        __m512i low = _mm512_and_si512(groups[g], low4);
        __m512i high = _mm512_and_si512(_mm512_srli_epi32(groups[g], 4), low4);
        if constexpr (kHighBit) {
          const int j = int(2 * (c / 2));
          low = WithTopBit(low, qh[c % 2][g], _mm512_set1_epi8(char(1 << j)));
          high = WithTopBit(high, qh[c % 2][g], _mm512_set1_epi8(char(1 << (j + 1))));
        }
        _mm512_store_si512(out + (first + g) * kItemBytes, low);
        _mm512_store_si512(out + (first + 8 + g) * kItemBytes, high);
      }
    }
    Base::PackScaleMins(
        p, row_bytes, live, 0,
        [](const uint8_t* row, size_t j, uint8_t* scale, uint8_t* min) {
          unpack_q4_k_scales(row + 4, int(j), scale, min);
        },
        out);
  }
};

// Q2_K: 16 sub-blocks of 16, codes as Q3_K's low bits (see q2_k_code).
struct Q2KPanel : ScaleMinPanelBase<Q2KPanel, 16> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ2_K);
  static SLLM_VNNI void PackBlock(const uint8_t* p, size_t row_bytes, size_t live, uint8_t* out) {
    PackBitPairs(p + offsetof(BlockQ2_K, qs), nullptr, row_bytes, live, out);
    PackScaleMins(
        p, row_bytes, live, offsetof(BlockQ2_K, d),
        [](const uint8_t* row, size_t j, uint8_t* scale, uint8_t* min) {
          unpack_q2_k_scales(row + offsetof(BlockQ2_K, scales), j, scale, min);
        },
        out);
  }
};

using Q4KPanel = ScaleMinPanel<false>;
using Q5KPanel = ScaleMinPanel<true>;

// Q3_K and Q6_K: per block the 64 code groups in value order, stored plus kOffset (unsigned;
// group 4j + g: values 4g..4g+3 of sub-block j of 16), the rows' 16 sub-block scales (int32) and d
// (f32). Each sub-block's sum starts at minus kOffset times its activation codes' sum (kStarts) and
// is multiplied by its scale. Panel adds kBlockBytes and PackBlock.
template <class Panel, int kOffset>
struct SubBlock16Panel : SubBlockPanel<Panel> {
  static constexpr size_t kItems = 64 + 16 + 1;
  static constexpr size_t kStarts = 16;
  static constexpr int kTokens = 4;
  static constexpr size_t kSubBlocks = 16;
  static constexpr bool kSubBlockStarts = true;
  static constexpr size_t kScales = 64, kD = 80;

  // The scales and d of the live rows of a panel vector, from their blocks at p.
  template <class ScaleOf>
  static SLLM_VNNI void PackScales(const uint8_t* p, size_t row_bytes, size_t live, size_t d_offset,
                                   ScaleOf scale_of, uint8_t* out) {
    alignas(64) int32_t scales[16][16] = {};
    alignas(64) float d[1][16] = {};
    for (size_t i = 0; i < live; ++i) {
      const uint8_t* row = p + i * row_bytes;
      for (size_t j = 0; j < 16; ++j) scales[j][i] = scale_of(row, j);
      uint16_t h;
      std::memcpy(&h, row + d_offset, 2);
      d[0][i] = fp16_to_f32(h);
    }
    StoreLanes(scales, out + kScales * kItemBytes);
    StoreLanes(d, out + kD * kItemBytes);
  }

  // Per token, block and sub-block: minus kOffset times the sum of its activation codes.
  static void Starts(TensorType /*type*/, const sllm::detail::QuantizedActivations& x, size_t nb,
                     int32_t* starts) {
    for (size_t t = 0; t < x.n; ++t) {
      const int32_t* sums = x.sums(t);
      for (size_t j = 0; j < 16 * nb; ++j) starts[t * 16 * nb + j] = -kOffset * sums[j];
    }
  }

  // The block's sum (with the offset taken off by the starts) times d dx.
  static SLLM_VNNI HWY_INLINE __m512 AddBlock(const uint8_t* pv, __m512i sum, __m512 dx,
                                              const int32_t* /*block_starts*/, __m512 acc) {
    const __m512 d = _mm512_load_ps(pv + kD * kItemBytes);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, dx), acc);
  }
};

// Q3_K: code 4 + value, the bit pairs and hmask bits (see q3_k_code).
struct Q3KPanel : SubBlock16Panel<Q3KPanel, 4> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ3_K);
  static SLLM_VNNI void PackBlock(const uint8_t* p, size_t row_bytes, size_t live, uint8_t* out) {
    PackBitPairs(p + offsetof(BlockQ3_K, qs), p + offsetof(BlockQ3_K, hmask), row_bytes, live, out);
    PackScales(
        p, row_bytes, live, offsetof(BlockQ3_K, d),
        [](const uint8_t* row, size_t j) {
          return q3_k_scale(row + offsetof(BlockQ3_K, scales), j);
        },
        out);
  }
};

// Q6_K: code 32 + value, the low nibbles of ql and bit pairs of qh (see q6_k_code).
struct Q6KPanel : SubBlock16Panel<Q6KPanel, 32> {
  static constexpr size_t kBlockBytes = sizeof(BlockQ6_K);
  static SLLM_VNNI void PackBlock(const uint8_t* p, size_t row_bytes, size_t live, uint8_t* out) {
    const __m512i low4 = _mm512_set1_epi8(0x0f), bits45 = _mm512_set1_epi8(0x30);
    // Values l..l+15 (l = 16 c) of the 4 quarters of half h: the low nibbles of ql[64h + l..]
    // and ql[64h + 32 + l..], then their high nibbles; the top bits are bit pairs of
    // qh[32h + l..].
    for (size_t h = 0; h < 2; ++h) {
      for (size_t c = 0; c < 2; ++c) {
        __m512i ql0[4], ql1[4], qh[4];
        TransposeRows(p, row_bytes, live, 64 * h + 16 * c, ql0);
        TransposeRows(p, row_bytes, live, 64 * h + 32 + 16 * c, ql1);
        TransposeRows(p, row_bytes, live, 128 + 32 * h + 16 * c, qh);
        for (size_t g = 0; g < 4; ++g) {
          const __m512i quarters[4] = {
              _mm512_or_si512(_mm512_and_si512(ql0[g], low4),
                              _mm512_and_si512(_mm512_slli_epi32(qh[g], 4), bits45)),
              _mm512_or_si512(_mm512_and_si512(ql1[g], low4),
                              _mm512_and_si512(_mm512_slli_epi32(qh[g], 2), bits45)),
              _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(ql0[g], 4), low4),
                              _mm512_and_si512(qh[g], bits45)),
              _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(ql1[g], 4), low4),
                              _mm512_and_si512(_mm512_srli_epi32(qh[g], 2), bits45))};
          for (size_t k = 0; k < 4; ++k) {
            const size_t group = 32 * h + 8 * k + 4 * c + g;  // values 4 group..
            _mm512_store_si512(out + group * kItemBytes, quarters[k]);
          }
        }
      }
    }
    PackScales(
        p, row_bytes, live, 208,
        [](const uint8_t* row, size_t j) { return int32_t(int8_t(row[192 + j])); }, out);
  }
};

// The last rem < Panel::kTokens tokens, with a tile of exactly that many.
template <class Panel, int T>
SLLM_VNNI void PanelRemainder(size_t rem, const uint8_t* panel, size_t nb, const int32_t* starts,
                              const sllm::detail::QuantizedActivations& x, size_t t0, float* y,
                              size_t y_stride, size_t r0, size_t n_rows) {
  if (rem == T) {
    Panel::template Tile<T>(panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  } else if constexpr (T > 1) {
    PanelRemainder<Panel, T - 1>(rem, panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  }
}

template <class Panel>
SLLM_VNNI void PanelTokens(const uint8_t* panel, size_t nb, const int32_t* starts,
                           const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                           size_t r0, size_t n_rows) {
  size_t t0 = 0;
  for (; t0 + Panel::kTokens <= x.n; t0 += Panel::kTokens) {
    Panel::template Tile<Panel::kTokens>(panel, nb, starts, x, t0, y, y_stride, r0, n_rows);
  }
  if (t0 < x.n) {
    PanelRemainder<Panel, Panel::kTokens - 1>(x.n - t0, panel, nb, starts, x, t0, y, y_stride, r0,
                                              n_rows);
  }
}

// The per-thread buffers of the packed kernels: they only grow, as matrices of different widths
// and types alternate.
struct PanelBuffers {
  sllm::detail::AlignedBuffer<uint8_t> panel;
  sllm::detail::AlignedBuffer<int32_t> starts;
};
inline PanelBuffers& ThreadPanelBuffers() {
  static thread_local PanelBuffers buffers;
  return buffers;
}

template <class Panel>
SLLM_VNNI void PackedMatmul(TensorType type, const uint8_t* w, size_t row_bytes, size_t nb,
                            const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                            size_t row_begin, size_t row_end) {
  PanelBuffers& buf = ThreadPanelBuffers();
  const size_t panel_bytes = nb * Panel::kItems * kItemBytes;
  const size_t n_starts = x.n * nb * Panel::kStarts;
  if (buf.panel.size() < panel_bytes) buf.panel.resize(panel_bytes);
  if (buf.starts.size() < n_starts) buf.starts.resize(n_starts);
  Panel::Starts(type, x, nb, buf.starts.data());
  for (size_t r = row_begin; r < row_end; r += kPanelRows) {
    const size_t n_rows = std::min(kPanelRows, row_end - r);
    Panel::Pack(type, w, row_bytes, nb, r, n_rows, buf.panel.data());
    PanelTokens<Panel>(buf.panel.data(), nb, buf.starts.data(), x, y, y_stride, r, n_rows);
  }
}

template <class Step, class Panel>
SLLM_VNNI void MatmulType(TensorType type, const uint8_t* w, size_t cols, size_t row_bytes,
                          const sllm::detail::QuantizedActivations& x, float* y, size_t y_stride,
                          size_t row_begin, size_t row_end) {
  const size_t nb = cols / Step::kBlockValues;
  if (x.n < kPackedMinTokens) {
    DirectMatmul<Step>(w, row_bytes, nb, x, y, y_stride, row_begin, row_end);
  } else {
    PackedMatmul<Panel>(type, w, row_bytes, nb, x, y, y_stride, row_begin, row_end);
  }
}

SLLM_VNNI void MatmulQRows(TensorType type, const uint8_t* w, size_t cols, size_t row_bytes,
                           const sllm::detail::QuantizedActivations* x, float* y, size_t y_stride,
                           size_t row_begin, size_t row_end) {
  switch (type) {
    case TensorType::Q8_0:
      return MatmulType<Q8Step, BlockPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                            row_end);
    case TensorType::Q4_0:
      return MatmulType<Q4Step, BlockPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                            row_end);
    case TensorType::Q5_0:
      return MatmulType<Q5Step, BlockPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                            row_end);
    case TensorType::Q4_K:
      return MatmulType<Q4KStep, Q4KPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                           row_end);
    case TensorType::Q5_K:
      return MatmulType<Q5KStep, Q5KPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                           row_end);
    case TensorType::Q2_K:
      return MatmulType<Q2KStep, Q2KPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                           row_end);
    case TensorType::Q3_K:
      return MatmulType<Q3KStep, Q3KPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                           row_end);
    default:
      return MatmulType<Q6KStep, Q6KPanel>(type, w, cols, row_bytes, *x, y, y_stride, row_begin,
                                           row_end);
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

// Q4_0 and Q5_0 (kFifthBit): the low 4 bits of code j and j + 16 in the nibbles of byte j, for
// Q5_0 the fifth bits in the 4 bytes before them. The codes are value + 8 (Q4_0) or value + 16.
template <bool kFifthBit>
HWY_INLINE float RowDotNibbles(const uint8_t* w, size_t nb, const int8_t* xq, const float* xs) {
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Rebind<uint8_t, decltype(d16)> du8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const hn::Repartition<float, decltype(d16)> df;
  const size_t N = hn::Lanes(d16);
  constexpr size_t kHalf = kQuantBlock / 2;
  constexpr size_t kBlockBytes = kFifthBit ? kQ5Bytes : kQ4Bytes;
  constexpr size_t kCodes = kBlockBytes - kHalf;
  // Q5_0 subtracts 16 where the fifth bit is clear; lane i tests bit i of the block's qh shifted.
  alignas(64) static constexpr int16_t kLaneBits[16] = {
      1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, -32768};
  const auto lane_bits = hn::Load(d16, kLaneBits);
  const auto offset = hn::Set(d16, int16_t{kFifthBit ? 16 : 8});
  const auto low4 = hn::Set(du8, uint8_t{0x0f});
  auto acc = hn::Zero(df);
  for (size_t b = 0; b < nb; ++b, w += kBlockBytes, xq += kQuantBlock) {
    uint32_t qh = 0;
    if (kFifthBit) std::memcpy(&qh, w + 2, 4);
    const auto minus_offset = [&](decltype(offset) low, uint32_t bits) {
      if (!kFifthBit) return hn::Sub(low, offset);
      const auto set = hn::TestBit(hn::Set(d16, int16_t(uint16_t(bits))), lane_bits);
      return hn::Sub(low, hn::IfThenZeroElse(set, offset));
    };
    auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
    for (size_t i = 0; i < kHalf; i += N) {
      const auto packed = hn::LoadU(du8, w + kCodes + i);
      const auto lo = minus_offset(hn::PromoteTo(d16, hn::And(packed, low4)), qh >> i);
      const auto hi = minus_offset(hn::PromoteTo(d16, hn::ShiftRight<4>(packed)), qh >> (16 + i));
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

// K-quants: per sub-block the int32 sum of the products, times the sub-block's scale in int32
// lanes; per block the sums and the f32 scales combined as ref::dot_q4_k, ref::dot_q5_k and
// ref::dot_q6_k do. RowDotScaleMin: Q4_K, and Q5_K (kHighBit).
template <bool kHighBit>
HWY_INLINE float RowDotScaleMin(const uint8_t* w, size_t nb, const int8_t* xq, const float* xs,
                                const int32_t* xsums) {
  using Block = ScaleMinBlock<kHighBit>;
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Rebind<uint8_t, decltype(d16)> du8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const size_t N = hn::Lanes(d16);
  const auto low4 = hn::Set(du8, uint8_t{0x0f});
  const auto one = hn::Set(d16, int16_t{1});
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b, w += Block::kBytes, xq += kSuperBlock, xsums += 16) {
    auto scaled = hn::Zero(d32);
    int32_t mins = 0;
    for (int j = 0; j < 8; ++j) {
      uint8_t scale, min;
      unpack_q4_k_scales(w + 4, j, &scale, &min);
      // Sub-block j in the low (even j) or high nibbles; Q5_K's top bit of value l in bit j of
      // qh[l].
      const uint8_t* q = w + Block::kQs + j / 2 * 32;
      auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
      for (size_t i = 0; i < 32; i += N) {
        const auto packed = hn::LoadU(du8, q + i);
        auto codes = hn::PromoteTo(d16, j % 2 ? hn::ShiftRight<4>(packed) : hn::And(packed, low4));
        if constexpr (kHighBit) {
          const auto qh = hn::PromoteTo(d16, hn::LoadU(du8, w + Block::kQh + i));
          codes = hn::Or(codes, hn::ShiftLeft<4>(hn::And(hn::ShiftRightSame(qh, j), one)));
        }
        sum0 = hn::ReorderWidenMulAccumulate(
            d32, codes, hn::PromoteTo(d16, hn::LoadU(d8, xq + 32 * j + i)), sum0, sum1);
      }
      scaled = hn::Add(scaled, hn::Mul(hn::Add(sum0, sum1), hn::Set(d32, int32_t{scale})));
      mins += min * (xsums[2 * j] + xsums[2 * j + 1]);
    }
    uint16_t d[2];
    std::memcpy(d, w, 4);
    sum += xs[b] * (fp16_to_f32(d[0]) * float(hn::GetLane(hn::SumOfLanes(d32, scaled))) -
                    fp16_to_f32(d[1]) * float(mins));
  }
  return sum;
}

// Q2_K, Q3_K and Q6_K: per sub-block of 16, the codes (less their offset) times the activation
// codes, times the sub-block's scale; the block's sum times d, less (kHasMins: Q2_K) the mins times
// the activation code sums times dmin. Format has Codes (values 16j + i.. of sub-block j, as
// int16), Scale and Min (of sub-block j), kBytes, and kD (where d is, then dmin).
template <class Format>
HWY_INLINE float RowDotSubBlock16(const uint8_t* w, size_t nb, const int8_t* xq, const float* xs,
                                  const int32_t* xsums) {
  const hn::CappedTag<int16_t, 16> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::Repartition<int32_t, decltype(d16)> d32;
  const size_t N = hn::Lanes(d16);
  float sum = 0.0f;
  for (size_t b = 0; b < nb; ++b, w += Format::kBytes, xq += kSuperBlock, xsums += 16) {
    auto scaled = hn::Zero(d32);
    int32_t mins = 0;
    for (size_t j = 0; j < kSuperBlock / 16; ++j) {
      if constexpr (Format::kHasMins) mins += Format::Min(w, j) * xsums[j];
      auto sum0 = hn::Zero(d32), sum1 = hn::Zero(d32);
      for (size_t i = 0; i < 16; i += N) {
        sum0 = hn::ReorderWidenMulAccumulate(d32, Format::Codes(d16, w, j, i),
                                             hn::PromoteTo(d16, hn::LoadU(d8, xq + 16 * j + i)),
                                             sum0, sum1);
      }
      scaled = hn::Add(scaled, hn::Mul(hn::Add(sum0, sum1), hn::Set(d32, Format::Scale(w, j))));
    }
    uint16_t d[2];
    std::memcpy(&d[0], w + Format::kD, 2);
    const float block = fp16_to_f32(d[0]) * float(hn::GetLane(hn::SumOfLanes(d32, scaled)));
    if constexpr (Format::kHasMins) {
      std::memcpy(&d[1], w + Format::kD + 2, 2);
      sum += xs[b] * (block - fp16_to_f32(d[1]) * float(mins));
    } else {
      sum += xs[b] * block;
    }
  }
  return sum;
}

// Value l.. of quarter k = j % 8 / 2 of half h = j / 8 (l = 16 (j % 2) + i): bit pair k of the
// 2-bit codes at qs[32h + l..] (Q2_K's codes, Q3_K's low bits; see k_bit_pair).
template <class D16>
HWY_INLINE hn::Vec<D16> BitPairs(D16 d16, const uint8_t* qs, size_t j, size_t i) {
  const hn::Rebind<uint8_t, D16> du8;
  const size_t h = j / 8, k = j % 8 / 2, l = j % 2 * 16 + i;
  const auto bytes = hn::PromoteTo(d16, hn::LoadU(du8, qs + 32 * h + l));
  return hn::And(hn::ShiftRightSame(bytes, int(2 * k)), hn::Set(d16, int16_t{3}));
}

struct Q2KFormat {
  static constexpr size_t kBytes = sizeof(BlockQ2_K), kD = offsetof(BlockQ2_K, d);
  static constexpr bool kHasMins = true;
  template <class D16>
  static HWY_INLINE hn::Vec<D16> Codes(D16 d16, const uint8_t* w, size_t j, size_t i) {
    return BitPairs(d16, w + offsetof(BlockQ2_K, qs), j, i);
  }
  static int32_t Scale(const uint8_t* w, size_t j) { return w[j] & 0x0f; }
  static int32_t Min(const uint8_t* w, size_t j) { return w[j] >> 4; }
};

// Sub-block j of a Q3_K block: quarter k = j % 8 / 2 of half h = j / 8, values l.. (l = 16 (j %
// 2)); see q3_k_code.
struct Q3KFormat {
  static constexpr size_t kBytes = sizeof(BlockQ3_K), kD = offsetof(BlockQ3_K, d);
  static constexpr bool kHasMins = false;
  template <class D16>
  static HWY_INLINE hn::Vec<D16> Codes(D16 d16, const uint8_t* w, size_t j, size_t i) {
    const hn::Rebind<uint8_t, D16> du8;
    const size_t h = j / 8, k = j % 8 / 2, l = j % 2 * 16 + i;
    const auto hmask = hn::PromoteTo(d16, hn::LoadU(du8, w + offsetof(BlockQ3_K, hmask) + l));
    const auto high = hn::And(hn::ShiftRightSame(hmask, int(4 * h + k)), hn::Set(d16, int16_t{1}));
    return hn::Sub(hn::Or(BitPairs(d16, w + offsetof(BlockQ3_K, qs), j, i), hn::ShiftLeft<2>(high)),
                   hn::Set(d16, int16_t{4}));
  }
  static int32_t Scale(const uint8_t* w, size_t j) {
    return q3_k_scale(w + offsetof(BlockQ3_K, scales), j);
  }
};

// Sub-block j of a Q6_K block: quarter k = j % 8 / 2 of half h = j / 8, values l.. (l = 16 (j %
// 2)); see q6_k_code.
struct Q6KFormat {
  static constexpr size_t kBytes = sizeof(BlockQ6_K), kD = offsetof(BlockQ6_K, d);
  static constexpr bool kHasMins = false;
  template <class D16>
  static HWY_INLINE hn::Vec<D16> Codes(D16 d16, const uint8_t* w, size_t j, size_t i) {
    const hn::Rebind<uint8_t, D16> du8;
    const size_t h = j / 8, k = j % 8 / 2, l = j % 2 * 16 + i;
    const uint8_t* ql = w + 64 * h + 32 * (k % 2) + l;
    const uint8_t* qh = w + 128 + 32 * h + l;
    const auto low =
        hn::And(hn::ShiftRightSame(hn::PromoteTo(d16, hn::LoadU(du8, ql)), int(k / 2 * 4)),
                hn::Set(d16, int16_t{0x0f}));
    const auto high =
        hn::And(hn::ShiftRightSame(hn::PromoteTo(d16, hn::LoadU(du8, qh)), int(2 * k)),
                hn::Set(d16, int16_t{3}));
    return hn::Sub(hn::Or(low, hn::ShiftLeft<4>(high)), hn::Set(d16, int16_t{32}));
  }
  static int32_t Scale(const uint8_t* w, size_t j) { return int8_t(w[192 + j]); }
};

void MatmulQRows(TensorType type, const uint8_t* w, size_t cols, size_t row_bytes,
                 const sllm::detail::QuantizedActivations* x, float* y, size_t y_stride,
                 size_t row_begin, size_t row_end) {
  for (size_t r = row_begin; r < row_end; ++r) {
    const uint8_t* wr = w + r * row_bytes;
    for (size_t t = 0; t < x->n; ++t) {
      float dot;
      switch (type) {
        case TensorType::Q8_0:
          dot = RowDotQ8(wr, cols / kQuantBlock, x->codes(t), x->scales(t));
          break;
        case TensorType::Q4_0:
          dot = RowDotNibbles<false>(wr, cols / kQuantBlock, x->codes(t), x->scales(t));
          break;
        case TensorType::Q5_0:
          dot = RowDotNibbles<true>(wr, cols / kQuantBlock, x->codes(t), x->scales(t));
          break;
        case TensorType::Q4_K:
          dot =
              RowDotScaleMin<false>(wr, cols / kSuperBlock, x->codes(t), x->scales(t), x->sums(t));
          break;
        case TensorType::Q5_K:
          dot = RowDotScaleMin<true>(wr, cols / kSuperBlock, x->codes(t), x->scales(t), x->sums(t));
          break;
        case TensorType::Q2_K:
          dot = RowDotSubBlock16<Q2KFormat>(wr, cols / kSuperBlock, x->codes(t), x->scales(t),
                                            x->sums(t));
          break;
        case TensorType::Q3_K:
          dot = RowDotSubBlock16<Q3KFormat>(wr, cols / kSuperBlock, x->codes(t), x->scales(t),
                                            x->sums(t));
          break;
        default:
          dot = RowDotSubBlock16<Q6KFormat>(wr, cols / kSuperBlock, x->codes(t), x->scales(t),
                                            x->sums(t));
      }
      y[t * y_stride + r] = dot;
    }
  }
}
#endif  // HWY_TARGET == HWY_AVX3_DL
