// The x86 row kernels, compiled once per instruction set: include with LR_SIMD_NS defined (see kernels_simd.h).
//
// Only this file's own functions are used here: an inline function from another header compiled with AVX-512 flags
// could be picked by the linker for the whole program and fault on a CPU without AVX-512.
//
// Integer kernels: for each 32 weights, unpack to 32 unsigned bytes, multiply with the 32 signed activation bytes
// (vpdpbusd with VNNI, vpmaddubsw + vpmaddwd otherwise; the products of 6-bit weights fit the 16-bit pairs of the
// latter), scale the 8 int32 partial sums by weight scale * activation scale into a float accumulator. The offsets
// of the formats (-8, +min, -32) are applied once per block through the activation sums.
#ifndef LR_SIMD_NS
#error "define LR_SIMD_NS before including kernels_x86.h"
#endif

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_* values and warn about them once inlined (fixed in GCC 13).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cassert>
#include <cstdint>
#include <cstring>

#include "base/half.h"
#include "ops/kernels_simd.h"

namespace lr::ops::LR_SIMD_NS {
namespace {

float LoadHalfF16c(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Lane i (of 8) = sum over bytes 4i..4i+3 of u * s, u unsigned, s signed.
__m256i MulSum(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__m256i Load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 bytes of nibble pairs -> 32 bytes: the low nibbles (values 0..15), then the high nibbles (values 16..31).
__m256i Nibbles16(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// acc += float(MulSum(w, a.q)) * scale
__m256 Accumulate(__m256 acc, __m256i w, const BlockQ8& a, float scale) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(MulSum(w, Load32(a.q))), _mm256_set1_ps(scale), acc);
}

// The 6-bit scale and min of sub-block j of a q4_K / q5_K super-block (ggml's 12-byte packing).
void ScaleMinK4(int j, const uint8_t* s, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// --- one row against NT tokens: out[t] = row . token t. a[t]: token t's BlockQ8s, x[t]: its floats; n values ---
// The weights are unpacked once per block and multiplied with every token's activations (prefill reads and
// unpacks each row once per NT tokens).

// Two accumulators per token, for even and odd blocks: one fmadd chain per block would wait on the previous
// block's fmadd (4 cycles) and bound a decode step by latency instead of memory.
template <int NT>
struct Acc2 {
  __m256 v[2][NT];
  float offset[2][NT];
  Acc2() {
    for (int p = 0; p < 2; ++p) {
      for (int t = 0; t < NT; ++t) {
        v[p][t] = _mm256_setzero_ps();
        offset[p][t] = 0;
      }
    }
  }
  // out[t] = sum of the vector lanes + offset_sign * the offsets
  void Finish(float offset_sign, float* out) const {
    for (int t = 0; t < NT; ++t)
      out[t] = HSum(_mm256_add_ps(v[0][t], v[1][t])) + offset_sign * (offset[0][t] + offset[1][t]);
  }
};

// Runs block(b, parity) for every 32-value block, alternating parities.
template <typename Block>
void ForBlocks(int64_t n_blocks, Block&& block) {
  int64_t b = 0;
  for (; b + 1 < n_blocks; b += 2) {
    block(b, 0);
    block(b + 1, 1);
  }
  if (b < n_blocks) block(b, 0);
}

template <int NT>
void DotQ4_0(const uint8_t* row, const BlockQ8* const* a, const float* const*, int64_t n, float* out) {
  Acc2<NT> acc;
  ForBlocks(n / 32, [&](int64_t b, int p) {
    const uint8_t* blk = row + b * 18;
    const float d = LoadHalfF16c(blk);
    const __m256i w = Nibbles16(blk + 2);
    for (int t = 0; t < NT; ++t) {
      const float da = d * a[t][b].d;
      acc.v[p][t] = Accumulate(acc.v[p][t], w, a[t][b], da);
      acc.offset[p][t] += d * a[t][b].s;
    }
  });
  acc.Finish(-8.0f, out);
}

template <int NT>
void DotQ4_1(const uint8_t* row, const BlockQ8* const* a, const float* const*, int64_t n, float* out) {
  Acc2<NT> acc;
  ForBlocks(n / 32, [&](int64_t b, int p) {
    const uint8_t* blk = row + b * 20;
    float dm[4];  // d and m, converted together
    uint32_t halves;
    std::memcpy(&halves, blk, 4);
    _mm_storeu_ps(dm, _mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(halves))));
    const __m256i w = Nibbles16(blk + 4);
    for (int t = 0; t < NT; ++t) {
      acc.v[p][t] = Accumulate(acc.v[p][t], w, a[t][b], dm[0] * a[t][b].d);
      acc.offset[p][t] += dm[1] * a[t][b].s;
    }
  });
  acc.Finish(1.0f, out);
}

template <int NT>
void DotQ8_0(const uint8_t* row, const BlockQ8* const* a, const float* const*, int64_t n, float* out) {
  Acc2<NT> acc;
  ForBlocks(n / 32, [&](int64_t b, int p) {
    const uint8_t* blk = row + b * 34;
    const float d = LoadHalfF16c(blk);
    const __m256i w = Load32(blk + 2);
    const __m256i w_abs = _mm256_abs_epi8(w);
    for (int t = 0; t < NT; ++t) {
      // |w| * (a with w's sign): an unsigned x signed product equal to w * a.
      const __m256i prod = MulSum(w_abs, _mm256_sign_epi8(Load32(a[t][b].q), w));
      acc.v[p][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(d * a[t][b].d), acc.v[p][t]);
    }
  });
  acc.Finish(0.0f, out);
}

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
// 512-bit q4_1 and q8_0: two blocks per register, the two BlockQ8s' q side by side ([block b, block b + 1]), so one
// vpdpbusd, conversion and fmadd serve 64 weights. An odd last block goes through the 256-bit kernel.

// BlockQ8 b and b + 1's q in one register.
__m512i LoadQ8Pair(const BlockQ8* at) {
  return _mm512_inserti64x4(_mm512_zextsi256_si512(Load32(at[0].q)), Load32(at[1].q), 1);
}

// Runs pair(b, parity) for blocks b, b + 1 with alternating parities (two fmadd chains, as ForBlocks), then
// tail(b) for an odd last block.
template <typename Pair, typename Tail>
void ForBlockPairs(int64_t n_blocks, Pair&& pair, Tail&& tail) {
  int64_t b = 0;
  for (; b + 3 < n_blocks; b += 4) {
    pair(b, 0);
    pair(b + 2, 1);
  }
  if (b + 1 < n_blocks) {
    pair(b, 0);
    b += 2;
  }
  if (b < n_blocks) tail(b);
}

template <int NT>
void DotQ4_1x2(const uint8_t* row, const BlockQ8* const* a, const float* const* x, int64_t n, float* out) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i copy_halves = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2);
  __m512 acc[2][NT];
  __m128 offset[NT];  // lanes 1 and 3: m * a.s of the blocks (lanes 0 and 2 collect unused d * a.d)
  for (int t = 0; t < NT; ++t) {
    acc[0][t] = acc[1][t] = _mm512_setzero_ps();
    offset[t] = _mm_setzero_ps();
  }
  float tail[NT] = {};
  ForBlockPairs(
      n / 32,
      [&](int64_t b, int p) {
        const uint8_t* blk = row + b * 20;
        // [nibbles b, nibbles b, nibbles b+1, nibbles b+1], the second copies shifted: values 0-31 of b, of b + 1.
        const __m256i packed =
            _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(blk + 24), reinterpret_cast<const __m128i*>(blk + 4));
        __m512i w = _mm512_permutexvar_epi64(copy_halves, _mm512_zextsi256_si512(packed));
        w = _mm512_and_si512(_mm512_mask_srli_epi16(w, 0xFF00FF00, w, 4), low4);
        uint32_t dm0, dm1;
        std::memcpy(&dm0, blk, 4);
        std::memcpy(&dm1, blk + 20, 4);
        // [d_b, m_b, d_b+1, m_b+1]
        const __m128 dm =
            _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128(static_cast<int>(dm0)), static_cast<int>(dm1), 1));
        for (int t = 0; t < NT; ++t) {
          const BlockQ8* at = a[t] + b;
          // [a_b.d, a_b.s, a_b+1.d, a_b+1.s] (d and s lead BlockQ8) times dm
          // (BlockQ8 is only 4-byte aligned: two 8-byte memcpy loads, not double loads.)
          uint64_t ds0, ds1;
          std::memcpy(&ds0, &at[0].d, 8);
          std::memcpy(&ds1, &at[1].d, 8);
          const __m128 ds = _mm_castsi128_ps(_mm_set_epi64x(static_cast<long long>(ds1), static_cast<long long>(ds0)));
          const __m128 prod = _mm_mul_ps(dm, ds);
          offset[t] = _mm_add_ps(offset[t], prod);
          const __m512 scale = _mm512_permutexvar_ps(spread, _mm512_zextps128_ps512(prod));
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, LoadQ8Pair(at));
          acc[p][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[p][t]);
        }
      },
      [&](int64_t b) {
        const BlockQ8* rest[NT];
        for (int t = 0; t < NT; ++t) rest[t] = a[t] + b;
        DotQ4_1<NT>(row + b * 20, rest, x, 32, tail);
      });
  for (int t = 0; t < NT; ++t) {
    const __m128 odd = _mm_movehdup_ps(offset[t]);  // [o1, o1, o3, o3]
    out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][t], acc[1][t])) + tail[t] +
             _mm_cvtss_f32(_mm_add_ss(odd, _mm_movehl_ps(odd, odd)));
  }
}

