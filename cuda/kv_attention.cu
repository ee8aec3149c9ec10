// Attention on compressed KV rows (cuda/kv_attention.h).
#include "cuda/kv_attention.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/device.h"
#include "cuda/kv_device.cuh"
#include "cuda/warp.cuh"

namespace lr::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kSharedQueries = 16;  // queries one block scores a shared page for
constexpr int kMaxRotating = 8;     // rotating key center pairs (inference/kv_calibration.h keeps at most 8)

__device__ __forceinline__ unsigned Load16(const uint8_t* p) { return *reinterpret_cast<const uint16_t*>(p); }

struct Params {
  const float* q = nullptr;
  int n_head = 0;
  float scale = 0;
  DeviceRowFormat k, v;
  KvPages pages;
  int layer = 0;
  TokenPlaces places;
  int n = 0;
  int tokens_per_item = 1;
  bool shared_part = false;  // items read positions [0, shared_tokens), else [shared_tokens, pos + 1)
  int shared_tokens = 0;
  int splits = 1;
  int part_offset = 0;  // this launch's first state of each (token, head)
  int parts = 0;        // states per (token, head)
  float* part = nullptr;
};

// s[i] += q_i . y for the row's rotated-domain values y, decoded block by block from its codes.
template <int Q>
__device__ __forceinline__ void ScoreRow(const DeviceRowFormat& f, const uint8_t* row, const float* sq, int kd,
                                         const float (*lv)[16], float* s) {
  if (f.n_runs == 0) {
    for (int e = 0; e < kd; e += 8) {
      const uint4 raw = *reinterpret_cast<const uint4*>(row + 2 * e);
      const uint32_t u[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 x = __half22float2(*reinterpret_cast<const __half2*>(&u[j]));
#pragma unroll
        for (int qi = 0; qi < Q; ++qi) s[qi] += x.x * sq[qi * kd + e + 2 * j] + x.y * sq[qi * kd + e + 2 * j + 1];
      }
    }
    return;
  }
  const int n_blocks = (f.dim + f.block_elems - 1) / f.block_elems;
  for (int b = 0; b < n_blocks; ++b) {
    const uint8_t* blk = row + b * f.block_bytes;
    const kvdev::BlockRuns br = kvdev::RunsOf(f, b);
    const float d = Half(blk);
    const uint8_t* rp = blk + 2;
    int e0 = b * f.block_elems;
    float bs[Q];
#pragma unroll
    for (int qi = 0; qi < Q; ++qi) bs[qi] = 0;
    for (int r = 0; r < f.n_runs; ++r) {
      const int bits = f.bits[r], cnt = r == 0 ? br.c0 : br.c1;
      const float* L = lv[r];
      if (bits == 8) {
        for (int j = 0; j < cnt; j += 2) {
          const unsigned w = Load16(rp + j);
          const float c0 = static_cast<float>(static_cast<int8_t>(w & 0xff));
          const float c1 = static_cast<float>(static_cast<int8_t>(w >> 8));
#pragma unroll
          for (int qi = 0; qi < Q; ++qi) bs[qi] += c0 * sq[qi * kd + e0 + j] + c1 * sq[qi * kd + e0 + j + 1];
        }
        rp += cnt;
      } else if (bits == 4) {
        for (int g = 0; g < cnt; g += 32) {
          const int half = min(32, cnt - g) / 2;
          for (int j = 0; j < half; j += 2) {
            const unsigned w = Load16(rp + j);
            const float a0 = L[w & 15], b0 = L[(w >> 4) & 15], a1 = L[(w >> 8) & 15], b1 = L[(w >> 12) & 15];
            const int e = e0 + g + j;
#pragma unroll
            for (int qi = 0; qi < Q; ++qi) {
              const float* x = sq + qi * kd + e;
              bs[qi] += a0 * x[0] + a1 * x[1] + b0 * x[half] + b1 * x[half + 1];
            }
          }
          rp += half;
        }
      } else {
        for (int t = 0; t < cnt; t += 16) {
          const unsigned w = Load16(rp) | Load16(rp + 2) << 16;
          const unsigned hi = bits == 3 ? Load16(rp + 4) : 0u;
          const int e = e0 + t;
#pragma unroll
          for (int k = 0; k < 16; ++k) {
            const unsigned code = ((w >> (8 * (k % 4) + 2 * (k / 4))) & 3u) | (((hi >> k) & 1u) << 2);
            const float l = L[code];
#pragma unroll
            for (int qi = 0; qi < Q; ++qi) bs[qi] += l * sq[qi * kd + e + k];
          }
          rp += bits == 3 ? 6 : 4;
        }
      }
      e0 += cnt;
    }
#pragma unroll
    for (int qi = 0; qi < Q; ++qi) s[qi] += d * bs[qi];
  }
}

