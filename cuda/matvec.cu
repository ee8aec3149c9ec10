// The products of 1..kMaxMatVecTokens tokens (kernels.h: MatVec, MatVecMany) and the activation quantization they
// read (QuantizeQ8).
//
// Two kernels, both one warp per weight row (or R rows) with the tokens' sums in registers:
// - MatVecQ8Kernel, for the quantized types with Q8Activations: a lane takes a unit of a row (a 32-value block;
//   Q4_K, Q5_K: two sub-blocks that share their quant bytes; Q6_K: sub-blocks k and k + 2 of a half, which share
//   theirs), loads its raw bytes with 16-byte loads (Q6_K's 2-byte aligned blocks: 2-byte loads), and multiplies
//   them with each token's int8 activations of the unit by __dp4a: one weight load serves every token of the step,
//   and one activation load serves the warp's R rows. The weight formats' offsets (Q4_0's -8, Q4_1's and the
//   K-quants' mins) come in through the activation blocks' s = d * sum q, as on the CPU (ops/kernels_x86.h).
// - MatVecKernel, the f32 path (the float types, or no Q8Activations): four lanes per 32-value sub-block (Dequant8),
//   so that consecutive lanes read consecutive activations.
// The blocks of a launch are split among up to 3 products (ProductSet: q, k and v; gate and up).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/mma.cuh"
#include "cuda/moe.h"

