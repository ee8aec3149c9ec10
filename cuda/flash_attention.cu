// FlashAttention of kernels.h: attention of a prefill-sized step on the tensor cores, over the f16 KV pages.
//
// A block takes 64 consecutive tokens of the batch and one query head (4 warps of 16 tokens). Its queries, scaled by
// the softmax scale and log2(e), go to f16 fragments in registers once; then the pages of the tokens' sequence, one
// page (32 positions) at a time, double-buffered through cp.async: scores S = Q K^T (mma, f32), the causal mask
// (position <= the token's), an online softmax in base 2 in f32, and O += P V with P packed to f16 straight from the
// score accumulators (their layout is the A operand's) and V through transposing ldmatrix loads. The tokens of a
// block may belong to several sequences: it makes one pass per sequence, each pass masking the other sequences'
// tokens, so that a mixed batch gets the same results as one sequence at a time. MLA's latent rows (mla.h:
// FlashAttentionLatent) take the same kernel with one KV head whose rows are both keys and (their first v_dim values)
// values.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/mla.h"
#include "cuda/mma.cuh"

namespace lr::cuda {
namespace {

constexpr int kTokens = 64, kWarps = 4;

// DK: the key rows' width; DV: the values'. DV < DK: the latent rows of MLA (cuda/mla.h), whose values are the rows'
// first DV values (one buffer for both). The queries' fragments stay in registers up to 128 values, else they are
// loaded from shared memory at each use (so that the 8 DV / 4 accumulators fit beside them).
template <int DK, int DV>
constexpr bool kLatent = DV < DK;
template <int DK, int DV>
constexpr int SmemBytes() {
  // queries, then 2 buffers of keys and (unless latent) 2 of values
  return (kTokens + (kLatent<DK, DV> ? 2 : 4) * kPageTokens) * (DK + 8) * 2;
}

__device__ __forceinline__ uint32_t PackHalves(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ float QuadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float QuadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Block (blockIdx.x, blockIdx.y) = (tokens 64 x .. 64 x + 63, query head). Each lane holds two token rows of its
// warp's 16: lane / 4 and lane / 4 + 8 ("lo" and "hi"), and of each 8-wide column tile the columns 2 (lane % 4), +1.
template <int DK, int DV>
__global__ void __launch_bounds__(32 * kWarps)
    FlashAttentionKernel(const float* __restrict__ q, int n, int n_head, float scale_log2, KvPool pool, int layer,
                         TokenPlaces places, float* __restrict__ out) {
  constexpr int D = DK;
  constexpr bool kQInRegisters = DK <= 128;
  constexpr int kStride = D + 8;  // halves per shared row: consecutive rows start in different 16-byte bank groups
  extern __shared__ __align__(16) uint8_t smem[];
  __half* sq = reinterpret_cast<__half*>(smem);
  __half* sk = sq + kTokens * kStride;                                 // 2 x kPageTokens rows
  __half* sv = kLatent<DK, DV> ? sk : sk + 2 * kPageTokens * kStride;  // 2 x kPageTokens rows
  __shared__ int tfirst[kTokens], tpos[kTokens], pass_first, pass_max;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int tok0 = blockIdx.x * kTokens, head = blockIdx.y;
  const int hk = head / (n_head / pool.n_head_kv);

  for (int idx = tid; idx < kTokens * D / 4; idx += blockDim.x) {
    const int r = idx / (D / 4), c = 4 * (idx % (D / 4));
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (tok0 + r < n) v = *reinterpret_cast<const float4*>(q + (static_cast<size_t>(tok0 + r) * n_head + head) * D + c);
    __half2* d = reinterpret_cast<__half2*>(sq + r * kStride + c);
    d[0] = __floats2half2_rn(v.x * scale_log2, v.y * scale_log2);
    d[1] = __floats2half2_rn(v.z * scale_log2, v.w * scale_log2);
  }
  for (int r = tid; r < kTokens; r += blockDim.x) {
    const bool valid = tok0 + r < n;
    tfirst[r] = valid ? places.first[tok0 + r] : -1;
    tpos[r] = valid ? places.pos[tok0 + r] : -1;
  }
  __syncthreads();
  const uint32_t q_row = SharedAddress(sq + (warp * 16 + lane % 16) * kStride + (lane / 16) * 8);
  uint32_t qf[kQInRegisters ? D / 16 : 1][4];
  if constexpr (kQInRegisters) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) LoadMatrixX4(q_row + 32 * kk, qf[kk]);
  }