template <int NT>
void DotQ8_0x2(const uint8_t* row, const BlockQ8* const* a, const float* const* x, int64_t n, float* out) {
  __m512 acc[2][NT];
  for (int t = 0; t < NT; ++t) acc[0][t] = acc[1][t] = _mm512_setzero_ps();
  float tail[NT] = {};
  ForBlockPairs(
      n / 32,
      [&](int64_t b, int p) {
        const uint8_t* blk = row + b * 34;
        const __m512i w = _mm512_inserti64x4(_mm512_zextsi256_si512(Load32(blk + 2)), Load32(blk + 36), 1);
        const __m512i w_abs = _mm512_abs_epi8(w);
        const __mmask64 negative = _mm512_movepi8_mask(w);
        const float d0 = LoadHalfF16c(blk), d1 = LoadHalfF16c(blk + 34);
        for (int t = 0; t < NT; ++t) {
          const BlockQ8* at = a[t] + b;
          // |w| * (a with w's sign): an unsigned x signed product equal to w * a.
          const __m512i q = LoadQ8Pair(at);
          const __m512i signed_q = _mm512_mask_sub_epi8(q, negative, _mm512_setzero_si512(), q);
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w_abs, signed_q);
          const __m512 scale = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(d0 * at[0].d), _mm512_set1_ps(d1 * at[1].d));
          acc[p][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[p][t]);
        }
      },
      [&](int64_t b) {
        const BlockQ8* rest[NT];
        for (int t = 0; t < NT; ++t) rest[t] = a[t] + b;
        DotQ8_0<NT>(row + b * 34, rest, x, 32, tail);
      });
  for (int t = 0; t < NT; ++t) out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][t], acc[1][t])) + tail[t];
}
#endif