namespace lr::cuda {
namespace {

constexpr int kMatVecWarps = 4, kMaxProducts = 3;
struct ProductSet {
  Product p[kMaxProducts];
  int count;
  unsigned first_block[kMaxProducts + 1];
};

// The product of block blockIdx.x, and the block's index within that product's blocks.
__device__ __forceinline__ const Product& BlockProduct(const ProductSet& set, unsigned* block) {
  const int k = set.count > 1 && blockIdx.x >= set.first_block[1]
                    ? (set.count > 2 && blockIdx.x >= set.first_block[2] ? 2 : 1)
                    : 0;
  *block = blockIdx.x - set.first_block[k];
  return k == 0 ? set.p[0] : k == 1 ? set.p[1] : set.p[2];
}

// One warp per weight row. Four lanes decode one sub-block (a quarter each, Dequant8), so a warp takes 8 sub-blocks
// per step and consecutive lanes read consecutive activations. (Measured slower on the 7B decode: decoding 4 steps
// before multiplying, to have their loads in flight together, 148 -> 105 tok/s; the SwiGLU fused into the down
// product's input, which computes silu once per weight row instead of once.)
template <WeightType T, int NT>
__global__ void __launch_bounds__(32 * kMatVecWarps) MatVecKernel(ProductSet set, const float* __restrict__ x, int n) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  unsigned block;
  const Product& p = BlockProduct(set, &block);
  const DeviceMatrix& w = p.w;
  const int64_t row = static_cast<int64_t>(block) * kMatVecWarps + warp;
  WaitForPreviousKernel();
  LetNextKernelStart();
  if (row >= w.rows) return;
  const int nsb = static_cast<int>(w.cols / 32);
  const int q = lane % 4;
  float acc[NT];
#pragma unroll
  for (int t = 0; t < NT; ++t) acc[t] = 0;
#pragma unroll 4
  for (int sb = lane / 4; sb < nsb; sb += 8) {
    float v[8];
    Dequant8<T>(w, row, sb, q, v);
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      if (t < n) {
        const int64_t at = static_cast<int64_t>(t) * w.cols + 32 * sb + 4 * q;
        const float4 a = __ldg(reinterpret_cast<const float4*>(x + at));
        const float4 b = __ldg(reinterpret_cast<const float4*>(x + at + 16));
        acc[t] += v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < NT; ++t) {
    const float sum = WarpSum(acc[t]);
    if (lane == 0 && t < n) {
      float* o = p.y + t * p.y_stride + row;
      *o = p.add ? *o + sum : sum;
    }
  }
}

// --- the integer path ---

constexpr bool IsKQuant(WeightType t) {
  return t == WeightType::kQ4_K || t == WeightType::kQ5_K || t == WeightType::kQ6_K;
}
constexpr bool TakesQ8Type(WeightType t) {
  return t == WeightType::kQ4_0 || t == WeightType::kQ4_1 || t == WeightType::kQ8_0 || IsKQuant(t);
}
// Values of a row per unit (a lane's share of one step), 16-byte words of raw weight bytes per unit, and units per
// lane loaded before the first is multiplied (so that several loads are in flight; more for the small units).
template <WeightType T>
constexpr int kUnitValues = IsKQuant(T) ? 64 : 32;
template <WeightType T>
constexpr int kUnitWords = T == WeightType::kQ8_0   ? 2
                           : T == WeightType::kQ4_K ? 3
                           : T == WeightType::kQ5_K ? 5
                           : T == WeightType::kQ6_K ? 4
                                                    : 1;
template <WeightType T>
constexpr int kUnitsInFlight = T == WeightType::kQ4_0 || T == WeightType::kQ4_1 ? 4
                               : T == WeightType::kQ8_0                         ? 2
                                                                                : 1;

// A unit's raw bytes: v as kUnitWords says per type (Q4_0, Q4_1: the block's 16 quant bytes; Q8_0: its 32; Q4_K:
// the super-block's d, dmin and scales, then the pair's 32 quant bytes; Q5_K: the same header, the super-block's 32
// high-bit bytes, the pair's 32 quant bytes; Q6_K: the half's 32 ql bytes of sub-blocks k and k + 2, then its 32 qh
// bytes), f the f16 scales as floats (Q4_0, Q8_0, Q6_K: d; Q4_1: d and m), extra Q6_K's four int8 scales.
template <WeightType T>
struct WeightUnit {
  uint4 v[kUnitWords<T>];
  float2 f;
  uint32_t extra;
};

// Token t's activations of a unit: the int8 values of its 32-value blocks (2 int4 each) and their (d, s).
template <WeightType T>
struct ActUnit {
  int4 q[2 * kUnitValues<T> / 32];
  float2 ds[kUnitValues<T> / 32];
};

__device__ __forceinline__ uint4 Load16(const uint8_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ float HalfBits(uint32_t bits) { return __half2float(__ushort_as_half(bits & 0xffff)); }
// 16 bytes at a 2-byte aligned address.
__device__ __forceinline__ uint4 Load16Unaligned2(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  uint32_t w[4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
    w[i] = static_cast<uint32_t>(__ldg(h + 2 * i)) | (static_cast<uint32_t>(__ldg(h + 2 * i + 1)) << 16);
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ uint32_t Word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// The first of the unit's activation blocks; the second (K-quants) is first + kSecondBlock<T>.
template <WeightType T>
__device__ __forceinline__ int64_t FirstBlock(int u) {
  if constexpr (T == WeightType::kQ6_K) return 8 * (u / 4) + 4 * ((u / 2) % 2) + u % 2;
  return static_cast<int64_t>(u) * (kUnitValues<T> / 32);
}
template <WeightType T>
constexpr int kSecondBlock = T == WeightType::kQ6_K ? 2 : 1;

template <WeightType T>
__device__ __forceinline__ WeightUnit<T> LoadUnit(const DeviceMatrix& w, int64_t row, int u) {
  WeightUnit<T> r;
  const uint8_t* base = w.q + static_cast<size_t>(row) * w.row_bytes;
  const size_t blk = static_cast<size_t>(row) * (w.cols / 32) + u;
  if constexpr (T == WeightType::kQ4_0 || T == WeightType::kQ4_1) {
    r.v[0] = Load16(base + 16 * u);
    if constexpr (T == WeightType::kQ4_0) {
      r.f.x = __half2float(__ldg(reinterpret_cast<const __half*>(w.scales) + blk));
    } else {
      r.f = __half22float2(__ldg(reinterpret_cast<const __half2*>(w.scales) + blk));
    }
  } else if constexpr (T == WeightType::kQ8_0) {
    r.v[0] = Load16(base + 32 * u);
    r.v[1] = Load16(base + 32 * u + 16);
    r.f.x = __half2float(__ldg(reinterpret_cast<const __half*>(w.scales) + blk));
  } else if constexpr (T == WeightType::kQ4_K || T == WeightType::kQ5_K) {
    constexpr int kBytes = T == WeightType::kQ4_K ? 144 : 176, kQs = T == WeightType::kQ4_K ? 16 : 48;
    const uint8_t* b = base + kBytes * (u / 4);
    r.v[0] = Load16(b);
    r.v[1] = Load16(b + kQs + 32 * (u % 4));
    r.v[2] = Load16(b + kQs + 32 * (u % 4) + 16);
    if constexpr (T == WeightType::kQ5_K) {
      r.v[3] = Load16(b + 16);
      r.v[4] = Load16(b + 32);
    }
  } else if constexpr (T == WeightType::kQ6_K) {
    const uint8_t* b = base + 210 * (u / 4);
    const int half = (u / 2) % 2, k = u % 2;
    r.v[0] = Load16Unaligned2(b + 64 * half + 32 * k);
    r.v[1] = Load16Unaligned2(b + 64 * half + 32 * k + 16);
    r.v[2] = Load16Unaligned2(b + 128 + 32 * half);
    r.v[3] = Load16Unaligned2(b + 128 + 32 * half + 16);
    const uint16_t* sc = reinterpret_cast<const uint16_t*>(b + 192 + 8 * half + 2 * k);
    r.extra = static_cast<uint32_t>(__ldg(sc)) | (static_cast<uint32_t>(__ldg(sc + 2)) << 16);
    r.f.x = HalfBits(__ldg(reinterpret_cast<const uint16_t*>(b + 208)));
  }
  return r;
}

template <WeightType T>
__device__ __forceinline__ ActUnit<T> LoadAct(const int4* __restrict__ q, const float2* __restrict__ ds, int u) {
  ActUnit<T> a;
  const int64_t b0 = FirstBlock<T>(u);
#pragma unroll
  for (int i = 0; i < kUnitValues<T> / 32; ++i) {
    const int64_t b = b0 + i * kSecondBlock<T>;
    a.q[2 * i] = __ldg(q + 2 * b);
    a.q[2 * i + 1] = __ldg(q + 2 * b + 1);
    a.ds[i] = __ldg(ds + b);
  }
  return a;
}

// Sum of the products of 16 weight bytes (w: 4 words, lo[i] = word i) with activations a (16 int8).
__device__ __forceinline__ int Dot16(const uint32_t* lo, const int4& a, int acc) {
  acc = __dp4a(static_cast<int>(lo[0]), a.x, acc);
  acc = __dp4a(static_cast<int>(lo[1]), a.y, acc);
  acc = __dp4a(static_cast<int>(lo[2]), a.z, acc);
  return __dp4a(static_cast<int>(lo[3]), a.w, acc);
}

// The scale and min of sub-block j of a K-quant super-block (6 bits each, packed in 12 bytes: s0, s1, s2 their
// words), as the CPU's ScaleMinK4 with the bytes in registers.
__device__ __forceinline__ void ScaleMinWords(int j, uint32_t s0, uint32_t s1, uint32_t s2, int* sc, int* mn) {
  if (j < 4) {
    *sc = Byte(s0, j) & 63;
    *mn = Byte(s1, j) & 63;
  } else {
    *sc = (Byte(s2, j - 4) & 0xF) | ((Byte(s0, j - 4) >> 6) << 4);
    *mn = (Byte(s2, j - 4) >> 4) | ((Byte(s1, j - 4) >> 6) << 4);
  }
}

// The unit's contribution to the row's sum for one token.
template <WeightType T>
__device__ __forceinline__ float Dot(const WeightUnit<T>& w, const ActUnit<T>& a, int u) {
  constexpr uint32_t kLow4 = 0x0F0F0F0Fu;
  if constexpr (T == WeightType::kQ4_0 || T == WeightType::kQ4_1) {
    uint32_t lo[4], hi[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      lo[i] = Word(w.v[0], i) & kLow4;         // values 4i .. 4i + 3
      hi[i] = (Word(w.v[0], i) >> 4) & kLow4;  // values 16 + 4i ..
    }
    const int s = Dot16(hi, a.q[1], Dot16(lo, a.q[0], 0));
    if constexpr (T == WeightType::kQ4_0) return w.f.x * (a.ds[0].x * s - 8.0f * a.ds[0].y);
    return w.f.x * a.ds[0].x * s + w.f.y * a.ds[0].y;
  } else if constexpr (T == WeightType::kQ8_0) {
    const uint32_t lo[4] = {w.v[0].x, w.v[0].y, w.v[0].z, w.v[0].w};
    const uint32_t hi[4] = {w.v[1].x, w.v[1].y, w.v[1].z, w.v[1].w};
    return w.f.x * a.ds[0].x * Dot16(hi, a.q[1], Dot16(lo, a.q[0], 0));
  } else if constexpr (T == WeightType::kQ4_K || T == WeightType::kQ5_K) {
    const float2 dd = make_float2(HalfBits(w.v[0].x), HalfBits(w.v[0].x >> 16));
    const int j = 2 * (u % 4);
    int sc0, mn0, sc1, mn1;
    ScaleMinWords(j, w.v[0].y, w.v[0].z, w.v[0].w, &sc0, &mn0);
    ScaleMinWords(j + 1, w.v[0].y, w.v[0].z, w.v[0].w, &sc1, &mn1);
    int s0 = 0, s1 = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // values 16h .. 16h + 15 of both sub-blocks
      uint32_t lo[4], hi[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t q = Word(w.v[1 + h], i);
        lo[i] = q & kLow4;
        hi[i] = (q >> 4) & kLow4;
        if constexpr (T == WeightType::kQ5_K) {
          const uint32_t qh = Word(w.v[3 + h], i);
          lo[i] |= ((qh >> j) & 0x01010101u) << 4;
          hi[i] |= ((qh >> (j + 1)) & 0x01010101u) << 4;
        }
      }
      s0 = Dot16(lo, a.q[h], s0);
      s1 = Dot16(hi, a.q[2 + h], s1);
    }
    return dd.x * (sc0 * a.ds[0].x * s0 + sc1 * a.ds[1].x * s1) - dd.y * (mn0 * a.ds[0].y + mn1 * a.ds[1].y);
  } else {  // kQ6_K: sub-block k (low nibbles, qh bits 2k) and k + 2 (high nibbles, bits 2k + 4)
    const int k = u % 2;
    int s[4] = {0, 0, 0, 0};  // sub-block k's values 0-15, 16-31, then sub-block k + 2's
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t lo[4], hi[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const uint32_t ql = Word(w.v[h], i), qh = Word(w.v[2 + h], i);
        lo[i] = __vsub4((ql & kLow4) | (((qh >> (2 * k)) & 0x03030303u) << 4), 0x20202020u);
        hi[i] = __vsub4(((ql >> 4) & kLow4) | (((qh >> (2 * k + 4)) & 0x03030303u) << 4), 0x20202020u);
      }
      s[h] = Dot16(lo, a.q[h], 0);
      s[2 + h] = Dot16(hi, a.q[2 + h], 0);
    }
    int sc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) sc[i] = static_cast<int8_t>(Byte(w.extra, i));
    return w.f.x * (a.ds[0].x * static_cast<float>(sc[0] * s[0] + sc[1] * s[1]) +
                    a.ds[1].x * static_cast<float>(sc[2] * s[2] + sc[3] * s[3]));
  }
}

// acc[r][t] = the lane's share of row rows[r] of *mats[r] times token t's activations (t < n), R rows of cols values
// (the rows may be of different matrices of one type); the caller sums the lanes. U units per lane are loaded
// before the first is multiplied. The first loads are issued before WaitForPreviousKernel: they overlap the end of
// the kernel before, which writes the activations (the caller writes nothing before this returns).
template <WeightType T, int NT, int R>
__device__ __forceinline__ void RowSums(const DeviceMatrix* const (&mats)[R], const int64_t (&rows)[R], int64_t cols,
                                        Q8Activations xq, int n, float (&acc)[R][NT]) {
  constexpr int kInFlight = kUnitsInFlight<T>;
  constexpr int U = kInFlight > R ? kInFlight / R : 1;
  const int lane = threadIdx.x % 32;
  const int units = static_cast<int>(cols / kUnitValues<T>);
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[r][t] = 0;
  const int4* aq = reinterpret_cast<const int4*>(xq.q);
  const float2* ads = reinterpret_cast<const float2*>(xq.ds);
  const int64_t token_words = cols / 16, token_blocks = cols / 32;
  WeightUnit<T> wt[U][R];
  auto load = [&](int u0) {
#pragma unroll
    for (int i = 0; i < U; ++i)
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (u0 + 32 * i < units) wt[i][r] = LoadUnit<T>(*mats[r], rows[r], u0 + 32 * i);
  };
  load(lane);
  WaitForPreviousKernel();
  LetNextKernelStart();
  for (int u0 = lane; u0 < units; u0 += 32 * U) {
    if (u0 != lane) load(u0);
#pragma unroll
    for (int i = 0; i < U; ++i) {
      const int u = u0 + 32 * i;
      if (u < units) {
#pragma unroll
        for (int t = 0; t < NT; ++t) {
          if (t < n) {
            const ActUnit<T> a = LoadAct<T>(aq + t * token_words, ads + t * token_blocks, u);
#pragma unroll
            for (int r = 0; r < R; ++r) acc[r][t] += Dot<T>(wt[i][r], a, u);
          }
        }
      }
    }
  }
}

// Rows row0 .. row0 + R - 1 of w (those below w.rows) times n <= NT tokens of xq, by one warp: y[t * y_stride + r]
// (+ with add)= the sum.
template <WeightType T, int NT, int R>
__device__ __forceinline__ void RowProducts(const DeviceMatrix& w, int64_t row0, Q8Activations xq, int n, float* y,
                                            int64_t y_stride, bool add) {
  const int lane = threadIdx.x % 32;
  const DeviceMatrix* mats[R];
  int64_t rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    mats[r] = &w;
    rows[r] = row0 + r < w.rows ? row0 + r : w.rows - 1;  // past the end: the last row again
  }
  float acc[R][NT];
  RowSums<T, NT, R>(mats, rows, w.cols, xq, n, acc);
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float sum = WarpSum(acc[r][t]);
      if (lane == 0 && t < n && row0 + r < w.rows) {
        float* o = y + t * y_stride + row0 + r;
        *o = add ? *o + sum : sum;
      }
    }
  }
}