  const int lo = warp * 16 + lane / 4, hi = lo + 8;
  float o[DV / 8][4];
#pragma unroll
  for (int j = 0; j < DV / 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;  // l: this lane's share of the row sums
  const size_t lh = static_cast<size_t>(layer) * pool.n_head_kv + hk;
  const size_t k_off = lh * kPageTokens * D;
  const size_t v_off = static_cast<size_t>(pool.n_layer) * pool.n_head_kv * kPageTokens * D + lh * kPageTokens * D;

  for (int done_below = 0;;) {  // thread 0's cursor over the tokens
    // The next pass: the sequence of the first token not yet taken (tokens of one sequence all go in one pass, so
    // "not yet taken" is "of a sequence not seen among the tokens before it").
    if (tid == 0) {
      int pick = -1, mx = -1;
      for (int r = done_below; r < kTokens && pick < 0; ++r) {
        bool seen = tfirst[r] < 0;
        for (int e = 0; e < r && !seen; ++e) seen = tfirst[e] == tfirst[r];
        if (!seen) {
          pick = tfirst[r];
          done_below = r + 1;
        }
      }
      if (pick >= 0)
        for (int r = 0; r < kTokens; ++r)
          if (tfirst[r] == pick) mx = max(mx, tpos[r]);
      pass_first = pick;
      pass_max = mx;
    }
    __syncthreads();
    const int cur = pass_first, max_pos = pass_max;
    if (cur < 0) break;
    const int pos_lo = tfirst[lo] == cur ? tpos[lo] : -1, pos_hi = tfirst[hi] == cur ? tpos[hi] : -1;
    const int32_t* table = places.pages + cur;
    const int n_pages = max_pos / kPageTokens + 1;
    // Page pg's keys and values into buffer b; positions past max_pos (unwritten slots) are zero-filled.
    auto load = [&](int b, int pg) {
      const __half* page =
          reinterpret_cast<const __half*>(pool.base + static_cast<size_t>(table[pg]) * pool.page_bytes);
      for (int c = tid; c < kPageTokens * D / 8; c += blockDim.x) {
        const int r = c / (D / 8), part = 8 * (c % (D / 8));
        const bool valid = pg * kPageTokens + r <= max_pos;
        CopyAsync16(SharedAddress(sk + (b * kPageTokens + r) * kStride + part), page + k_off + r * D + part, valid);
        if constexpr (!kLatent<DK, DV>)
          CopyAsync16(SharedAddress(sv + (b * kPageTokens + r) * kStride + part), page + v_off + r * D + part, valid);
      }
    };
    load(0, 0);
    CommitCopies();
    for (int pg = 0; pg < n_pages; ++pg) {
      if (pg + 1 < n_pages) load((pg + 1) % 2, pg + 1);
      CommitCopies();
      WaitCopies<1>();
      __syncthreads();
      const __half* kb = sk + (pg % 2) * kPageTokens * kStride;
      const __half* vb = sv + (pg % 2) * kPageTokens * kStride;
      // S (16 tokens x 32 positions per warp): 4 column tiles of 8 positions.
      float s[4][4];
#pragma unroll
      for (int j = 0; j < 4; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        uint32_t qk[4];
        if constexpr (!kQInRegisters) LoadMatrixX4(q_row + 32 * kk, qk);
        const uint32_t* a = kQInRegisters ? qf[kQInRegisters ? kk : 0] : qk;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          uint32_t r[4];
          LoadMatrixX4(
              SharedAddress(kb + (16 * j + lane % 8 + (lane / 16) * 8) * kStride + 16 * kk + ((lane / 8) % 2) * 8), r);
          Mma16816(s[2 * j], a, r);
          Mma16816(s[2 * j + 1], a, r + 2);
        }
      }
      float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int p = pg * kPageTokens + 8 * j + 2 * (lane % 4) + e;
          if (p > pos_lo) s[j][e] = -INFINITY;
          if (p > pos_hi) s[j][2 + e] = -INFINITY;
          mx_lo = fmaxf(mx_lo, s[j][e]);
          mx_hi = fmaxf(mx_hi, s[j][2 + e]);
        }
      }
      const float new_lo = fmaxf(m_lo, QuadMax(mx_lo)), new_hi = fmaxf(m_hi, QuadMax(mx_hi));
      // Rows with nothing yet (all masked) keep exponents finite: base 0, so that exp2(-inf) = 0 everywhere.
      const float base_lo = new_lo == -INFINITY ? 0.f : new_lo, base_hi = new_hi == -INFINITY ? 0.f : new_hi;
      const float corr_lo = exp2f(m_lo - base_lo), corr_hi = exp2f(m_hi - base_hi);
      m_lo = new_lo;
      m_hi = new_hi;
      float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[j][0] = exp2f(s[j][0] - base_lo);
        s[j][1] = exp2f(s[j][1] - base_lo);
        s[j][2] = exp2f(s[j][2] - base_hi);
        s[j][3] = exp2f(s[j][3] - base_hi);
        sum_lo += s[j][0] + s[j][1];
        sum_hi += s[j][2] + s[j][3];
      }
      l_lo = l_lo * corr_lo + sum_lo;
      l_hi = l_hi * corr_hi + sum_hi;
#pragma unroll
      for (int j = 0; j < DV / 8; ++j) {
        o[j][0] *= corr_lo;
        o[j][1] *= corr_lo;
        o[j][2] *= corr_hi;
        o[j][3] *= corr_hi;
      }
      // O += P V: P's 16 positions kk2 are the A operand (score tiles 2 kk2 and 2 kk2 + 1); V's rows transposed.
#pragma unroll
      for (int kk2 = 0; kk2 < 2; ++kk2) {
        const uint32_t a[4] = {PackHalves(s[2 * kk2][0], s[2 * kk2][1]), PackHalves(s[2 * kk2][2], s[2 * kk2][3]),
                               PackHalves(s[2 * kk2 + 1][0], s[2 * kk2 + 1][1]),
                               PackHalves(s[2 * kk2 + 1][2], s[2 * kk2 + 1][3])};
#pragma unroll
        for (int dn = 0; dn < DV / 16; ++dn) {
          uint32_t r[4];
          LoadMatrixX4T(
              SharedAddress(vb + (16 * kk2 + lane % 8 + ((lane / 8) % 2) * 8) * kStride + 16 * dn + (lane / 16) * 8),
              r);
          Mma16816(o[2 * dn], a, r);
          Mma16816(o[2 * dn + 1], a, r + 2);
        }
      }
      __syncthreads();  // every warp is done with buffer pg % 2 before the next iteration refills it
    }
  }

  const float sum_lo = QuadSum(l_lo), sum_hi = QuadSum(l_hi);
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int t = tok0 + (h == 0 ? lo : hi);
    if (t >= n) continue;
    const float inv = 1.0f / (h == 0 ? sum_lo : sum_hi);
    float* ot = out + (static_cast<size_t>(t) * n_head + head) * DV + 2 * (lane % 4);