// Where element c of every row of a format sits: worked out once per lane, then each row's element is two or three
// byte loads (DecodeAt). bits 16: f16 rows (byte: the value's offset); else the block's scale at `scale`, the code's
// low bits at byte >> shift (masked), a 3-bit code's high bit at bit hi_shift of byte hi, levels of run `run`.
struct ElemRef {
  int bits, scale, byte, shift, hi, hi_shift, run;
};

__device__ __forceinline__ ElemRef MakeElemRef(const DeviceRowFormat& f, int c) {
  if (f.n_runs == 0) return {16, 0, 2 * c, 0, 0, 0, 0};
  const int b = c / f.block_elems;
  const int blk = b * f.block_bytes;
  const kvdev::BlockRuns br = kvdev::RunsOf(f, b);
  int j = c - b * f.block_elems, r = 0, rp = blk + 2;
  if (j >= br.c0) {
    rp += br.c0 * f.bits[0] / 8;
    j -= br.c0;
    r = 1;
  }
  const int bits = f.bits[r], cnt = r == 0 ? br.c0 : br.c1;
  if (bits == 8) return {8, blk, rp + j, 0, 0, 0, r};
  if (bits == 4) {
    const int g = j / 32 * 32, half = min(32, cnt - g) / 2, i = j - g;
    return {4, blk, rp + g / 2 + (i < half ? i : i - half), i < half ? 0 : 4, 0, 0, r};
  }
  const int t = j / 16, k = j % 16, tile = rp + t * (bits == 3 ? 6 : 4);
  return {bits, blk, tile + k % 4, 2 * (k / 4), tile + 4 + k / 8, k % 8, r};
}

// The element of `row` at e, in its rotated domain.
__device__ __forceinline__ float DecodeAt(const ElemRef& e, const uint8_t* row, const float (*lv)[16]) {
  if (e.bits == 16) return Half(row + e.byte);
  const float d = Half(row + e.scale);
  const unsigned byte = row[e.byte];
  if (e.bits == 8) return d * static_cast<float>(static_cast<int8_t>(byte));
  unsigned code = (byte >> e.shift) & (e.bits == 4 ? 15u : 3u);
  if (e.bits == 3) code |= ((row[e.hi] >> e.hi_shift) & 1u) << 2;
  return d * lv[e.run][code];
}

