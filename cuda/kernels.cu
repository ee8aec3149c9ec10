// The kernels of kernels.h. Each launcher checks its arguments' invariants that the kernels rely on (sizes, group,
// head dims), launches, and checks the launch.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "cuda/attend_pages.cuh"
#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/kernels.h"

namespace lr::cuda {
namespace {

template <WeightType T>
__global__ void DequantizeRowsKernel(DeviceMatrix w, const int32_t* rows, float* out) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int i = blockIdx.y;
  const int sb = blockIdx.x * blockDim.x + threadIdx.x;
  if (sb >= w.cols / 32) return;
  float v[32];
  Dequant32<T>(w, rows[i], sb, v);
  float4* o = reinterpret_cast<float4*>(out + static_cast<size_t>(i) * w.cols + 32 * sb);
#pragma unroll
  for (int k = 0; k < 8; ++k) o[k] = make_float4(v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]);
}

// Rows row0.. of w as f16, one thread per quarter sub-block (Dequant8): `count` quarters, rows x cols halves at out.
template <WeightType T>
__global__ void DequantizeHalvesKernel(DeviceMatrix w, int64_t row0, int64_t count, __half* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const int64_t r = i / (w.cols / 8);
  const int rem = static_cast<int>(i % (w.cols / 8)), sb = rem / 4, q = rem % 4;
  float v[8];
  Dequant8<T>(w, row0 + r, sb, q, v);
  __half2 h[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) h[j] = __floats2half2_rn(v[2 * j], v[2 * j + 1]);
  __half* o = out + r * w.cols + 32 * sb + 4 * q;
  *reinterpret_cast<uint2*>(o) = make_uint2(*reinterpret_cast<uint32_t*>(&h[0]), *reinterpret_cast<uint32_t*>(&h[1]));
  *reinterpret_cast<uint2*>(o + 16) =
      make_uint2(*reinterpret_cast<uint32_t*>(&h[2]), *reinterpret_cast<uint32_t*>(&h[3]));
}

// With yq.q, y is quantized too (dim a multiple of 32: whole warps take each i-loop step).
__global__ void RmsNormKernel(const float* x, const int32_t* rows, int dim, const float* w, float eps, float* y,
                              Q8Activations yq) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int j = blockIdx.x;
  const float* xr = x + static_cast<size_t>(rows != nullptr ? rows[j] : j) * dim;
  // The thread's first kNormValues values stay in registers for the second pass; their loads are in flight together.
  constexpr int kNormValues = 8;
  float xv[kNormValues];
#pragma unroll
  for (int k = 0; k < kNormValues; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    xv[k] = i < dim ? xr[i] : 0.f;
  }
  float ss = 0;
#pragma unroll
  for (int k = 0; k < kNormValues; ++k) ss += xv[k] * xv[k];
  for (int i = threadIdx.x + kNormValues * blockDim.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float part[32];
  ss = WarpSum(ss);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
    t = WarpSum(t);
    if (threadIdx.x == 0) part[0] = t;
  }
  __syncthreads();
  const float scale = rsqrtf(part[0] / dim + eps);
  float* yr = y + static_cast<size_t>(j) * dim;
  auto store = [&](int i, float xi) {
    const float v = xi * scale * w[i];
    yr[i] = v;
    if (yq.q != nullptr) QuantizeWarp(v, static_cast<int64_t>(j) * dim + i, yq);
  };
#pragma unroll
  for (int k = 0; k < kNormValues; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < dim) store(i, xv[k]);
  }
  for (int i = threadIdx.x + kNormValues * blockDim.x; i < dim; i += blockDim.x) store(i, xr[i]);
}

// With gq.q, g is quantized too (count a multiple of 32: whole warps return together).
__global__ void SwiGluKernel(float* g, const float* u, int64_t count, Q8Activations gq) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const float a = g[i];
  const float v = a / (1.0f + expf(-a)) * u[i];
  g[i] = v;
  if (gq.q != nullptr) QuantizeWarp(v, i, gq);
}