// q4_K and q5_K share everything but the fifth bit: HighBits = true reads it from qh.
template <int NT, bool HighBits>
void DotQ4Q5_K(const uint8_t* row, const BlockQ8* const* a, int64_t n, float* out) {
  constexpr int kBlockBytes = HighBits ? 176 : 144;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i bit4 = _mm256_set1_epi8(16);
  Acc2<NT> acc;  // sub-blocks j into [0], j + 1 into [1]
  for (int64_t b = 0; b < n / 256; ++b) {
    const uint8_t* blk = row + b * kBlockBytes;
    const float d = LoadHalfF16c(blk);
    const float dmin = LoadHalfF16c(blk + 2);
    const uint8_t* scales = blk + 4;
    const uint8_t* qs = blk + (HighBits ? 48 : 16);
    const __m256i qh = HighBits ? Load32(blk + 16) : _mm256_setzero_si256();
    for (int j = 0; j < 8; j += 2) {
      int sc0, m0, sc1, m1;
      ScaleMinK4(j, scales, &sc0, &m0);
      ScaleMinK4(j + 1, scales, &sc1, &m1);
      const __m256i v = Load32(qs + 16 * j);
      __m256i w0 = _mm256_and_si256(v, low4);
      __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
      if (HighBits) {  // sub-block j takes its fifth bit from bit j of qh, sub-block j + 1 from bit j + 1
        const __m256i mask0 = _mm256_set1_epi8(static_cast<char>(1 << j));
        const __m256i mask1 = _mm256_set1_epi8(static_cast<char>(1 << (j + 1)));
        w0 = _mm256_or_si256(w0, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mask0), mask0), bit4));
        w1 = _mm256_or_si256(w1, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, mask1), mask1), bit4));
      }
      for (int t = 0; t < NT; ++t) {
        const BlockQ8* at = a[t] + b * 8;
        acc.v[0][t] = Accumulate(acc.v[0][t], w0, at[j], d * sc0 * at[j].d);
        acc.v[1][t] = Accumulate(acc.v[1][t], w1, at[j + 1], d * sc1 * at[j + 1].d);
        acc.offset[0][t] += dmin * m0 * at[j].s;
        acc.offset[1][t] += dmin * m1 * at[j + 1].s;
      }
    }
  }
  acc.Finish(-1.0f, out);
}

template <int NT>
void DotQ4_K(const uint8_t* row, const BlockQ8* const* a, const float* const*, int64_t n, float* out) {
  DotQ4Q5_K<NT, false>(row, a, n, out);
}

template <int NT>
void DotQ5_K(const uint8_t* row, const BlockQ8* const* a, const float* const*, int64_t n, float* out) {
  DotQ4Q5_K<NT, true>(row, a, n, out);
}