template <int Q, int NV>
__global__ void __launch_bounds__(32 * kWarps) CodedAttentionKernel(Params p) {
  extern __shared__ float sq[];  // Q x kd queries in the keys' rotated domain, then Q x vd for the warps' merge
  __shared__ float lvk[2][16], lvv[2][16];
  __shared__ float rq[Q][kMaxRotating][2];  // scale * q at each rotating pair's channels (a, b)
  const int h = blockIdx.x, item = blockIdx.y, z = blockIdx.z;
  if (z >= p.splits) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kd = p.k.dim, vd = p.v.dim;
  const int group = p.n_head / p.k.n_head_kv;
  const int tok0 = item * p.tokens_per_item;
  const int ntok = min(p.tokens_per_item, p.n - tok0);
  const int nq = ntok * group;
  const size_t lh = static_cast<size_t>(p.layer) * p.k.n_head_kv + h;
  for (int idx = threadIdx.x; idx < Q * kd; idx += blockDim.x) {
    const int qi = idx / kd, e = idx % kd;
    float x = 0;
    if (qi < nq) {
      const int tok = tok0 + qi / group, g = qi % group;
      x = p.q[(static_cast<size_t>(tok) * p.n_head + h * group + g) * kd + e];
      if (p.k.weights != nullptr) x /= p.k.weights[lh * kd + e];
    }
    sq[idx] = x * p.scale;
  }
  const int n_rot = p.k.n_rotating;
  const float* rot = p.k.rotating + lh * n_rot * 5;
  for (int idx = threadIdx.x; idx < Q * n_rot; idx += blockDim.x) {
    const int qi = idx / n_rot, j = idx % n_rot;
    float qa = 0, qb = 0;
    if (qi < nq) {
      const float* qrow = p.q + (static_cast<size_t>(tok0 + qi / group) * p.n_head + h * group + qi % group) * kd;
      qa = qrow[static_cast<int>(rot[j * 5])] * p.scale;
      qb = qrow[static_cast<int>(rot[j * 5 + 1])] * p.scale;
    }
    rq[qi][j][0] = qa;
    rq[qi][j][1] = qb;
  }
  if (threadIdx.x < 32) {
    lvk[threadIdx.x / 16][threadIdx.x % 16] = p.k.levels[threadIdx.x / 16][threadIdx.x % 16];
    lvv[threadIdx.x / 16][threadIdx.x % 16] = p.v.levels[threadIdx.x / 16][threadIdx.x % 16];
  }
  __syncthreads();
  kvdev::RotateRows(sq, nq, kd, kd, p.k.rotation, p.k.params + lh * p.k.param_stride, false);

  const int begin = p.shared_part ? 0 : p.shared_tokens;
  const int end = p.shared_part ? p.shared_tokens : p.places.pos[tok0] + 1;
  const int32_t* table = p.places.pages + p.places.first[tok0];
  const uint8_t* base = p.pages.base;
  const size_t k_off = kvdev::RowsOffset(p.pages, false, p.layer, h);
  const size_t v_off = kvdev::RowsOffset(p.pages, true, p.layer, h);
  float m[Q], l[Q], acc[Q][NV];
#pragma unroll
  for (int qi = 0; qi < Q; ++qi) {
    m[qi] = -INFINITY;
    l[qi] = 0;
#pragma unroll
    for (int e = 0; e < NV; ++e) acc[qi][e] = 0;
  }
  ElemRef vref[NV];  // this lane's value elements lane + 32 e
#pragma unroll
  for (int e = 0; e < NV; ++e) vref[e] = MakeElemRef(p.v, min(lane + 32 * e, vd - 1));
  const int pg0 = begin / kPageTokens, n_pages = end > begin ? (end + kPageTokens - 1) / kPageTokens - pg0 : 0;
  const int pg_end = pg0 + (z + 1) * n_pages / p.splits;
  for (int pg = pg0 + z * n_pages / p.splits + warp; pg < pg_end; pg += kWarps) {
    const uint8_t* page = base + static_cast<size_t>(table[pg]) * p.pages.page_bytes;
    const int pos = pg * kPageTokens + lane;
    const bool valid = pos >= begin && pos < end;
    float s[Q];
#pragma unroll
    for (int qi = 0; qi < Q; ++qi) s[qi] = 0;
    if (valid) {
      ScoreRow<Q>(p.k, page + k_off + static_cast<size_t>(lane) * p.pages.k_row_bytes, sq, kd, lvk, s);
      // Rotating key centers: scale * q . u(pos) back into the score (kvquant.h); the angle reduced in double, so
      // that the float sine and cosine are accurate at any position.
      for (int j = 0; j < n_rot; ++j) {
        const double angle = static_cast<double>(pos) * rot[j * 5 + 2];
        const double turns = rint(angle * (0.5 / 3.14159265358979323846));
        float sn, cs;
        sincosf(static_cast<float>(angle - turns * (2 * 3.14159265358979323846)), &sn, &cs);
        const float ca = rot[j * 5 + 3], cb = rot[j * 5 + 4];
        const float ua = ca * cs - cb * sn, ub = ca * sn + cb * cs;
#pragma unroll
        for (int qi = 0; qi < Q; ++qi) s[qi] += rq[qi][j][0] * ua + rq[qi][j][1] * ub;
      }
    }
    float pr[Q];
#pragma unroll
    for (int qi = 0; qi < Q; ++qi) {
      const float mx = WarpMax(valid ? s[qi] : -INFINITY);
      const float m_new = fmaxf(m[qi], mx);
      const float corr = m[qi] == -INFINITY ? 0.f : expf(m[qi] - m_new);
      pr[qi] = valid ? expf(s[qi] - m_new) : 0.f;
      l[qi] = l[qi] * corr + WarpSum(pr[qi]);
      m[qi] = m_new;
#pragma unroll
      for (int e = 0; e < NV; ++e) acc[qi][e] *= corr;
    }
    const uint8_t* vbase = page + v_off;
    const int j_begin = max(0, begin - pg * kPageTokens), j_end = min(kPageTokens, end - pg * kPageTokens);
#pragma unroll 4
    for (int j = j_begin; j < j_end; ++j) {
      float pj[Q];
#pragma unroll
      for (int qi = 0; qi < Q; ++qi) pj[qi] = __shfl_sync(kFull, pr[qi], j);
      const uint8_t* vrow = vbase + static_cast<size_t>(j) * p.pages.v_row_bytes;
#pragma unroll
      for (int e = 0; e < NV; ++e) {
        if (lane + 32 * e < vd) {
          const float vv = DecodeAt(vref[e], vrow, lvv);
#pragma unroll
          for (int qi = 0; qi < Q; ++qi) acc[qi][e] += pj[qi] * vv;
        }
      }
    }
  }
  // The warps' states merged into one in shared memory (each warp's accumulator added in turn, rescaled to the
  // common max), then written as this split's state.
  __shared__ float wm[kWarps][Q], wl[kWarps][Q];
  float* sacc = sq + Q * kd;  // Q x vd
  if (lane == 0) {
#pragma unroll
    for (int qi = 0; qi < Q; ++qi) wm[warp][qi] = m[qi], wl[warp][qi] = l[qi];
  }
  for (int idx = threadIdx.x; idx < Q * vd; idx += blockDim.x) sacc[idx] = 0;
  __syncthreads();
  for (int w = 0; w < kWarps; ++w) {
    if (warp == w) {
#pragma unroll
      for (int qi = 0; qi < Q; ++qi) {
        float mx = -INFINITY;
#pragma unroll
        for (int u = 0; u < kWarps; ++u) mx = fmaxf(mx, wm[u][qi]);
        const float f = m[qi] == -INFINITY ? 0.f : expf(m[qi] - mx);
#pragma unroll
        for (int e = 0; e < NV; ++e)
          if (lane + 32 * e < vd) sacc[qi * vd + lane + 32 * e] += acc[qi][e] * f;
      }
    }
    __syncthreads();
  }
  const int stride = vd + 2;
  for (int idx = threadIdx.x; idx < nq * vd; idx += blockDim.x) {
    const int qi = idx / vd, c = idx % vd;
    const size_t row = static_cast<size_t>(tok0 + qi / group) * p.n_head + h * group + qi % group;
    float* st = p.part + (row * p.parts + p.part_offset + z) * stride;
    st[c] = sacc[idx];
    if (c == 0) {
      float mx = -INFINITY, sum = 0;
      for (int u = 0; u < kWarps; ++u) mx = fmaxf(mx, wm[u][qi]);
      for (int u = 0; u < kWarps; ++u) sum += wm[u][qi] == -INFINITY ? 0.f : wl[u][qi] * expf(wm[u][qi] - mx);
      st[vd] = mx;
      st[vd + 1] = sum;
    }
  }
}