// R rows per warp, NT tokens.
template <WeightType T, int NT, int R>
__global__ void __launch_bounds__(32 * kMatVecWarps) MatVecQ8Kernel(ProductSet set, Q8Activations xq, int n) {
  const int warp = threadIdx.x / 32;
  unsigned block;
  const Product& p = BlockProduct(set, &block);
  const int64_t row0 = (static_cast<int64_t>(block) * kMatVecWarps + warp) * R;
  if (row0 >= p.w.rows) return;
  RowProducts<T, NT, R>(p.w, row0, xq, n, p.y, p.y_stride, p.add);
}

// The gate and up products with the SwiGLU between them: a block takes 32 consecutive rows of both (W warps of R
// row products each, R / 2 rows of gate and the same rows of up), then h[t * rows + r] = silu(gate_r . x_t) *
// (up_r . x_t) for its 32 rows, quantized into hq: the down product's input without a pass of its own.
template <int NT>
constexpr int kGluWarps = NT == 1   ? 4
                          : NT == 2 ? 8
                                    : 16;
// Rows r0 .. r0 + 31 of gate and up for n <= NT tokens, by the whole block (every thread calls it).
template <WeightType T, int NT>
__device__ __forceinline__ void SwiGluRows(const DeviceMatrix& gate, const DeviceMatrix& up, Q8Activations xq, int n,
                                           int64_t r0, float* h, Q8Activations hq) {
  constexpr int R = 64 / kGluWarps<NT>, kHalf = R / 2;
  __shared__ float sums[2][NT][32];  // [gate or up][token][row - r0]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const DeviceMatrix* mats[R];
  int64_t rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = r0 + warp * kHalf + r % kHalf;
    mats[r] = r < kHalf ? &gate : &up;
    rows[r] = row < gate.rows ? row : gate.rows - 1;
  }
  float acc[R][NT];
  RowSums<T, NT, R>(mats, rows, gate.cols, xq, n, acc);
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const float sum = WarpSum(acc[r][t]);
      if (lane == 0) sums[r < kHalf ? 0 : 1][t][warp * kHalf + r % kHalf] = sum;
    }
  __syncthreads();
  // Warp t writes token t's 32 values (rows is a multiple of 32: whole warps).
  for (int t = warp; t < n; t += kGluWarps<NT>) {
    const float g = sums[0][t][lane], v = g / (1.0f + expf(-g)) * sums[1][t][lane];
    const int64_t i = t * gate.rows + r0 + lane;
    h[i] = v;
    QuantizeWarp(v, i, hq);
  }
  __syncthreads();  // sums is read: the block may call again
}

