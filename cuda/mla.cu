// The kernels of mla.h.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "cuda/attend_pages.cuh"
#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/mla.h"

namespace lr::cuda {
namespace {

// 1 / RMS of x[0..dim) (+ eps), by the whole block of THREADS threads.
template <int THREADS>
__device__ float InverseRms(const float* x, int dim, float eps) {
  float ss = 0;
  for (int d = threadIdx.x; d < dim; d += THREADS) ss += x[d] * x[d];
  return rsqrtf(BlockSum<THREADS>(ss) / dim + eps);
}

constexpr int kNormThreads = 1024;
__global__ void __launch_bounds__(kNormThreads)
    RmsNormStridedKernel(float* x, int dim, int stride, const float* w, float eps, Q8Activations xq) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  float* xr = x + static_cast<size_t>(blockIdx.x) * stride;
  const float scale = InverseRms<kNormThreads>(xr, dim, eps);
  if (xq.q == nullptr) {
    for (int d = threadIdx.x; d < dim; d += blockDim.x) xr[d] = xr[d] * scale * w[d];
    return;
  }
  for (int d = threadIdx.x; d < stride; d += blockDim.x) {  // whole warps: stride % 32 == 0
    const float v = d < dim ? xr[d] * scale * w[d] : xr[d];
    xr[d] = v;
    QuantizeWarp(v, static_cast<int64_t>(blockIdx.x) * stride + d, xq);
  }
}

// Angle pair p of position pos: (cos, sin) * factor.
__device__ __forceinline__ void CosSin(const MlaArgs& a, int pos, int p, float* cs, float* sn) {
  sincosf(static_cast<float>(pos) * a.inv_freq[p], sn, cs);
  *sn *= a.cos_sin_factor;
  *cs *= a.cos_sin_factor;
}

// Block (h < n_head, token i, z): head h's query, its rope part rotated and the whole times the position's
// temperature, in shared memory, then absorbed: values [128 z, 128 z + 128) of q_abs = [k_b_h^T q_nope | q_rope], one
// per thread. Block (n_head, i, 0): the token's row, its latent RMS-normalised and its k_rope rotated, stored as f16
// into the page slot.
constexpr int kPrepareThreads = 128;
__global__ void __launch_bounds__(kPrepareThreads)
    MlaPrepareKernel(MlaArgs a, const float* q, float* kv, KvPool pool, TokenPlaces places, float* q_abs) {
  extern __shared__ float qs[];  // nope + rope
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int h = blockIdx.x, i = blockIdx.y;
  const int kd = a.lat + a.rope, hd = a.nope + a.rope, half = a.rope / 2;
  const int pos = places.pos[i];
  if (h == a.n_head) {
    if (blockIdx.z > 0) return;  // the whole block
    float* kv_i = kv + static_cast<size_t>(i) * kd;
    const float norm = InverseRms<kPrepareThreads>(kv_i, a.lat, a.eps);
    const int page = places.pages[places.first[i] + pos / kPageTokens];
    __half* row = reinterpret_cast<__half*>(pool.base + static_cast<size_t>(page) * pool.page_bytes) +
                  (static_cast<size_t>(a.layer) * kPageTokens + pos % kPageTokens) * kd;
    for (int l = threadIdx.x; l < a.lat; l += blockDim.x) row[l] = __float2half_rn(kv_i[l] * norm * a.kv_norm[l]);
    for (int p = threadIdx.x; p < half; p += blockDim.x) {
      float cs, sn;
      CosSin(a, pos, p, &cs, &sn);
      const float x0 = kv_i[a.lat + 2 * p], x1 = kv_i[a.lat + 2 * p + 1];
      row[a.lat + 2 * p] = __float2half_rn(x0 * cs - x1 * sn);
      row[a.lat + 2 * p + 1] = __float2half_rn(x0 * sn + x1 * cs);
    }
    return;
  }
  const float temperature = a.temperature_scale > 0 && a.temperature_length > 0
                                ? 1.0f + a.temperature_scale * log1pf(static_cast<float>(pos / a.temperature_length))
                                : 1.0f;
  const float* qh = q + (static_cast<size_t>(i) * a.n_head + h) * hd;
  for (int d = threadIdx.x; d < a.nope; d += blockDim.x) qs[d] = qh[d] * temperature;
  for (int p = threadIdx.x; p < half; p += blockDim.x) {
    float cs, sn;
    CosSin(a, pos, p, &cs, &sn);
    const float x0 = qh[a.nope + 2 * p], x1 = qh[a.nope + 2 * p + 1];
    qs[a.nope + 2 * p] = (x0 * cs - x1 * sn) * temperature;
    qs[a.nope + 2 * p + 1] = (x0 * sn + x1 * cs) * temperature;
  }
  __syncthreads();
  const __half* kb = reinterpret_cast<const __half*>(a.kv_b) + static_cast<size_t>(h) * (a.nope + a.v_dim) * a.lat;
  float* out = q_abs + (static_cast<size_t>(i) * a.n_head + h) * kd;
  const int l = blockIdx.z * kPrepareThreads + threadIdx.x;  // one output per thread: several loads in flight
  if (l < a.lat) {
    float sum = 0;
#pragma unroll 16
    for (int j = 0; j < a.nope; ++j) sum += qs[j] * __half2float(kb[static_cast<size_t>(j) * a.lat + l]);
    out[l] = sum;
  } else if (l < kd) {
    out[l] = qs[a.nope + l - a.lat];
  }
}

// One block per (group of G heads, token, split): the split's pages through AttendPages (4 warps; the latent rows
// are both the keys and, their first lat values, the values) and MergeWarps, the shared memory holding the queries,
// then the warps' states; with several splits each block writes its state and MlaValues combines them. Of a launch's
// splits a token uses ActiveSplits (at least kMlaWarps pages each), so that short contexts leave the other blocks
// idle.
constexpr int kMlaWarps = 4, kMlaBlocks = 1024, kMaxMlaSplits = 128;
constexpr size_t kMlaShared = 48 * 1024;

__device__ __forceinline__ int ActiveSplits(int pos, int splits) {
  const int n_pages = pos / kPageTokens + 1;
  return min(splits, (n_pages + kMlaWarps - 1) / kMlaWarps);
}

// Heads per block: the most of 8, 4, 2, 1 dividing n_head whose queries and warp states fit the shared memory.
int MlaGroup(int n_head, int lat, int kd) {
  for (int g : {8, 4, 2}) {
    const size_t need = std::max<size_t>(static_cast<size_t>(g) * kd, static_cast<size_t>(2 + lat) * kMlaWarps * g);
    if (n_head % g == 0 && need * sizeof(float) <= kMlaShared) return g;
  }
  return 1;
}

template <int G, int V>
__global__ void __launch_bounds__(32 * kMlaWarps)
    MlaAttentionKernel(MlaArgs a, const float* q_abs, float scale, KvPool pool, TokenPlaces places, float* out,
                       float* part) {
  extern __shared__ float sm[];
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int hg = blockIdx.x, i = blockIdx.y;
  const int active = ActiveSplits(places.pos[i], gridDim.z);
  if (static_cast<int>(blockIdx.z) >= active) return;  // the whole block
  const int kd = a.lat + a.rope;
  const float* qi = q_abs + (static_cast<size_t>(i) * a.n_head + hg * G) * kd;
  for (int idx = threadIdx.x; idx < G * kd; idx += blockDim.x) sm[idx] = qi[idx] * scale;
  __syncthreads();
  const int n_ctx = places.pos[i] + 1;
  PageRows rows;
  rows.base = pool.base;
  rows.page_bytes = pool.page_bytes;
  rows.table = places.pages + places.first[i];
  rows.k_off = rows.v_off = static_cast<size_t>(a.layer) * kPageTokens * kd;
  rows.kd = rows.v_stride = kd;
  rows.vd = a.lat;
  const int n_pages = (n_ctx + kPageTokens - 1) / kPageTokens, split = blockIdx.z;
  float m[G], l[G], acc[G][V];
  AttendPages<G, V>(sm, rows, n_ctx, split * n_pages / active, (split + 1) * n_pages / active, kMlaWarps, m, l, acc);
  MergeWarps<G, V>(sm, kMlaWarps, m, l, acc, a.lat, static_cast<size_t>(i) * a.n_head + hg * G, gridDim.z, split, out,
                   part, Q8Activations{});
}

// Block (x, h, i): value rows 32 x .. 32 x + 31 of head h for token i. The attended latent first into shared memory
// (with split states: their combination, the states of the token's active splits weighted by exp(m_s - max) over
// the sum of their weighted sums; warp 0 finds the weights, the warps share the splits); then warp w takes row
// 32 x + w, and warp 0 writes the 32 sums (and quantizes them into outq, whole blocks of 32).
constexpr int kValueWarps = 32, kMaxValueLatent = 1024, kValueChunk = 256;
__global__ void __launch_bounds__(32 * kValueWarps)
    MlaValuesKernel(MlaArgs a, const float* __restrict__ latent, MlaSplitStates states, float* __restrict__ out,
                    Q8Activations outq) {
  __shared__ float x[kMaxValueLatent], weight[kMaxMlaSplits], sums[32], total;
  __shared__ float partial[kValueWarps][kValueChunk];
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int r0 = blockIdx.x * 32, h = blockIdx.y, i = blockIdx.z;
  const size_t head = static_cast<size_t>(i) * a.n_head + h;
  if (states.part == nullptr) {
    for (int d = threadIdx.x; d < a.lat; d += blockDim.x) x[d] = latent[head * a.lat + d];
  } else {
    const int active = ActiveSplits(states.pos[i], states.splits);
    const float* st = states.part + head * states.splits * (a.lat + 2);
    if (warp == 0) {
      float mx = -INFINITY;
      for (int sp = lane; sp < active; sp += 32) mx = fmaxf(mx, st[sp * (a.lat + 2) + a.lat]);
      mx = WarpMax(mx);
      float sum = 0;
      for (int sp = lane; sp < active; sp += 32) {
        const float m = st[sp * (a.lat + 2) + a.lat];
        const float f = m == -INFINITY ? 0.f : expf(m - mx);
        weight[sp] = f;
        sum += st[sp * (a.lat + 2) + a.lat + 1] * f;
      }
      sum = WarpSum(sum);
      if (lane == 0) total = sum;
    }
    __syncthreads();
    // kValueChunk values at a time: warp w adds splits w, w + kValueWarps, ... (lane: values lane + 32 j), then the
    // warps' partial sums are added in a fixed order.
    for (int d0 = 0; d0 < a.lat; d0 += kValueChunk) {
      float o[kValueChunk / 32];
#pragma unroll
      for (int j = 0; j < kValueChunk / 32; ++j) o[j] = 0;
      for (int sp = warp; sp < active; sp += kValueWarps) {
        const float* row = st + sp * (a.lat + 2) + d0;
#pragma unroll
        for (int j = 0; j < kValueChunk / 32; ++j)
          if (d0 + lane + 32 * j < a.lat) o[j] += row[lane + 32 * j] * weight[sp];
      }
#pragma unroll
      for (int j = 0; j < kValueChunk / 32; ++j) partial[warp][lane + 32 * j] = o[j];
      __syncthreads();
      for (int d = threadIdx.x; d < kValueChunk && d0 + d < a.lat; d += blockDim.x) {
        float sum = 0;
        for (int w = 0; w < kValueWarps; ++w) sum += partial[w][d];
        x[d0 + d] = sum / total;
      }
      __syncthreads();
    }
  }
  __syncthreads();
  const int r = r0 + warp;
  if (r < a.v_dim) {
    const __half2* vb = reinterpret_cast<const __half2*>(
        reinterpret_cast<const __half*>(a.kv_b) + (static_cast<size_t>(h) * (a.nope + a.v_dim) + a.nope + r) * a.lat);
    float sum = 0;
#pragma unroll 4
    for (int l = lane; l < a.lat / 2; l += 32) {
      const float2 v = __half22float2(vb[l]);
      sum += v.x * x[2 * l] + v.y * x[2 * l + 1];
    }
    sum = WarpSum(sum);
    if (lane == 0) sums[warp] = sum;
  }
  __syncthreads();
  if (warp > 0) return;
  const size_t at = head * a.v_dim + r0 + lane;
  if (outq.q != nullptr) {  // v_dim % 32 == 0: the whole warp
    out[at] = sums[lane];
    QuantizeWarp(sums[lane], static_cast<int64_t>(at), outq);
  } else if (r0 + lane < a.v_dim) {
    out[at] = sums[lane];
  }
}

template <int G, int V>
void LaunchMla(dim3 grid, size_t shared, cudaStream_t s, const MlaArgs& a, const float* q_abs, float scale,
               const KvPool& pool, const TokenPlaces& places, float* out, float* part) {
  LaunchEarlyShared(MlaAttentionKernel<G, V>, grid, 32 * kMlaWarps, shared, s, a, q_abs, scale, pool, places, out,
                    part);
}

template <int G>
Status LaunchMlaV(dim3 grid, size_t shared, cudaStream_t s, const MlaArgs& a, const float* q_abs, float scale,
                  const KvPool& pool, const TokenPlaces& places, float* out, float* part) {
  const int v = (a.lat + 31) / 32;  // values per lane
  if (v <= 2) {
    LaunchMla<G, 2>(grid, shared, s, a, q_abs, scale, pool, places, out, part);
  } else if (v <= 8) {
    LaunchMla<G, 8>(grid, shared, s, a, q_abs, scale, pool, places, out, part);
  } else if (v <= 16) {
    LaunchMla<G, 16>(grid, shared, s, a, q_abs, scale, pool, places, out, part);
  } else {
    return Unsupported("CUDA MLA: kv_lora_rank " + std::to_string(a.lat) + " (at most 512)");
  }
  return Status::Ok();
}

}  // namespace