// One warp per head (n_head query heads, then n_head_kv key heads) of one token (blockIdx.y).
__global__ void PrepareQkvKernel(QkvArgs a, KvPool pool, TokenPlaces places) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = blockIdx.y;
  const int hi = blockIdx.x * 4 + warp;
  const int hd = pool.k_dim;
  if (hi >= a.n_head + pool.n_head_kv) return;
  const bool is_q = hi < a.n_head;
  const int h = is_q ? hi : hi - a.n_head;
  float* v = is_q ? a.q + (static_cast<size_t>(i) * a.n_head + h) * hd
                  : a.k + (static_cast<size_t>(i) * pool.n_head_kv + h) * hd;
  const float* bias = is_q ? a.q_bias : a.k_bias;
  if (bias != nullptr) {
    for (int d = lane; d < hd; d += 32) v[d] += bias[static_cast<size_t>(h) * hd + d];
    __syncwarp();
  }
  const float* norm = is_q ? a.q_norm : a.k_norm;
  if (norm != nullptr) {
    float ss = 0;
    for (int d = lane; d < hd; d += 32) ss += v[d] * v[d];
    const float scale = rsqrtf(WarpSum(ss) / hd + a.eps);
    __syncwarp();
    for (int d = lane; d < hd; d += 32) v[d] = v[d] * scale * norm[d];
    __syncwarp();
  }
  const int pos = places.pos[i];
  const int half = a.n_rot / 2;
  for (int p = lane; p < half; p += 32) {
    float sn, cs;
    sincosf(static_cast<float>(pos) * a.inv_freq[p], &sn, &cs);
    sn *= a.cos_sin_factor;
    cs *= a.cos_sin_factor;
    const int ia = a.halves ? p : 2 * p, ib = a.halves ? p + half : 2 * p + 1;
    const float x0 = v[ia], x1 = v[ib];
    v[ia] = x0 * cs - x1 * sn;
    v[ib] = x0 * sn + x1 * cs;
  }
  __syncwarp();
  if (is_q || !a.store_kv) return;
  const int page = places.pages[places.first[i] + pos / kPageTokens];
  const int slot = pos % kPageTokens;
  const size_t lh = static_cast<size_t>(a.layer) * pool.n_head_kv + h;
  __half* base = reinterpret_cast<__half*>(pool.base + static_cast<size_t>(page) * pool.page_bytes);
  __half* kd = base + (lh * kPageTokens + slot) * hd;
  __half* vd = base + static_cast<size_t>(pool.n_layer) * pool.n_head_kv * kPageTokens * hd +
               (lh * kPageTokens + slot) * pool.v_dim;
  const float* vs = a.v + (static_cast<size_t>(i) * pool.n_head_kv + h) * pool.v_dim;
  for (int d = lane; d < hd; d += 32) kd[d] = __float2half_rn(v[d]);
  const float* vb = a.v_bias != nullptr ? a.v_bias + static_cast<size_t>(h) * pool.v_dim : nullptr;
  for (int d = lane; d < pool.v_dim; d += 32) vd[d] = __float2half_rn(vb != nullptr ? vs[d] + vb[d] : vs[d]);
}