template <WeightType T, int NT>
__global__ void __launch_bounds__(32 * kGluWarps<NT>)
    MatVecSwiGluQ8Kernel(DeviceMatrix gate, DeviceMatrix up, Q8Activations xq, int n, float* h, Q8Activations hq) {
  SwiGluRows<T, NT>(gate, up, xq, n, static_cast<int64_t>(blockIdx.x) * 32, h, hq);
}

// Q4_0 products of 5..16 tokens on the tensor cores (mma.m16n8k32, int8 operands, int32 sums): the step's tokens are
// M (16, zero past n) and 8 weight rows N; one mma multiplies a 32-value block. A block of kMmaWarps warps takes
// kMmaTiles x 8 rows; its warps split the row's blocks (warp w: blocks w, w + kMmaWarps, ...), scale each block's int32
// sums by the weight and activation scales into f32 sums, and add their sums up in shared memory. Fragments
// (lane = 4 g + t): A (tokens x k) a0 = token g, k 4t..4t+3; a1 = token g + 8; a2, a3 the same at k + 16. B (k x rows)
// b0 = k 4t..4t+3 of row g, b1 = k 16 + 4t..: word t of row g's 16 quant bytes, low and high nibbles. C: c0, c1 =
// token g, rows 2t and 2t + 1; c2, c3 = token g + 8.
constexpr int kMmaTiles = 2, kMmaWarps = 8, kMmaUnroll = 4;
__global__ void __launch_bounds__(32 * kMmaWarps) MatVecMmaQ4_0Kernel(ProductSet set, Q8Activations xq, int n) {
  __shared__ float part[kMmaWarps][kMmaTiles][4][32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  unsigned block;
  const Product& p = BlockProduct(set, &block);
  const DeviceMatrix& w = p.w;
  const int64_t row0 = static_cast<int64_t>(block) * kMmaTiles * 8;
  const int nb = static_cast<int>(w.cols / 32);
  const uint8_t* wq[kMmaTiles];    // word t of row g of each tile, block 0
  const __half* sc[kMmaTiles][2];  // the scales of rows 2t and 2t + 1 of each tile, block 0
#pragma unroll
  for (int k = 0; k < kMmaTiles; ++k) {
    const int64_t r = row0 + 8 * k;
    wq[k] = w.q + static_cast<size_t>(r + g < w.rows ? r + g : w.rows - 1) * w.row_bytes + 4 * t;
#pragma unroll
    for (int j = 0; j < 2; ++j)
      sc[k][j] = reinterpret_cast<const __half*>(w.scales) + (r + 2 * t + j < w.rows ? r + 2 * t + j : w.rows - 1) * nb;
  }
  const bool tok_lo = g < n, tok_hi = g + 8 < n;
  const int32_t* a_lo = reinterpret_cast<const int32_t*>(xq.q + static_cast<size_t>(tok_lo ? g : 0) * w.cols);
  const int32_t* a_hi = reinterpret_cast<const int32_t*>(xq.q + static_cast<size_t>(tok_hi ? g + 8 : 0) * w.cols);
  const float* d_lo = xq.ds + 2 * static_cast<size_t>(tok_lo ? g : 0) * nb;
  const float* d_hi = xq.ds + 2 * static_cast<size_t>(tok_hi ? g + 8 : 0) * nb;
  float acc[kMmaTiles][4] = {};
  bool waited = false;
  for (int b0 = warp; b0 < nb; b0 += kMmaWarps * kMmaUnroll) {
    uint32_t wv[kMmaUnroll][kMmaTiles];
    float ws[kMmaUnroll][kMmaTiles][2];
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int b = b0 + u * kMmaWarps;
#pragma unroll
      for (int k = 0; k < kMmaTiles; ++k) {
        wv[u][k] = b < nb ? __ldg(reinterpret_cast<const uint32_t*>(wq[k] + 16 * static_cast<size_t>(b))) : 0u;
#pragma unroll
        for (int j = 0; j < 2; ++j) ws[u][k][j] = b < nb ? __half2float(__ldg(sc[k][j] + b)) : 0.f;
      }
    }
    if (!waited) {  // the first weights are in flight while the kernel before finishes
      WaitForPreviousKernel();
      LetNextKernelStart();
      waited = true;
    }
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      const int b = b0 + u * kMmaWarps;
      if (b >= nb) break;
      uint32_t a[4];
      a[0] = tok_lo ? __ldg(a_lo + 8 * b + t) : 0u;
      a[1] = tok_hi ? __ldg(a_hi + 8 * b + t) : 0u;
      a[2] = tok_lo ? __ldg(a_lo + 8 * b + 4 + t) : 0u;
      a[3] = tok_hi ? __ldg(a_hi + 8 * b + 4 + t) : 0u;
      const float da_lo = tok_lo ? __ldg(d_lo + 2 * b) : 0.f, da_hi = tok_hi ? __ldg(d_hi + 2 * b) : 0.f;
#pragma unroll
      for (int k = 0; k < kMmaTiles; ++k) {
        // Q4_0's values are nibble - 8: signed bytes -8..7.
        const uint32_t lo = __vsub4(wv[u][k] & 0x0F0F0F0Fu, 0x08080808u);
        const uint32_t hi = __vsub4((wv[u][k] >> 4) & 0x0F0F0F0Fu, 0x08080808u);
        int c[4] = {0, 0, 0, 0};
        MmaS8(c, a, lo, hi);
        acc[k][0] += ws[u][k][0] * da_lo * static_cast<float>(c[0]);
        acc[k][1] += ws[u][k][1] * da_lo * static_cast<float>(c[1]);
        acc[k][2] += ws[u][k][0] * da_hi * static_cast<float>(c[2]);
        acc[k][3] += ws[u][k][1] * da_hi * static_cast<float>(c[3]);
      }
    }
  }
  if (!waited) {
    WaitForPreviousKernel();
    LetNextKernelStart();
  }