template <int NT>
void DotQ6_K(const uint8_t* row, const BlockQ8* const* a, const float* const*, int64_t n, float* out) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i low2 = _mm256_set1_epi8(3);
  Acc2<NT> acc;  // even sub-blocks into [0], odd ones into [1]
  for (int64_t b = 0; b < n / 256; ++b) {
    const uint8_t* blk = row + b * 210;
    const float d = LoadHalfF16c(blk + 208);
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = blk + 64 * half;
      const uint8_t* qh = blk + 128 + 32 * half;
      const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * half);
      const __m256i l0 = Load32(ql);
      const __m256i l1 = Load32(ql + 32);
      const __m256i h = Load32(qh);
      // The four 32-value sub-blocks of this half: low bits from ql's nibbles, high bits from qh's bit pairs.
      const __m256i w[4] = {
          _mm256_or_si256(_mm256_and_si256(l0, low4), _mm256_slli_epi16(_mm256_and_si256(h, low2), 4)),
          _mm256_or_si256(_mm256_and_si256(l1, low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 2), low2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 4), low2), 4)),
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4),
                          _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 6), low2), 4)),
      };
      for (int t = 0; t < NT; ++t) {
        const BlockQ8* at = a[t] + b * 8 + half * 4;
        for (int k = 0; k < 4; ++k) {
          // One scale per 16 values: lanes 0-3 hold bytes 0-15, lanes 4-7 bytes 16-31.
          const float s0 = d * sc[2 * k] * at[k].d;
          const float s1 = d * sc[2 * k + 1] * at[k].d;
          const __m256 scale = _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
          const int p = k & 1;
          acc.v[p][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(MulSum(w[k], Load32(at[k].q))), scale, acc.v[p][t]);
          acc.offset[p][t] += 32.0f * (s0 * at[k].sum[0] + s1 * at[k].sum[1]);
        }
      }
    }
  }
  acc.Finish(-1.0f, out);
}

// --- float weights against f32 activations ---

__m256 Load8F32(const uint8_t* p) { return _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }
__m256 Load8F16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
__m256 Load8BF16(const uint8_t* p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}
float ScalarF32(const uint8_t* p) {
  float f;
  std::memcpy(&f, p, 4);
  return f;
}

template <int NT, int Bytes, __m256 (*Load8)(const uint8_t*), float (*Load1)(const uint8_t*)>
void DotFloat(const uint8_t* row, const float* const* x, int64_t n, float* out) {
  __m256 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 w = Load8(row + Bytes * i);
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x[t] + i), acc[t]);
  }
  for (int t = 0; t < NT; ++t) {
    float sum = HSum(acc[t]);
    for (int64_t j = i; j < n; ++j) sum += Load1(row + Bytes * j) * x[t][j];
    out[t] = sum;
  }
}

template <int NT>
void DotF32(const uint8_t* row, const BlockQ8* const*, const float* const* x, int64_t n, float* out) {
  DotFloat<NT, 4, Load8F32, ScalarF32>(row, x, n, out);
}
template <int NT>
void DotF16(const uint8_t* row, const BlockQ8* const*, const float* const* x, int64_t n, float* out) {
  DotFloat<NT, 2, Load8F16, LoadHalfF16c>(row, x, n, out);
}
template <int NT>
void DotBF16(const uint8_t* row, const BlockQ8* const*, const float* const* x, int64_t n, float* out) {
  DotFloat<NT, 2, Load8BF16, LoadBF16>(row, x, n, out);
}

// Tokens per group in a multi-token call: enough to reuse each unpacked block, few enough to keep the accumulators
// in registers.
constexpr int kTokenGroup = 4;

template <template <int> class Kernel>
void Rows(const WeightMatrix& w, const BlockQ8* xq, const float* x, int n_tokens, int64_t r0, int64_t r1, float* y,
          int64_t y_stride, bool add) {
  const int64_t n = w.cols;
  const int64_t q_stride = n / 32;
  const BlockQ8* a[kTokenGroup];
  const float* xf[kTokenGroup];
  float out[kTokenGroup];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w.data + static_cast<size_t>(r) * w.row_bytes;
    int t = 0;
    for (; t < n_tokens; t += kTokenGroup) {
      const int nt = n_tokens - t < kTokenGroup ? n_tokens - t : kTokenGroup;
      for (int k = 0; k < nt; ++k) {
        a[k] = xq != nullptr ? xq + (t + k) * q_stride : nullptr;
        xf[k] = x + (t + k) * n;
      }
      if (nt == kTokenGroup) {
        Kernel<kTokenGroup>::Run(row, a, xf, n, out);
      } else {
        for (int k = 0; k < nt; ++k) Kernel<1>::Run(row, a + k, xf + k, n, out + k);
      }
      for (int k = 0; k < nt; ++k) {
        float& dst = y[(t + k) * y_stride + r];
        dst = add ? dst + out[k] : out[k];
      }
    }
  }
}

// Adapters from the function templates above to class templates that Rows can take.
#define LR_KERNEL(name)                                                                                          \
  template <int NT>                                                                                              \
  struct name##Kernel {                                                                                          \
    static void Run(const uint8_t* row, const BlockQ8* const* a, const float* const* x, int64_t n, float* out) { \
      name<NT>(row, a, x, n, out);                                                                               \
    }                                                                                                            \
  };