#pragma unroll
    for (int j = 0; j < DV / 8; ++j)
      *reinterpret_cast<float2*>(ot + 8 * j) = make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
  }
}

template <int DK, int DV = DK>
Status Launch(const float* q, int n_head, float scale, const KvPool& pool, int layer, const TokenPlaces& places, int n,
              float* out, Stream stream) {
  constexpr int bytes = SmemBytes<DK, DV>();
  LR_RETURN_IF_ERROR(
      CheckCuda(cudaFuncSetAttribute(FlashAttentionKernel<DK, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                "FlashAttention smem"));
  const dim3 grid((n + kTokens - 1) / kTokens, n_head);
  FlashAttentionKernel<DK, DV><<<grid, 32 * kWarps, bytes, static_cast<cudaStream_t>(stream)>>>(
      q, n, n_head, scale * 1.4426950408889634f, pool, layer, places, out);
  return CheckLaunch("FlashAttention");
}

}  // namespace

bool FlashAttentionTakes(int k_dim, int v_dim) {
  return k_dim == v_dim && (k_dim == 16 || k_dim == 32 || k_dim == 64 || k_dim == 96 || k_dim == 128);
}

Status FlashAttention(const float* q, int n_head, float scale, const KvPool& pool, int layer, const TokenPlaces& places,
                      int n, float* out, Stream stream) {
  if (n <= 0) return Status::Ok();
  if (pool.n_head_kv <= 0 || n_head % pool.n_head_kv != 0)
    return InvalidArgument("FlashAttention: n_head must be a multiple of n_head_kv");
  switch (pool.k_dim == pool.v_dim ? pool.k_dim : 0) {
    case 16: return Launch<16>(q, n_head, scale, pool, layer, places, n, out, stream);
    case 32: return Launch<32>(q, n_head, scale, pool, layer, places, n, out, stream);
    case 64: return Launch<64>(q, n_head, scale, pool, layer, places, n, out, stream);
    case 96: return Launch<96>(q, n_head, scale, pool, layer, places, n, out, stream);
    case 128: return Launch<128>(q, n_head, scale, pool, layer, places, n, out, stream);
    default:
      return Unsupported("FlashAttention: key rows of " + std::to_string(pool.k_dim) + " and value rows of " +
                         std::to_string(pool.v_dim) + " values (expected both 16, 32, 64, 96 or 128)");
  }
}

bool FlashAttentionLatentTakes(int k_dim, int v_dim) {
  return (k_dim == 320 && v_dim == 256) || (k_dim == 48 && v_dim == 32);
}

Status FlashAttentionLatent(const float* q, int n_head, float scale, const KvPool& pool, int layer,
                            const TokenPlaces& places, int n, int v_dim, float* out, Stream stream) {
  if (n <= 0) return Status::Ok();
  if (pool.n_head_kv != 1 || pool.v_dim != 0 || !FlashAttentionLatentTakes(pool.k_dim, v_dim))
    return Unsupported("FlashAttentionLatent: one KV head of " + std::to_string(pool.k_dim) + "-value rows, " +
                       std::to_string(v_dim) + " values (takes 320 and 256, 48 and 32)");
  if (pool.k_dim == 320) return Launch<320, 256>(q, n_head, scale, pool, layer, places, n, out, stream);
  return Launch<48, 32>(q, n_head, scale, pool, layer, places, n, out, stream);
}

}  // namespace lr::cuda