// One block per (KV head, token, split): the split's share of the sequence's pages through AttendPages (4 warps)
// and MergeWarps. With one split the block writes the output; with several it writes its state (max, sum,
// unnormalised output) to `part` and AttentionMergeKernel combines the splits.
constexpr int kAttnWarps = 4, kMaxHeadDim = 256, kMaxV = kMaxHeadDim / 32;
template <int G>
__global__ void __launch_bounds__(32 * kAttnWarps)
    AttentionKernel(const float* q, int n_head, float scale, KvPool pool, int layer, TokenPlaces places, float* out,
                    float* part, Q8Activations outq) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  __shared__ float sq[G * kMaxHeadDim];
  __shared__ float merge[kAttnWarps * G * (kMaxHeadDim + 2)];
  const int h = blockIdx.x, i = blockIdx.y;
  const int kd = pool.k_dim, vd = pool.v_dim;
  const float* qi = q + (static_cast<size_t>(i) * n_head + h * G) * kd;
  for (int idx = threadIdx.x; idx < G * kd; idx += blockDim.x) sq[idx] = qi[idx] * scale;
  __syncthreads();
  const int n_ctx = places.pos[i] + 1;
  const size_t lh = static_cast<size_t>(layer) * pool.n_head_kv + h;
  PageRows rows;
  rows.base = pool.base;
  rows.page_bytes = pool.page_bytes;
  rows.table = places.pages + places.first[i];
  rows.k_off = lh * kPageTokens * kd;
  rows.v_off = static_cast<size_t>(pool.n_layer) * pool.n_head_kv * kPageTokens * kd + lh * kPageTokens * vd;
  rows.kd = kd;
  rows.vd = vd;
  rows.v_stride = vd;
  const int n_pages = (n_ctx + kPageTokens - 1) / kPageTokens;
  const int splits = gridDim.z, split = blockIdx.z;
  float m[G], l[G], acc[G][kMaxV];
  AttendPages<G, kMaxV>(sq, rows, n_ctx, split * n_pages / splits, (split + 1) * n_pages / splits, kAttnWarps, m, l,
                        acc);
  MergeWarps<G, kMaxV>(merge, kAttnWarps, m, l, acc, vd, static_cast<size_t>(i) * n_head + h * G, splits, split, out,
                       part, outq);
}

// out = the splits' states of one (token, query head) combined: blockIdx.x the head, blockIdx.y the token.
__global__ void AttentionMergeKernel(const float* part, int splits, int vd, float* out, Q8Activations outq) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const size_t head = static_cast<size_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  const float* p = part + head * splits * (vd + 2);
  float mx = -INFINITY;
#pragma unroll 8
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, p[s * (vd + 2) + vd]);
  for (int d = threadIdx.x; d < vd; d += blockDim.x) {
    float sum = 0, a = 0;
#pragma unroll 8
    for (int s = 0; s < splits; ++s) {
      const float m = p[s * (vd + 2) + vd];
      const float f = m == -INFINITY ? 0.f : expf(m - mx);
      sum += p[s * (vd + 2) + vd + 1] * f;
      a += p[s * (vd + 2) + d] * f;
    }
    out[head * vd + d] = a / sum;
    if (outq.q != nullptr) QuantizeWarp(a / sum, head * vd + d, outq);
  }
}

__device__ __forceinline__ uint64_t Mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr int kSampleThreads = 1024;
__global__ void __launch_bounds__(kSampleThreads)
    SampleKernel(const float* logits, int vocab, float temperature, uint64_t seed, int32_t* out) {
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int r = blockIdx.x;
  const float* row = logits + static_cast<size_t>(r) * vocab;
  float best = -INFINITY;
  int best_i = vocab;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
    float v = row[i];
    if (temperature > 0) {
      const uint64_t h = Mix64(seed ^ Mix64((static_cast<uint64_t>(r) << 32) | static_cast<uint32_t>(i)));
      const float u = (static_cast<float>(h >> 40) + 0.5f) * (1.0f / 16777216.0f);  // in (0, 1)
      v = v / temperature - logf(-logf(u));
    }
    if (v > best) {  // ascending i: the first maximum of this thread's share
      best = v;
      best_i = i;
    }
  }
  __shared__ float sv[kSampleThreads];
  __shared__ int si[kSampleThreads];
  sv[threadIdx.x] = best;
  si[threadIdx.x] = best_i;
  __syncthreads();
  for (int o = kSampleThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) {
      const float v2 = sv[threadIdx.x + o];
      const int i2 = si[threadIdx.x + o];
      if (v2 > sv[threadIdx.x] || (v2 == sv[threadIdx.x] && i2 < si[threadIdx.x])) {
        sv[threadIdx.x] = v2;
        si[threadIdx.x] = i2;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[r] = si[0] < vocab ? si[0] : 0;
}

__global__ void RandomBytesKernel(uint32_t* p, size_t words, uint64_t seed) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < words;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    p[i] = static_cast<uint32_t>(Mix64(seed ^ Mix64(i)));
}