// One block per (query head, token): the token's states merged, rotated back, the value weights and center undone.
__global__ void MergeKernel(const float* part, int parts, int n_head, DeviceRowFormat v, int layer, float* out) {
  __shared__ float o[kMaxCodedDim];
  const int hq = blockIdx.x, i = blockIdx.y;
  const int vd = v.dim, stride = vd + 2;
  const size_t row = static_cast<size_t>(i) * n_head + hq;
  const float* st = part + row * parts * stride;
  float mx = -INFINITY;
#pragma unroll 8
  for (int s = 0; s < parts; ++s) mx = fmaxf(mx, st[s * stride + vd]);
  for (int d = threadIdx.x; d < vd; d += blockDim.x) {
    float sum = 0, a = 0;
#pragma unroll 8
    for (int s = 0; s < parts; ++s) {
      const float m = st[s * stride + vd];
      const float f = m == -INFINITY ? 0.f : expf(m - mx);
      sum += st[s * stride + vd + 1] * f;
      a += st[s * stride + d] * f;
    }
    o[d] = a / sum;
  }
  __syncthreads();
  const size_t lh = static_cast<size_t>(layer) * v.n_head_kv + hq / (n_head / v.n_head_kv);
  kvdev::RotateRows(o, 1, vd, vd, v.rotation, v.params + lh * v.param_stride, true);
  for (int d = threadIdx.x; d < vd; d += blockDim.x) {
    float x = o[d];
    if (v.weights != nullptr) x /= v.weights[lh * vd + d];
    if (v.center != nullptr) x += v.center[lh * vd + d];
    out[row * vd + d] = x;
  }
}