LR_KERNEL(DotF32)
LR_KERNEL(DotF16)
LR_KERNEL(DotBF16)
LR_KERNEL(DotQ4_0)
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
LR_KERNEL(DotQ4_1x2)
LR_KERNEL(DotQ8_0x2)
#else
LR_KERNEL(DotQ4_1)
LR_KERNEL(DotQ8_0)
#endif
LR_KERNEL(DotQ4_K)
LR_KERNEL(DotQ5_K)
LR_KERNEL(DotQ6_K)
#undef LR_KERNEL

// --- 16-row interleaved groups (WeightLayout::kRows16, kernels.h): one vector lane per weight row ---
// A 64-byte word of a group holds 4 weights of each of 16 rows (row j in 32-bit lane j); its dot product with one
// token is a vpdpbusd against that token's 4 matching activation bytes broadcast to every lane. The 16 rows' sums
// stay in their lanes to the end, where one store writes 16 outputs. At the AVX-512 level a register covers the 16
// rows; at the AVX2 level one covers 8 and a group runs as two halves (parts) of 8 rows.

#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
constexpr int kLanes = 16;
using VecI = __m512i;
using VecF = __m512;
VecI LoadI(const uint8_t* p) { return _mm512_loadu_si512(p); }
VecI SetI(int v) { return _mm512_set1_epi32(v); }
VecI AddI(VecI a, VecI b) { return _mm512_add_epi32(a, b); }
VecI AndI(VecI a, VecI b) { return _mm512_and_si512(a, b); }
VecI Srli4(VecI a) { return _mm512_srli_epi16(a, 4); }
VecI Bytes(char v) { return _mm512_set1_epi8(v); }
VecF ToF(VecI a) { return _mm512_cvtepi32_ps(a); }
VecF ZeroF() { return _mm512_setzero_ps(); }
VecF SetF(float v) { return _mm512_set1_ps(v); }
VecF AddF(VecF a, VecF b) { return _mm512_add_ps(a, b); }
VecF MulF(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
VecF FmaF(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
VecF LoadF(const float* p) { return _mm512_loadu_ps(p); }
void StoreF(float* p, VecF v) { _mm512_storeu_ps(p, v); }
// kLanes f16 values
VecF LoadHalves(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
#else
constexpr int kLanes = 8;
using VecI = __m256i;
using VecF = __m256;
VecI LoadI(const uint8_t* p) { return Load32(p); }
VecI SetI(int v) { return _mm256_set1_epi32(v); }
VecI AddI(VecI a, VecI b) { return _mm256_add_epi32(a, b); }
VecI AndI(VecI a, VecI b) { return _mm256_and_si256(a, b); }
VecI Srli4(VecI a) { return _mm256_srli_epi16(a, 4); }
VecI Bytes(char v) { return _mm256_set1_epi8(v); }
VecF ToF(VecI a) { return _mm256_cvtepi32_ps(a); }
VecF ZeroF() { return _mm256_setzero_ps(); }
VecF SetF(float v) { return _mm256_set1_ps(v); }
VecF AddF(VecF a, VecF b) { return _mm256_add_ps(a, b); }
VecF MulF(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
VecF FmaF(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
VecF LoadF(const float* p) { return _mm256_loadu_ps(p); }
void StoreF(float* p, VecF v) { _mm256_storeu_ps(p, v); }
VecF LoadHalves(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

// The 4 activation bytes at q in every lane.
VecI Broadcast4(const int8_t* q) {
  int32_t v;
  std::memcpy(&v, q, 4);
  return SetI(v);
}

// acc + per lane the sum of its 4 products u * s, u unsigned, s signed. The AVX2 form (vpmaddubsw) saturates pairs
// at 16 bits: it takes only u < 128 (q4_1's nibbles; q8_0 goes through DotSigned).
VecI DotUnsigned(VecI acc, VecI u, VecI s) {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(acc, u, s);
#else
  return AddI(acc, MulSum(u, s));
#endif
}

// q8_0 in a group is stored as w + 128. Weights() turns a loaded word into what Dot() multiplies, and Bias(a) is the
// integer sum a dot product of one block starts from so that it comes out as sum w * a.
//   AVX-512: w + 128 times a in one vpdpbusd (no saturation); Bias = -128 * sum a.
//   AVX2: back to w (XOR 0x80), then |w| times a with w's sign (vpmaddubsw would saturate on w + 128); Bias = 0.
struct Q8Group {
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
  static VecI Weights(VecI u) { return u; }
  static VecI Dot(VecI acc, VecI w, VecI s) { return DotUnsigned(acc, w, s); }
  static int Bias(const BlockQ8& a) { return -128 * (a.sum[0] + a.sum[1]); }
#else
  static VecI Weights(VecI u) { return _mm256_xor_si256(u, Bytes(static_cast<char>(0x80))); }
  static VecI Dot(VecI acc, VecI w, VecI s) { return AddI(acc, MulSum(_mm256_abs_epi8(w), _mm256_sign_epi8(s, w))); }
  static int Bias(const BlockQ8&) { return 0; }
#endif
};

constexpr int kPrefetchBlocks = 8;

// Rows [16 g, 16 g + 16) of a kRows16 Q4_0, Q4_1 or Q8_0 matrix against NT tokens: y[t][j] = (add ? y[t][j] : 0) +
// row j . token t, for the row group starting at `group` (n_blocks groups of 32 values). a[t]: token t's BlockQ8s.
template <int NT, TensorType kType>
void GroupDot(const uint8_t* group, int64_t n_blocks, const BlockQ8* const* a, float* const* y, bool add) {
  constexpr bool kQ4 = kType != TensorType::kQ8_0;   // nibbles (q4_0: w - 8; q4_1: d w + m)
  constexpr bool kMin = kType == TensorType::kQ4_1;  // a per-row min m
  constexpr int kHeader = kMin ? 64 : 32;            // bytes of f16 fields (d, m) before the weight words
  constexpr int kWords = kQ4 ? 4 : 8;                // 64-byte words of weights per group
  constexpr int kGroupBytes = kHeader + 64 * kWords;
  const VecI low4 = Bytes(0x0F);
  constexpr int kParts = 16 / kLanes;
  VecF acc[kParts][NT], off[kParts][NT];
  for (int p = 0; p < kParts; ++p) {
    for (int t = 0; t < NT; ++t) acc[p][t] = off[p][t] = ZeroF();
  }
  for (int64_t b = 0; b < n_blocks; ++b) {
    const uint8_t* g = group + b * kGroupBytes;
    // The weights stream from memory once per row group: with several tokens (prefill), fetch kPrefetchBlocks
    // blocks ahead (past the row group's end, into the next one's, which follows in memory). A one-token call
    // (decode) leaves the stream to the hardware prefetcher.
    if constexpr (NT > 1)
      for (int line = 0; line < kGroupBytes; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(g + kPrefetchBlocks * kGroupBytes + line), _MM_HINT_T0);
    for (int p = 0; p < kParts; ++p) {  // one block's parts together: each word is read from memory once
      const int lane0 = p * kLanes;     // first row of this part
      // w[k] multiplies the activations at q_at[k]: a nibble word L holds values 4L.. (low nibbles) and 16 + 4L..
      // (high nibbles) of each row, a q8_0 word L values 4L..
      VecI w[8];
      int q_at[8];
      for (int l = 0; l < kWords; ++l) {
        const VecI v = LoadI(g + kHeader + 64 * l + 4 * lane0);
        if constexpr (kQ4) {
          w[2 * l] = AndI(v, low4);
          w[2 * l + 1] = AndI(Srli4(v), low4);
          q_at[2 * l] = 4 * l;
          q_at[2 * l + 1] = 16 + 4 * l;
        } else {
          w[l] = Q8Group::Weights(v);
          q_at[l] = 4 * l;
        }
      }
      const VecF d = LoadHalves(g + 2 * lane0);
      // The offset term per token: q4_1 adds m * sum(a) in floats; q4_0's -8 enters the integer sum as -8 * sum(a)
      // (exact), q8_0's +128 as its Bias.
      const VecF m = kMin ? LoadHalves(g + 32 + 2 * lane0) : ZeroF();
      // Unrolled, so that the accumulators stay in registers (GCC leaves an 8-token loop rolled, through memory).
#pragma GCC unroll 8
      for (int t = 0; t < NT; ++t) {
        const BlockQ8& at = a[t][b];
        // Two integer chains, summed at the end of the block.
        const int bias = kMin ? 0 : kQ4 ? -8 * (at.sum[0] + at.sum[1]) : Q8Group::Bias(at);
        VecI sum[2] = {SetI(bias), SetI(0)};
        for (int k = 0; k < 8; ++k) {
          const VecI s = Broadcast4(at.q + q_at[k]);
          sum[k % 2] = kQ4 ? DotUnsigned(sum[k % 2], w[k], s) : Q8Group::Dot(sum[k % 2], w[k], s);
        }
        acc[p][t] = FmaF(ToF(AddI(sum[0], sum[1])), MulF(d, SetF(at.d)), acc[p][t]);
        if constexpr (kMin) off[p][t] = FmaF(m, SetF(at.s), off[p][t]);
      }
    }
  }
  for (int p = 0; p < kParts; ++p) {
    for (int t = 0; t < NT; ++t) {
      float* dst = y[t] + p * kLanes;
      const VecF v = kMin ? AddF(acc[p][t], off[p][t]) : acc[p][t];
      StoreF(dst, add ? AddF(LoadF(dst), v) : v);
    }
  }
}

// Tokens per GroupDot call: each group's weights are unpacked once for that many tokens. 8 where the accumulators
// and the unpacked words fit the 32 AVX-512 registers (q4_0, q8_0: one accumulator per token), else 4.
template <TensorType kType>
constexpr int GroupTokens() {
  return kLanes == 16 && kType != TensorType::kQ4_1 ? 8 : 4;
}

// MatMulRows for a kRows16 matrix: rows [r0, r1) are whole row groups; tokens in groups of up to GroupTokens, each
// group's weights unpacked once for them.
template <TensorType kType>
void Groups(const WeightMatrix& w, const BlockQ8* xq, int n_tokens, int64_t r0, int64_t r1, float* y, int64_t y_stride,
            bool add) {
  constexpr int kNT = GroupTokens<kType>();
  const int64_t n_blocks = w.cols / 32;
  const BlockQ8* a[kNT];
  float* out[kNT];
  for (int64_t r = r0; r < r1; r += 16) {
    const uint8_t* group = w.data + static_cast<size_t>(r) * w.row_bytes;
    for (int t = 0; t < n_tokens; t += kNT) {
      const int nt = n_tokens - t < kNT ? n_tokens - t : kNT;
      for (int k = 0; k < nt; ++k) {
        a[k] = xq + (t + k) * n_blocks;
        out[k] = y + (t + k) * y_stride + r;
      }
      switch (nt) {
        case 1: GroupDot<1, kType>(group, n_blocks, a, out, add); break;
        case 2: GroupDot<2, kType>(group, n_blocks, a, out, add); break;
        case 3: GroupDot<3, kType>(group, n_blocks, a, out, add); break;
        case 4: GroupDot<4, kType>(group, n_blocks, a, out, add); break;
        // 5..7 occur only where kNT is 8 (the 1 keeps the other instantiations valid)
        case 5: GroupDot<(kNT >= 5 ? 5 : 1), kType>(group, n_blocks, a, out, add); break;
        case 6: GroupDot<(kNT >= 6 ? 6 : 1), kType>(group, n_blocks, a, out, add); break;
        case 7: GroupDot<(kNT >= 7 ? 7 : 1), kType>(group, n_blocks, a, out, add); break;
        default: GroupDot<kNT, kType>(group, n_blocks, a, out, add); break;
      }
    }
  }
}

// Sum of the 8 int32 lanes.
int HSumInt(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

}  // namespace

// The scalar QuantizeRowQ8's operations in the same order on 8 lanes: max|x| (exact in any order), d = max / 127,
// q = x * (1 / d) rounded to nearest even (vcvtps2dq in the default rounding mode, as nearbyint), so the result is
// bit for bit the scalar one.
void QuantizeRowQ8(const float* x, int64_t n, BlockQ8* out) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t b = 0; b < n / 32; ++b) {
    __m256 v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm256_loadu_ps(x + 32 * b + 8 * k);
    const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                   _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.0f;
    const __m256 id = _mm256_set1_ps(d > 0 ? 1.0f / d : 0.0f);
    __m256i q[4];
    for (int k = 0; k < 4; ++k) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], id));
    // packs interleave the 128-bit lanes: dwords [q0 0-3, q1 0-3, q2 0-3, q3 0-3, q0 4-7, ...] -> values in order
    const __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    BlockQ8& o = out[b];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(o.q),
                        _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    const int sum0 = HSumInt(_mm256_add_epi32(q[0], q[1]));
    const int sum1 = HSumInt(_mm256_add_epi32(q[2], q[3]));
    o.d = d;
    o.sum[0] = static_cast<int16_t>(sum0);
    o.sum[1] = static_cast<int16_t>(sum1);
    o.s = d * static_cast<float>(sum0 + sum1);
  }
}

void MatMulRows(const WeightMatrix& w, const BlockQ8* xq, const float* x, int n_tokens, int64_t r0, int64_t r1,
                float* y, int64_t y_stride, bool add) {
  if (w.layout == WeightLayout::kRows16) {
    assert(r0 % 16 == 0 && r1 % 16 == 0);
    if (w.type.type == TensorType::kQ4_0) {
      Groups<TensorType::kQ4_0>(w, xq, n_tokens, r0, r1, y, y_stride, add);
    } else if (w.type.type == TensorType::kQ4_1) {
      Groups<TensorType::kQ4_1>(w, xq, n_tokens, r0, r1, y, y_stride, add);
    } else {
      assert(w.type.type == TensorType::kQ8_0);
      Groups<TensorType::kQ8_0>(w, xq, n_tokens, r0, r1, y, y_stride, add);
    }
    return;
  }
  switch (w.type.type) {
    case TensorType::kF32: Rows<DotF32Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kF16: Rows<DotF16Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kBF16: Rows<DotBF16Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kQ4_0: Rows<DotQ4_0Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
#if defined(__AVX512BW__) && defined(__AVX512VNNI__)
    case TensorType::kQ4_1: Rows<DotQ4_1x2Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kQ8_0: Rows<DotQ8_0x2Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
#else
    case TensorType::kQ4_1: Rows<DotQ4_1Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kQ8_0: Rows<DotQ8_0Kernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
#endif
    case TensorType::kQ4_K: Rows<DotQ4_KKernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kQ5_K: Rows<DotQ5_KKernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
    case TensorType::kQ6_K: Rows<DotQ6_KKernel>(w, xq, x, n_tokens, r0, r1, y, y_stride, add); break;
  }
}

// --- GemmF32: C = A·B on f32 row-major matrices ---
// A tile of kGemmRows rows of C by two vectors of columns stays in registers over the whole k loop: per p, two loads
// of B's row p, one broadcast of A per tile row and 2 · kGemmRows fused multiply-adds. A last, narrower column strip
// loads and stores under a mask; the rows left over after the full tiles take a tile of their own height.
namespace {

#if defined(__AVX512F__)
constexpr int kGemmLanes = 16;
using GemmVec = __m512;
struct GemmMask {
  __mmask16 m;
  explicit GemmMask(int n) : m(static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << (n > 0 ? n : 0)) - 1)) {}
};
inline GemmVec GemmZero() { return _mm512_setzero_ps(); }
inline GemmVec GemmSet1(float x) { return _mm512_set1_ps(x); }
inline GemmVec GemmFma(GemmVec a, GemmVec b, GemmVec c) { return _mm512_fmadd_ps(a, b, c); }
inline GemmVec GemmLoad(const float* p) { return _mm512_loadu_ps(p); }
inline GemmVec GemmLoad(const float* p, GemmMask k) { return _mm512_maskz_loadu_ps(k.m, p); }
inline void GemmStore(float* p, GemmVec v) { _mm512_storeu_ps(p, v); }
inline void GemmStore(float* p, GemmVec v, GemmMask k) { _mm512_mask_storeu_ps(p, k.m, v); }
#else
constexpr int kGemmLanes = 8;
using GemmVec = __m256;
struct GemmMask {
  __m256i m;
  explicit GemmMask(int n) : m(_mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))) {}
};
inline GemmVec GemmZero() { return _mm256_setzero_ps(); }
inline GemmVec GemmSet1(float x) { return _mm256_set1_ps(x); }
inline GemmVec GemmFma(GemmVec a, GemmVec b, GemmVec c) { return _mm256_fmadd_ps(a, b, c); }
inline GemmVec GemmLoad(const float* p) { return _mm256_loadu_ps(p); }
inline GemmVec GemmLoad(const float* p, GemmMask k) { return _mm256_maskload_ps(p, k.m); }
inline void GemmStore(float* p, GemmVec v) { _mm256_storeu_ps(p, v); }
inline void GemmStore(float* p, GemmVec v, GemmMask k) { _mm256_maskstore_ps(p, k.m, v); }
#endif
constexpr int kGemmRows = 6;