Status RmsNormStrided(float* x, int n, int dim, int stride, const float* w, float eps, Stream stream,
                      const Q8Activations* xq) {
  if (n <= 0) return Status::Ok();
  if (xq != nullptr && stride % 32 != 0)
    return InvalidArgument("RmsNormStrided: quantized rows of " + std::to_string(stride) +
                           " values (a multiple of 32)");
  LaunchEarly(RmsNormStridedKernel, n, kNormThreads, stream, x, dim, stride, w, eps,
              xq != nullptr ? *xq : Q8Activations{});
  return CheckLaunch("RmsNormStrided");
}

Status MlaPrepare(const MlaArgs& a, const float* q, float* kv, const KvPool& pool, const TokenPlaces& places, int n,
                  float* q_abs, Stream stream) {
  if (n <= 0) return Status::Ok();
  if (a.rope % 2 != 0 || pool.k_dim != a.lat + a.rope || pool.n_head_kv != 1 || pool.v_dim != 0)
    return InvalidArgument("MlaPrepare: the pool's rows must be kv_lora_rank + rope values, one head, no values");
  const size_t shared = static_cast<size_t>(a.nope + a.rope) * sizeof(float);
  const dim3 grid(a.n_head + 1, n, Blocks(a.lat + a.rope, kPrepareThreads));
  LaunchEarlyShared(MlaPrepareKernel, grid, kPrepareThreads, shared, stream, a, q, kv, pool, places, q_abs);
  return CheckLaunch("MlaPrepare");
}