#pragma unroll
  for (int k = 0; k < kMmaTiles; ++k)
#pragma unroll
    for (int i = 0; i < 4; ++i) part[warp][k][i][lane] = acc[k][i];
  __syncthreads();
  // Thread (k, i, lane) of the first 4 kMmaTiles warps' threads adds the warps' sums of one output.
  if (threadIdx.x < kMmaTiles * 4 * 32) {
    const int k = threadIdx.x / 128, i = threadIdx.x / 32 % 4, l = threadIdx.x % 32;
    float sum = 0;
#pragma unroll
    for (int v = 0; v < kMmaWarps; ++v) sum += part[v][k][i][l];
    const int token = l / 4 + (i >= 2 ? 8 : 0);
    const int64_t row = row0 + 8 * k + 2 * (l % 4) + (i % 2);
    if (token < n && row < w.rows) {
      float* o = p.y + token * p.y_stride + row;
      *o = p.add ? *o + sum : sum;
    }
  }
}

__global__ void QuantizeQ8Kernel(const float* x, int64_t count, Q8Activations out) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;  // whole warps: count is a multiple of 32
  QuantizeWarp(x[i], i, out);
}

// Rows per warp of MatVecQ8Kernel for nt tokens: two rows share each activation load where several tokens read them.
// (Four rows per warp at 16 tokens left the 7B's products latency-bound: 180 registers, 2 blocks per multiprocessor.)
constexpr int Q8Rows(int nt) { return nt >= 4 ? 2 : 1; }