// count halves at p, p + stride, ... (in bytes) set to random values of magnitude in [0.5, 1.5) * scale, signed
// when `sign`.
__global__ void RandomHalvesKernel(uint8_t* p, size_t count, size_t stride, float scale, bool sign, uint64_t seed) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = Mix64(seed ^ Mix64(i));
    float v = scale * (0.5f + static_cast<float>(h >> 40) * (1.0f / 16777216.0f));
    if (sign && (h & 1)) v = -v;
    *reinterpret_cast<__half*>(p + i * stride) = __float2half_rn(v);
  }
}

__global__ void RandomBf16Kernel(uint16_t* p, size_t count, float scale, uint64_t seed) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = Mix64(seed ^ Mix64(i));
    float v = scale * (static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f);
    p[i] = static_cast<uint16_t>(__float_as_uint(v) >> 16);
  }
}

__global__ void RandomF32Kernel(float* p, size_t count, float scale, uint64_t seed) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = Mix64(seed ^ Mix64(i));
    p[i] = scale * (static_cast<float>(h >> 40) * (2.0f / 16777216.0f) - 1.0f);
  }
}

__global__ void FillKernel(float* p, int64_t count, float value) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < count) p[i] = value;
}

}  // namespace

Status DequantizeRows(const DeviceMatrix& w, const int32_t* rows, int n, float* out, Stream stream) {
  LR_RETURN_IF_ERROR(CheckMatrix(w));
  if (n <= 0) return Status::Ok();
  const dim3 grid(Blocks(w.cols / 32, 64), n);
  LR_RETURN_IF_ERROR(DispatchType(w.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    LaunchEarly(DequantizeRowsKernel<T>, grid, 64, stream, w, rows, out);
  }));
  return CheckLaunch("DequantizeRows");
}

Status DequantizeHalves(const DeviceMatrix& w, int64_t row0, int64_t rows, uint16_t* out, Stream stream) {
  LR_RETURN_IF_ERROR(CheckMatrix(w));
  if (row0 < 0 || rows < 0 || row0 + rows > w.rows)
    return InvalidArgument("DequantizeHalves: rows " + std::to_string(row0) + " + " + std::to_string(rows) +
                           " outside a matrix of " + std::to_string(w.rows));
  if (rows == 0) return Status::Ok();
  const int64_t count = rows * (w.cols / 8);
  LR_RETURN_IF_ERROR(DispatchType(w.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    DequantizeHalvesKernel<T>
        <<<Blocks(count, 256), 256, 0, S(stream)>>>(w, row0, count, reinterpret_cast<__half*>(out));
  }));
  return CheckLaunch("DequantizeHalves");
}

Status RmsNorm(const float* x, const int32_t* rows, int n, int dim, const float* w, float eps, float* y,
               Stream stream) {
  if (n <= 0) return Status::Ok();
  LaunchEarly(RmsNormKernel, n, 1024, stream, x, rows, dim, w, eps, y, Q8Activations{});
  return CheckLaunch("RmsNorm");
}

Status RmsNormQ8(const float* x, const int32_t* rows, int n, int dim, const float* w, float eps, float* y,
                 Q8Activations yq, Stream stream) {
  if (dim % 32 != 0) return InvalidArgument("RmsNormQ8: rows of " + std::to_string(dim) + " values, not whole blocks");
  if (n <= 0) return Status::Ok();
  LaunchEarly(RmsNormKernel, n, 1024, stream, x, rows, dim, w, eps, y, yq);
  return CheckLaunch("RmsNormQ8");
}