// C[0..kRows) x [0..n) for n <= 2 · kGemmLanes columns (kFull: exactly that many, no masks).
template <int kRows, bool kFull>
void GemmTile(int n, int k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  const GemmMask m0(n), m1(n - kGemmLanes);
  GemmVec acc[kRows][2];
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = GemmZero();
  for (int p = 0; p < k; ++p) {
    const float* bp = b + p * ldb;
    const GemmVec b0 = kFull ? GemmLoad(bp) : GemmLoad(bp, m0);
    const GemmVec b1 = kFull ? GemmLoad(bp + kGemmLanes) : GemmLoad(bp + kGemmLanes, m1);
    for (int r = 0; r < kRows; ++r) {
      const GemmVec x = GemmSet1(a[r * lda + p]);
      acc[r][0] = GemmFma(x, b0, acc[r][0]);
      acc[r][1] = GemmFma(x, b1, acc[r][1]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    if (kFull) {
      GemmStore(c + r * ldc, acc[r][0]);
      GemmStore(c + r * ldc + kGemmLanes, acc[r][1]);
    } else {
      GemmStore(c + r * ldc, acc[r][0], m0);
      GemmStore(c + r * ldc + kGemmLanes, acc[r][1], m1);
    }
  }
}

template <int kRows>
void GemmRows(int n, int k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  constexpr int kCols = 2 * kGemmLanes;
  int j = 0;
  for (; j + kCols <= n; j += kCols) GemmTile<kRows, true>(kCols, k, a, lda, b + j, ldb, c + j, ldc);
  if (j < n) GemmTile<kRows, false>(n - j, k, a, lda, b + j, ldb, c + j, ldc);
}

}  // namespace

void GemmF32(int m, int n, int k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  int i = 0;
  for (; i + kGemmRows <= m; i += kGemmRows) GemmRows<kGemmRows>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc);
  switch (m - i) {
    case 5: GemmRows<5>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    case 4: GemmRows<4>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    case 3: GemmRows<3>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    case 2: GemmRows<2>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    case 1: GemmRows<1>(n, k, a + i * lda, lda, b, ldb, c + i * ldc, ldc); break;
    default: break;
  }
}

}  // namespace lr::ops::LR_SIMD_NS