// Launches kernel<NT> for the smallest NT of 1, 2, 4, 8, 16 that is >= n.
template <typename F>
void ForTokens(int n, F&& launch) {
  if (n == 1) {
    launch(std::integral_constant<int, 1>());
  } else if (n == 2) {
    launch(std::integral_constant<int, 2>());
  } else if (n <= 4) {
    launch(std::integral_constant<int, 4>());
  } else if (n <= 8) {
    launch(std::integral_constant<int, 8>());
  } else {
    launch(std::integral_constant<int, 16>());
  }
}

// --- the routed experts' products on int8 activations (moe.h: ExpertGateUpQ8, ExpertDownQ8) ---

// Expert e's rows [e * rows, (e + 1) * rows) of the stacked w as a matrix of its own.
template <WeightType T>
__device__ __forceinline__ DeviceMatrix ExpertRows(const DeviceMatrix& w, int e, int64_t rows) {
  constexpr size_t kScaleBytes = T == WeightType::kQ4_1 ? 4 : T == WeightType::kQ4_0 || T == WeightType::kQ8_0 ? 2 : 0;
  DeviceMatrix m = w;
  m.rows = rows;
  m.q = w.q + static_cast<size_t>(e) * rows * w.row_bytes;
  if constexpr (kScaleBytes > 0) m.scales = w.scales + static_cast<size_t>(e) * rows * (w.cols / 32) * kScaleBytes;
  return m;
}
// Activations from value `at` on (a multiple of 32).
__device__ __forceinline__ Q8Activations Q8From(Q8Activations a, int64_t at) {
  return Q8Activations{a.q + at, a.ds + at / 16};
}