Status SwiGlu(float* g, const float* u, int64_t count, Stream stream) {
  if (count <= 0) return Status::Ok();
  LaunchEarly(SwiGluKernel, Blocks(count, 256), 256, stream, g, u, count, Q8Activations{});
  return CheckLaunch("SwiGlu");
}

Status SwiGluQ8(float* g, const float* u, int64_t count, Q8Activations gq, Stream stream) {
  if (count % 32 != 0) return InvalidArgument("SwiGluQ8: " + std::to_string(count) + " values, not whole blocks");
  if (count <= 0) return Status::Ok();
  LaunchEarly(SwiGluKernel, Blocks(count, 256), 256, stream, g, u, count, gq);
  return CheckLaunch("SwiGluQ8");
}

Status PrepareQkv(const QkvArgs& a, const KvPool& pool, const TokenPlaces& places, int n, Stream stream) {
  if (n <= 0) return Status::Ok();
  if (a.n_rot > pool.k_dim || a.n_rot % 2 != 0) return InvalidArgument("PrepareQkv: n_rot must be even, <= k_dim");
  const dim3 grid(Blocks(a.n_head + pool.n_head_kv, 4), n);
  LaunchEarly(PrepareQkvKernel, grid, 128, stream, a, pool, places);
  return CheckLaunch("PrepareQkv");
}

int AttentionSplits(int n_head_kv, int n) {
  if (n > kMaxMatVecTokens) return 1;
  return std::clamp(kAttentionBlocks / (n_head_kv * n), 1, kMaxAttentionSplits);
}

size_t AttentionScratchFloats(int n, int n_head, int n_head_kv, int v_dim) {
  const int splits = AttentionSplits(n_head_kv, n);
  return splits == 1 ? 0 : static_cast<size_t>(n) * n_head * splits * (v_dim + 2);
}

Status Attention(const float* q, int n_head, float scale, const KvPool& pool, int layer, const TokenPlaces& places,
                 int n, float* out, float* scratch, Stream stream, const Q8Activations* outq) {
  if (n <= 0) return Status::Ok();
  if (outq != nullptr && pool.v_dim % 32 != 0)
    return InvalidArgument("Attention: a quantized output needs value rows of whole blocks, got " +
                           std::to_string(pool.v_dim));
  const Q8Activations oq = outq != nullptr ? *outq : Q8Activations{};
  if (pool.n_head_kv <= 0 || n_head % pool.n_head_kv != 0)
    return InvalidArgument("Attention: n_head must be a multiple of n_head_kv");
  if (pool.k_dim % 8 != 0 || pool.k_dim > kMaxHeadDim || pool.v_dim > kMaxHeadDim || pool.v_dim <= 0 ||
      pool.v_dim % 2 != 0)
    return Unsupported("CUDA attention: key rows of " + std::to_string(pool.k_dim) + " and value rows of " +
                       std::to_string(pool.v_dim) +
                       " values (expected keys a multiple of 8, values even, both at most 256)");
  const int group = n_head / pool.n_head_kv;
  const int splits = AttentionSplits(pool.n_head_kv, n);
  const dim3 grid(pool.n_head_kv, n, splits);
  const int threads = 32 * kAttnWarps;
  auto launch = [&](auto g) {
    LaunchEarly(AttentionKernel<decltype(g)::value>, grid, threads, stream, q, n_head, scale, pool, layer, places, out,
                scratch, splits == 1 ? oq : Q8Activations{});
  };
  switch (group) {
    case 1: launch(std::integral_constant<int, 1>()); break;
    case 2: launch(std::integral_constant<int, 2>()); break;
    case 3: launch(std::integral_constant<int, 3>()); break;
    case 4: launch(std::integral_constant<int, 4>()); break;
    case 5: launch(std::integral_constant<int, 5>()); break;
    case 6: launch(std::integral_constant<int, 6>()); break;
    case 7: launch(std::integral_constant<int, 7>()); break;
    case 8: launch(std::integral_constant<int, 8>()); break;
    default: return Unsupported("CUDA attention: " + std::to_string(group) + " query heads per KV head (at most 8)");
  }
  LR_RETURN_IF_ERROR(CheckLaunch("Attention"));
  if (splits == 1) return Status::Ok();
  LaunchEarly(AttentionMergeKernel, dim3(n_head, n), std::min(pool.v_dim, 256), stream, scratch, splits, pool.v_dim,
              out, oq);
  return CheckLaunch("AttentionMerge");
}

