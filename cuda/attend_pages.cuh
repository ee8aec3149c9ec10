// The decode attention's pass over f16 KV pages, shared by the dense attention (kernels.cu: Attention) and MLA's
// (mla.cu: MlaAttention). A block takes G queries of one token that attend over the same rows (the query heads of one
// KV head; MLA: a group of heads over the latent rows) and a range of the sequence's pages, which its warps take in
// turn: lane j scores position j of a page against the G queries (in shared memory, already scaled), each warp keeps
// an online softmax per query and the weighted value rows, V values per lane (values 64 e + 2 lane and the next in
// acc[g][2 e], acc[g][2 e + 1]). MergeWarps then combines the warps' states and writes the block's output (one
// split) or its state (several: max, sum of exponentials, the unnormalised output; the callers combine them).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/common.cuh"

namespace lr::cuda {

// Where one sequence's rows are: page p's key rows (kd halves each) at base + table[p] * page_bytes + k_off halves,
// its value rows (vd values used of v_stride) at v_off (MLA: the key rows themselves, the first vd values).
struct PageRows {
  const uint8_t* base = nullptr;
  size_t page_bytes = 0;
  const int32_t* table = nullptr;
  size_t k_off = 0, v_off = 0;
  int kd = 0, vd = 0, v_stride = 0;
};

// The calling warp's share of pages pg_begin + warp, + warps, ... below pg_end of positions 0..n_ctx - 1; sq: the G
// queries of kd values (shared memory). kd a multiple of 8, vd even and at most 32 V.
template <int G, int V>
__device__ __forceinline__ void AttendPages(const float* sq, const PageRows& r, int n_ctx, int pg_begin, int pg_end,
                                            int warps, float (&m)[G], float (&l)[G], float (&acc)[G][V]) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kd = r.kd, vd = r.vd;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -INFINITY;
    l[g] = 0;
#pragma unroll
    for (int e = 0; e < V; ++e) acc[g][e] = 0;
  }
  for (int pg = pg_begin + warp; pg < pg_end; pg += warps) {
    const __half* page = reinterpret_cast<const __half*>(r.base + static_cast<size_t>(r.table[pg]) * r.page_bytes);
    const int n_valid = min(kPageTokens, n_ctx - pg * kPageTokens);
    const bool valid = lane < n_valid;
    float s[G];
#pragma unroll
    for (int g = 0; g < G; ++g) s[g] = 0;
    if (valid) {
      // The lane's key row, up to 128 values at a time: all its loads in flight together, then the sums.
      const __half* krow = page + r.k_off + static_cast<size_t>(lane) * kd;
      for (int d0 = 0; d0 < kd; d0 += 128) {
        uint4 raw[16];
#pragma unroll
        for (int c = 0; c < 16; ++c)
          if (d0 + 8 * c < kd) raw[c] = *reinterpret_cast<const uint4*>(krow + d0 + 8 * c);
#pragma unroll
        for (int c = 0; c < 16; ++c) {
          if (d0 + 8 * c < kd) {
            const uint32_t u[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
            const int d = d0 + 8 * c;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&u[e]));
#pragma unroll
              for (int g = 0; g < G; ++g) s[g] += f.x * sq[g * kd + d + 2 * e] + f.y * sq[g * kd + d + 2 * e + 1];
            }
          }
        }
      }
    }
    float p[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      const float mx = WarpMax(valid ? s[g] : -INFINITY);
      const float m_new = fmaxf(m[g], mx);
      const float corr = expf(m[g] - m_new);
      p[g] = valid ? expf(s[g] - m_new) : 0.f;
      l[g] = l[g] * corr + WarpSum(p[g]);
      m[g] = m_new;
#pragma unroll
      for (int e = 0; e < V; ++e) acc[g][e] *= corr;
    }
    // Value rows 8 positions at a time, their loads in flight together: values 64 e + 2 lane and the next of each,
    // one 4-byte load (zero past the page's valid positions, whose p is 0).
    const __half* vbase = page + r.v_off;
    for (int j0 = 0; j0 < n_valid; j0 += 8) {
      uint32_t raw[8][V / 2];
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        const __half* vrow = vbase + static_cast<size_t>(j0 + jj) * r.v_stride;
#pragma unroll
        for (int e = 0; e < V / 2; ++e)
          raw[jj][e] = j0 + jj < n_valid && 64 * e + 2 * lane < vd
                           ? *reinterpret_cast<const uint32_t*>(vrow + 64 * e + 2 * lane)
                           : 0u;
      }
#pragma unroll
      for (int jj = 0; jj < 8; ++jj) {
        float pj[G];
#pragma unroll
        for (int g = 0; g < G; ++g) pj[g] = __shfl_sync(kFull, p[g], j0 + jj);
#pragma unroll
        for (int e = 0; e < V / 2; ++e) {
          if (64 * e + 2 * lane < vd) {
            const float2 vv = __half22float2(*reinterpret_cast<const __half2*>(&raw[jj][e]));
#pragma unroll
            for (int g = 0; g < G; ++g) {
              acc[g][2 * e] += pj[g] * vv.x;
              acc[g][2 * e + 1] += pj[g] * vv.y;
            }
          }
        }
      }
    }
  }
}

// The block's warps' states (AttendPages') combined through sm (warps * G * (vd + 2) floats of shared memory; its
// previous contents, such as the queries, are read before: this syncs first), then for query g of head head0 + g:
// with splits == 1, out[head * vd + d] (and, with outq.q, quantized into outq: vd a multiple of 32), else the state
// at part + (head * splits + split) * (vd + 2): vd unnormalised outputs, the maximum score, the sum of exponentials.
template <int G, int V>
__device__ __forceinline__ void MergeWarps(float* sm, int warps, const float (&m)[G], const float (&l)[G],
                                           const float (&acc)[G][V], int vd, size_t head0, int splits, int split,
                                           float* out, float* part, Q8Activations outq) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* wm = sm;                    // [warp][g]
  float* wl = sm + warps * G;        // [warp][g]
  float* wacc = sm + 2 * warps * G;  // [warp][g][vd]
  __syncthreads();
#pragma unroll
  for (int g = 0; g < G; ++g) {
    if (lane == 0) {
      wm[warp * G + g] = m[g];
      wl[warp * G + g] = l[g];
    }
#pragma unroll
    for (int e = 0; e < V / 2; ++e) {
      if (64 * e + 2 * lane < vd) {
        wacc[(warp * G + g) * vd + 64 * e + 2 * lane] = acc[g][2 * e];
        wacc[(warp * G + g) * vd + 64 * e + 2 * lane + 1] = acc[g][2 * e + 1];
      }
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < G * vd; idx += blockDim.x) {
    const int g = idx / vd, d = idx % vd;
    float mx = -INFINITY;
    for (int w = 0; w < warps; ++w) mx = fmaxf(mx, wm[w * G + g]);
    float sum = 0, a = 0;
    for (int w = 0; w < warps; ++w) {
      const float f = wm[w * G + g] == -INFINITY ? 0.f : expf(wm[w * G + g] - mx);
      sum += wl[w * G + g] * f;
      a += wacc[(w * G + g) * vd + d] * f;
    }
    const size_t head = head0 + g;
    if (splits == 1) {
      out[head * vd + d] = a / sum;
      if (outq.q != nullptr) QuantizeWarp(a / sum, static_cast<int64_t>(head * vd + d), outq);
    } else {
      float* st = part + (head * splits + split) * (vd + 2);
      st[d] = a;
      if (d == 0) {
        st[vd] = mx;
        st[vd + 1] = sum;
      }
    }
  }
}

}  // namespace lr::cuda