// Block (x, j): rows 32 x .. 32 x + 31 of the gate and up matrices of the j-th chosen expert, over that expert's
// grouped rows of xg in chunks of NT.
template <WeightType T, int NT>
__global__ void __launch_bounds__(32 * kGluWarps<NT>)
    ExpertSwiGluQ8Kernel(DeviceMatrix gate, DeviceMatrix up, int64_t rows, Q8Activations xg, ExpertGroups g, int ne,
                         float* h, Q8Activations hq) {
  WaitForPreviousKernel();  // the groups come from the kernel before
  const int j = blockIdx.y;
  if (j >= g.active[ne]) return;  // the whole block
  const int e = g.active[j], first = g.first[e], m = g.first[e + 1] - first;
  const DeviceMatrix ge = ExpertRows<T>(gate, e, rows), ue = ExpertRows<T>(up, e, rows);
  for (int c0 = 0; c0 < m; c0 += NT) {
    const int64_t j0 = first + c0;
    SwiGluRows<T, NT>(ge, ue, Q8From(xg, j0 * gate.cols), min(NT, m - c0), static_cast<int64_t>(blockIdx.x) * 32,
                      h + j0 * rows, Q8From(hq, j0 * rows));
  }
}

// Block (x, j): R rows per warp of the j-th chosen expert's matrix, over its grouped rows of xg in chunks of NT.
template <WeightType T, int NT, int R>
__global__ void __launch_bounds__(32 * kMatVecWarps)
    ExpertMatVecQ8Kernel(DeviceMatrix w, int64_t rows, Q8Activations xg, ExpertGroups g, int ne, float* y) {
  WaitForPreviousKernel();
  const int j = blockIdx.y;
  if (j >= g.active[ne]) return;
  const int e = g.active[j], first = g.first[e], m = g.first[e + 1] - first;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kMatVecWarps + threadIdx.x / 32) * R;
  if (row0 >= rows) return;
  const DeviceMatrix we = ExpertRows<T>(w, e, rows);
  for (int c0 = 0; c0 < m; c0 += NT) {
    const int64_t j0 = first + c0;
    RowProducts<T, NT, R>(we, row0, Q8From(xg, j0 * w.cols), min(NT, m - c0), y + j0 * rows, rows, false);
  }
}

}  // namespace

bool TakesQ8(WeightType t) { return TakesQ8Type(t); }

Status QuantizeQ8(const float* x, int64_t count, Q8Activations out, Stream stream) {
  if (count % 32 != 0) return InvalidArgument("QuantizeQ8: " + std::to_string(count) + " values, not whole blocks");
  if (count == 0) return Status::Ok();
  LaunchEarly(QuantizeQ8Kernel, Blocks(count, 256), 256, stream, x, count, out);
  return CheckLaunch("QuantizeQ8");
}

Status MatVecMany(const Product* products, int count, const float* x, int n, Stream stream, const Q8Activations* xq) {
  if (count < 1 || count > kMaxProducts) return InvalidArgument("MatVecMany takes 1..3 products");
  if (n < 1 || n > kMaxMatVecTokens) return InvalidArgument("MatVec takes 1..16 tokens, got " + std::to_string(n));
  const WeightType type = products[0].w.type;
  ProductSet set{};
  set.count = count;
  for (int i = 0; i < count; ++i) {
    LR_RETURN_IF_ERROR(CheckMatrix(products[i].w));
    if (products[i].w.type != type || products[i].w.cols != products[0].w.cols)
      return InvalidArgument("MatVecMany: the products' matrices differ in type or columns");
    set.p[i] = products[i];
  }
  // The products' blocks of rows_per_block rows each, one after the other; the grid's size.
  auto blocks = [&set](int rows_per_block) {
    unsigned total = 0;
    for (int i = 0; i < set.count; ++i) {
      set.first_block[i] = total;
      total += Blocks(set.p[i].w.rows, rows_per_block);
    }
    set.first_block[set.count] = total;
    return total;
  };
  const int threads = 32 * kMatVecWarps;
  if (xq != nullptr && type == WeightType::kQ4_0 && n > 4) {
    const unsigned grid = blocks(kMmaTiles * 8);
    LaunchEarly(MatVecMmaQ4_0Kernel, grid, 32 * kMmaWarps, stream, set, *xq, n);
    return CheckLaunch("MatVec (int8 activations, tensor cores)");
  }
  if (xq != nullptr && TakesQ8(type)) {
    LR_RETURN_IF_ERROR(DispatchType(type, [&](auto tag) {
      constexpr WeightType T = decltype(tag)::value;
      if constexpr (TakesQ8Type(T)) {
        ForTokens(n, [&](auto nt) {
          constexpr int NT = decltype(nt)::value, R = Q8Rows(NT);
          const unsigned grid = blocks(kMatVecWarps * R);
          LaunchEarly(MatVecQ8Kernel<T, NT, R>, grid, threads, stream, set, *xq, n);
        });
      }
    }));
    return CheckLaunch("MatVec (int8 activations)");
  }
  const unsigned grid = blocks(kMatVecWarps);
  LR_RETURN_IF_ERROR(DispatchType(type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    ForTokens(n, [&](auto nt) { LaunchEarly(MatVecKernel<T, decltype(nt)::value>, grid, threads, stream, set, x, n); });
  }));
  return CheckLaunch("MatVec");
}