Status Sample(const float* logits, int rows, int vocab, float temperature, uint64_t seed, int32_t* out, Stream stream) {
  if (rows <= 0) return Status::Ok();
  LaunchEarly(SampleKernel, rows, kSampleThreads, stream, logits, vocab, temperature, seed, out);
  return CheckLaunch("Sample");
}

Status RandomizeMatrix(WeightType t, int64_t rows, int64_t cols, uint8_t* q, uint8_t* scales, uint64_t seed,
                       Stream stream) {
  const size_t q_bytes = QuantRowBytes(t, cols) * static_cast<size_t>(rows);
  const size_t blocks32 = static_cast<size_t>(rows) * static_cast<size_t>(cols / 32);
  const float unit = 1.0f / std::sqrt(static_cast<float>(cols));  // weight size that keeps a product's scale
  constexpr int kThreads = 256, kGrid = 1024;
  cudaStream_t s = S(stream);
  switch (t) {
    case WeightType::kF32:
      RandomF32Kernel<<<kGrid, kThreads, 0, s>>>(reinterpret_cast<float*>(q), q_bytes / 4, 1.7f * unit, seed);
      break;
    case WeightType::kF16: RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(q, q_bytes / 2, 2, unit, true, seed); break;
    case WeightType::kBF16:
      RandomBf16Kernel<<<kGrid, kThreads, 0, s>>>(reinterpret_cast<uint16_t*>(q), q_bytes / 2, 1.7f * unit, seed);
      break;
    default: {
      // Random quants, 4 bytes at a time (a Q6_K matrix of an odd number of blocks keeps its last 2 bytes as they
      // were: quants only, any value is valid), then scales that keep the products' size.
      RandomBytesKernel<<<kGrid, kThreads, 0, s>>>(reinterpret_cast<uint32_t*>(q), q_bytes / 4, seed);
      const uint64_t s2 = seed * 0x2545f4914f6cdd1dull + 1;
      if (t == WeightType::kQ4_0 || t == WeightType::kQ8_0) {
        const float spread = t == WeightType::kQ4_0 ? 4.6f : 74.0f;
        RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(scales, blocks32, 2, unit / spread, false, s2);
      } else if (t == WeightType::kQ4_1) {
        RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(scales, blocks32, 4, unit / 4.6f, false, s2);
        RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(scales + 2, blocks32, 4, 7.5f * unit / 4.6f, true, s2 + 1);
      } else {
        const size_t blocks256 = blocks32 / 8;
        if (t == WeightType::kQ6_K) {
          RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(q + 208, blocks256, 210, unit / (74.0f * 18.0f), false, s2);
        } else {
          const size_t bytes = t == WeightType::kQ4_K ? 144 : 176;
          RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(q, blocks256, bytes, unit / (32.0f * 4.6f), false, s2);
          RandomHalvesKernel<<<kGrid, kThreads, 0, s>>>(q + 2, blocks256, bytes, unit / (32.0f * 4.6f), false, s2 + 1);
        }
      }
    }
  }
  return CheckLaunch("RandomizeMatrix");
}

Status FillFloats(float* p, int64_t count, float value, Stream stream) {
  if (count <= 0) return Status::Ok();
  FillKernel<<<Blocks(count, 256), 256, 0, S(stream)>>>(p, count, value);
  return CheckLaunch("FillFloats");
}

}  // namespace lr::cuda