int MlaAttentionSplits(const MlaArgs& a, int n) {
  if (n > kMaxMatVecTokens) return 1;
  const int blocks = a.n_head / MlaGroup(a.n_head, a.lat, a.lat + a.rope) * n;
  return std::clamp(kMlaBlocks / blocks, 1, kMaxMlaSplits);
}

size_t MlaAttentionScratchFloats(const MlaArgs& a, int n) {
  const int splits = MlaAttentionSplits(a, n);
  return splits == 1 ? 0 : static_cast<size_t>(n) * a.n_head * splits * (a.lat + 2);
}

Status MlaAttention(const MlaArgs& a, const float* q_abs, float scale, const KvPool& pool, const TokenPlaces& places,
                    int n, float* out, float* scratch, Stream stream) {
  if (n <= 0) return Status::Ok();
  const int kd = a.lat + a.rope;
  if (kd % 8 != 0 || pool.k_dim != kd || a.rope > 64)
    return Unsupported("CUDA MLA: rows of kv_lora_rank + rope = " + std::to_string(kd) +
                       " values (a multiple of 8, rope at most 64)");
  const int g = MlaGroup(a.n_head, a.lat, kd);
  const int splits = MlaAttentionSplits(a, n);
  const size_t shared =
      sizeof(float) * std::max<size_t>(static_cast<size_t>(g) * kd, static_cast<size_t>(2 + a.lat) * kMlaWarps * g);
  if (shared > kMlaShared) return Unsupported("CUDA MLA: kv_lora_rank " + std::to_string(a.lat) + " (at most 512)");
  const dim3 grid(a.n_head / g, n, splits);
  cudaStream_t s = S(stream);
  switch (g) {
    case 8: LR_RETURN_IF_ERROR(LaunchMlaV<8>(grid, shared, s, a, q_abs, scale, pool, places, out, scratch)); break;
    case 4: LR_RETURN_IF_ERROR(LaunchMlaV<4>(grid, shared, s, a, q_abs, scale, pool, places, out, scratch)); break;
    case 2: LR_RETURN_IF_ERROR(LaunchMlaV<2>(grid, shared, s, a, q_abs, scale, pool, places, out, scratch)); break;
    default: LR_RETURN_IF_ERROR(LaunchMlaV<1>(grid, shared, s, a, q_abs, scale, pool, places, out, scratch)); break;
  }
  return CheckLaunch("MlaAttention");
}

Status MlaValues(const MlaArgs& a, const float* latent, int n, float* out, Stream stream, const Q8Activations* outq,
                 const MlaSplitStates* states) {
  if (n <= 0) return Status::Ok();
  if (outq != nullptr && a.v_dim % 32 != 0)
    return InvalidArgument("MlaValues: quantized rows of " + std::to_string(a.v_dim) + " values (a multiple of 32)");
  if (a.lat > kMaxValueLatent || (states != nullptr && states->splits > kMaxMlaSplits))
    return Unsupported("MlaValues: kv_lora_rank " + std::to_string(a.lat) + " (at most 1024)");
  LaunchEarly(MlaValuesKernel, dim3(Blocks(a.v_dim, 32), a.n_head, n), 32 * kValueWarps, stream, a, latent,
              states != nullptr ? *states : MlaSplitStates{}, out, outq != nullptr ? *outq : Q8Activations{});
  return CheckLaunch("MlaValues");
}

}  // namespace lr::cuda