Status MatVecSwiGluQ8(const DeviceMatrix& gate, const DeviceMatrix& up, Q8Activations xq, int n, float* h, float* u,
                      Q8Activations hq, Stream stream) {
  if (n < 1 || n > kMaxMatVecTokens) return InvalidArgument("MatVec takes 1..16 tokens, got " + std::to_string(n));
  LR_RETURN_IF_ERROR(CheckMatrix(gate));
  LR_RETURN_IF_ERROR(CheckMatrix(up));
  if (gate.type != up.type || gate.rows != up.rows || gate.cols != up.cols || !TakesQ8(gate.type) ||
      gate.rows % 32 != 0)
    return InvalidArgument(
        "MatVecSwiGluQ8: gate and up must be of one type taking int8 activations and one shape, "
        "rows a multiple of 32; got " +
        std::to_string(gate.rows) + " and " + std::to_string(up.rows) + " rows");
  if (gate.type == WeightType::kQ4_0 && n > 4) {  // the products on the tensor cores, then the SwiGLU
    const Product products[2] = {{gate, h, gate.rows}, {up, u, up.rows}};
    LR_RETURN_IF_ERROR(MatVecMany(products, 2, nullptr, n, stream, &xq));
    return SwiGluQ8(h, u, static_cast<int64_t>(n) * gate.rows, hq, stream);
  }
  const unsigned grid = Blocks(gate.rows, 32);
  LR_RETURN_IF_ERROR(DispatchType(gate.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    if constexpr (TakesQ8Type(T)) {
      ForTokens(n, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        LaunchEarly(MatVecSwiGluQ8Kernel<T, NT>, grid, 32 * kGluWarps<NT>, stream, gate, up, xq, n, h, hq);
      });
    }
  }));
  return CheckLaunch("MatVecSwiGluQ8");
}

Status MatVec(const DeviceMatrix& w, const float* x, int n, float* y, int64_t y_stride, bool add, Stream stream,
              const Q8Activations* xq) {
  const Product p{w, y, y_stride, add};
  return MatVecMany(&p, 1, x, n, stream, xq);
}

namespace {

// The checks of the expert products' arguments: a type taking int8 activations, whole experts of `rows` rows.
Status CheckExperts(const char* what, const DeviceMatrix& w, int64_t rows) {
  LR_RETURN_IF_ERROR(CheckMatrix(w));
  if (!TakesQ8(w.type) || rows <= 0 || w.rows % rows != 0)
    return InvalidArgument(std::string(what) + ": " + std::to_string(w.rows) + " stacked rows of a type taking int8 " +
                           "activations in whole experts of " + std::to_string(rows));
  return Status::Ok();
}

}  // namespace

Status ExpertGateUpQ8(const DeviceMatrix& gate, const DeviceMatrix& up, int64_t rows, Q8Activations xg,
                      const ExpertGroups& g, int max_active, int n_tokens, float* h, Q8Activations hq, Stream stream) {
  LR_RETURN_IF_ERROR(CheckExperts("ExpertGateUpQ8", gate, rows));
  LR_RETURN_IF_ERROR(CheckExperts("ExpertGateUpQ8", up, rows));
  if (gate.type != up.type || gate.rows != up.rows || gate.cols != up.cols || rows % 32 != 0)
    return InvalidArgument(
        "ExpertGateUpQ8: gate and up must be of one type and shape, experts of a multiple of 32 rows");
  if (n_tokens < 1 || n_tokens > kMaxMatVecTokens)
    return InvalidArgument("ExpertGateUpQ8 takes 1..16 tokens, got " + std::to_string(n_tokens));
  const int ne = static_cast<int>(gate.rows / rows);
  if (max_active <= 0) return Status::Ok();
  const dim3 grid(static_cast<unsigned>(rows / 32), std::min(max_active, ne));
  LR_RETURN_IF_ERROR(DispatchType(gate.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    if constexpr (TakesQ8Type(T)) {
      ForTokens(n_tokens, [&](auto nt) {
        constexpr int NT = decltype(nt)::value;
        LaunchEarly(ExpertSwiGluQ8Kernel<T, NT>, grid, 32 * kGluWarps<NT>, stream, gate, up, rows, xg, g, ne, h, hq);
      });
    }
  }));
  return CheckLaunch("ExpertGateUpQ8");
}

Status ExpertDownQ8(const DeviceMatrix& w, int64_t rows, Q8Activations xg, const ExpertGroups& g, int max_active,
                    int n_tokens, float* y, Stream stream) {
  LR_RETURN_IF_ERROR(CheckExperts("ExpertDownQ8", w, rows));
  if (n_tokens < 1 || n_tokens > kMaxMatVecTokens)
    return InvalidArgument("ExpertDownQ8 takes 1..16 tokens, got " + std::to_string(n_tokens));
  const int ne = static_cast<int>(w.rows / rows);
  if (max_active <= 0) return Status::Ok();
  LR_RETURN_IF_ERROR(DispatchType(w.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    if constexpr (TakesQ8Type(T)) {
      ForTokens(n_tokens, [&](auto nt) {
        constexpr int NT = decltype(nt)::value, R = Q8Rows(NT);
        const dim3 grid(Blocks(rows, kMatVecWarps * R), std::min(max_active, ne));
        LaunchEarly(ExpertMatVecQ8Kernel<T, NT, R>, grid, 32 * kMatVecWarps, stream, w, rows, xg, g, ne, y);
      });
    }
  }));
  return CheckLaunch("ExpertDownQ8");
}

}  // namespace lr::cuda