int Pow2AtLeast(int x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

// Items, splits and states of one launch.
struct Plan {
  int tokens_per_item, items, splits;
};
Plan SharedPlan(int n, int n_head_kv, int group) {
  const int t = std::max(1, kSharedQueries / group);
  const int items = (n + t - 1) / t;
  return {t, items, std::clamp(kAttentionBlocks / (n_head_kv * items), 1, kMaxAttentionSplits)};
}

template <int Q>
Status LaunchQ(const Params& p, int items, Stream stream) {
  const dim3 grid(p.k.n_head_kv, items, p.splits);
  const size_t smem = static_cast<size_t>(Q) * (p.k.dim + p.v.dim) * sizeof(float);
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int nv = (p.v.dim + 31) / 32;
  if (nv <= 2) {
    CodedAttentionKernel<Q, 2><<<grid, 32 * kWarps, smem, s>>>(p);
  } else if (nv <= 4) {
    CodedAttentionKernel<Q, 4><<<grid, 32 * kWarps, smem, s>>>(p);
  } else {
    CodedAttentionKernel<Q, 8><<<grid, 32 * kWarps, smem, s>>>(p);
  }
  return CheckLaunch("CodedAttention");
}

Status Launch(const Params& p, int q, int items, Stream stream) {
  switch (q) {
    case 1: return LaunchQ<1>(p, items, stream);
    case 2: return LaunchQ<2>(p, items, stream);
    case 4: return LaunchQ<4>(p, items, stream);
    case 8: return LaunchQ<8>(p, items, stream);
    case 16: return LaunchQ<16>(p, items, stream);
  }
  return Internal("CodedAttention: no kernel for " + std::to_string(q) + " queries per block");
}

}  // namespace

size_t CodedAttentionScratchFloats(int n, int n_head, int n_head_kv, int v_dim, bool shared) {
  if (n <= 0 || n_head_kv <= 0) return 0;
  int parts = AttentionSplits(n_head_kv, n);
  if (shared) parts += SharedPlan(n, n_head_kv, n_head / n_head_kv).splits;
  return static_cast<size_t>(n) * n_head * parts * (v_dim + 2);
}

Status CodedAttention(const float* q, int n_head, float scale, const DeviceRowFormat& k, const DeviceRowFormat& v,
                      const KvPages& pages, int layer, const TokenPlaces& places, int n, int shared_tokens, float* out,
                      float* scratch, Stream stream) {
  if (n <= 0) return Status::Ok();
  const int n_head_kv = k.n_head_kv;
  if (n_head_kv <= 0 || v.n_head_kv != n_head_kv || n_head % n_head_kv != 0)
    return InvalidArgument("CodedAttention: n_head must be a multiple of n_head_kv");
  const int group = n_head / n_head_kv;
  if (group > 8)
    return Unsupported("CUDA attention: " + std::to_string(group) + " query heads per KV head (at most 8)");
  if (k.dim > kMaxCodedDim || v.dim > kMaxCodedDim || (k.n_runs == 0 && k.dim % 8 != 0))
    return Unsupported("CUDA attention on codes: key rows of " + std::to_string(k.dim) + " and value rows of " +
                       std::to_string(v.dim) + " values (at most " + std::to_string(kMaxCodedDim) +
                       ", f16 keys a multiple of 8)");
  if (k.n_rotating > kMaxRotating)
    return Unsupported("CUDA attention on codes: " + std::to_string(k.n_rotating) +
                       " rotating key center pairs (at most " + std::to_string(kMaxRotating) + ")");
  if (shared_tokens < 0 || shared_tokens % kPageTokens != 0)
    return InvalidArgument("CodedAttention: shared_tokens must be a multiple of the page size");
  Params p;
  p.q = q;
  p.n_head = n_head;
  p.scale = scale;
  p.k = k;
  p.v = v;
  p.pages = pages;
  p.layer = layer;
  p.places = places;
  p.n = n;
  p.part = scratch;
  p.shared_tokens = shared_tokens;
  const int tail_splits = AttentionSplits(n_head_kv, n);
  const Plan shared = SharedPlan(n, n_head_kv, group);
  const int shared_splits = shared_tokens > 0 ? shared.splits : 0;
  p.parts = tail_splits + shared_splits;
  if (shared_tokens > 0) {
    p.tokens_per_item = shared.tokens_per_item;
    p.shared_part = true;
    p.splits = shared_splits;
    p.part_offset = tail_splits;
    LR_RETURN_IF_ERROR(Launch(p, Pow2AtLeast(shared.tokens_per_item * group), shared.items, stream));
  }
  p.tokens_per_item = 1;
  p.shared_part = false;
  p.splits = tail_splits;
  p.part_offset = 0;
  LR_RETURN_IF_ERROR(Launch(p, Pow2AtLeast(group), n, stream));
  MergeKernel<<<dim3(n_head, n), 128, 0, static_cast<cudaStream_t>(stream)>>>(scratch, p.parts, n_head, v, layer, out);
  return CheckLaunch("CodedAttentionMerge");
}

}  // namespace lr::cuda
