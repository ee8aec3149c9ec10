// Attention on compressed KV rows (cuda/kv_attention.h).
#include "cuda/kv_attention.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "cuda/device.h"
#include "cuda/kv_device.cuh"
#include "cuda/mma.cuh"
#include "cuda/warp.cuh"

namespace lr::cuda {
namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMaxRows = 64;       // query rows of one block (tokens of an item x the group)
constexpr int kMaxRotating = 8;    // rotating key center pairs (inference/kv_calibration.h keeps at most 8)
constexpr int kCodedBlocks = 512;  // blocks a decode step's launch aims at (the split count follows)
constexpr int kMaxCodedSplits = 64;
constexpr int kMaxStages = 4;  // pages whose raw bytes are in flight or waiting per block

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
  int stages = 2;     // raw page buffers (2..kMaxStages)
  int raw_bytes = 0;  // one page's key and value rows of one head: 32 x (k_row_bytes + v_row_bytes)
};

// Where element c of every row of a format sits: worked out once per thread, then each row's element is two or three
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

// The element of `row` (shared memory) at e, in its rotated domain.
__device__ __forceinline__ float DecodeAt(const ElemRef& e, const uint8_t* row, const float (*lv)[16]) {
  if (e.bits == 16) return Half(row + e.byte);
  const float d = Half(row + e.scale);
  const unsigned byte = row[e.byte];
  if (e.bits == 8) return d * static_cast<float>(static_cast<int8_t>(byte));
  unsigned code = (byte >> e.shift) & (e.bits == 4 ? 15u : 3u);
  if (e.bits == 3) code |= ((row[e.hi] >> e.hi_shift) & 1u) << 2;
  return d * lv[e.run][code];
}

// The columns and rows of a page's 32 x dim elements one thread decodes: columns c0 + 128 j (j < 2, below dim), rows
// r0, r0 + row_step, ... (dims up to 128 that divide 128 share the threads among rows; others leave threads idle).
struct DecodeShare {
  bool active;
  int c0, r0, row_step;
};
__device__ __forceinline__ DecodeShare ShareOf(int dim) {
  const int t = threadIdx.x;
  if (dim >= kThreads) return {true, t, 0, 1};
  const int groups = kThreads / dim;
  return {t < groups * dim, t % dim, t / dim, groups};
}

// Decodes one page's rows [0, 32) of a format (raw: 32 rows of row_bytes in shared memory) into out (row r at out + r
// * stride, floats in the rotated domain); rows outside [lo, hi) are written as zeros (their bytes may be anything).
__device__ __forceinline__ void DecodePage(const DeviceRowFormat& f, const ElemRef* ref, const DecodeShare& sh,
                                           const uint8_t* raw, int lo, int hi, const float (*lv)[16], float* out,
                                           int stride) {
  if (!sh.active) return;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    const int c = sh.c0 + kThreads * j;
    if (c >= f.dim) break;
    for (int r = sh.r0; r < kPageTokens; r += sh.row_step)
      out[r * stride + c] = r >= lo && r < hi ? DecodeAt(ref[j], raw + r * f.row_bytes, lv) : 0.f;
  }
}

__device__ __forceinline__ void WaitCopiesUpTo(int pending) {
  // cp.async.wait_group takes an immediate: the stage counts a launch uses.
  if (pending <= 0) {
    WaitCopies<0>();
  } else if (pending == 1) {
    WaitCopies<1>();
  } else if (pending == 2) {
    WaitCopies<2>();
  } else {
    WaitCopies<3>();
  }
}

// One block per (KV head, item, split): the item's query rows (its tokens x the group, at most 4 QPT) against the
// split's pages. Warp w owns query rows w, w + 4, ... (QPT of them), each lane one row of the page for scores and NC
// value channels (4 lane + 128 j, ...) for the accumulator.
template <int QPT, int NC>
__global__ void __launch_bounds__(kThreads) CodedAttentionKernel(Params p) {
  extern __shared__ __align__(16) float smem[];
  __shared__ float lvk[2][16], lvv[2][16];
  __shared__ float rq[4 * QPT][kMaxRotating][2];  // scale * q at each rotating pair's channels (a, b)
  __shared__ int tfirst[kMaxRows], tend[kMaxRows];
  constexpr int M = 4 * QPT;
  const int h = blockIdx.x, item = blockIdx.y, z = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kd = p.k.dim, vd = p.v.dim;
  const int group = p.n_head / p.k.n_head_kv;
  const int tok0 = item * p.tokens_per_item;
  const int ntok = min(p.tokens_per_item, p.n - tok0);
  const int nq = ntok * group;
  const size_t lh = static_cast<size_t>(p.layer) * p.k.n_head_kv + h;
  const int ks = kd + 4, vs = vd + 4;  // decoded rows' strides (float4-aligned, conflict-free by quarter warps)
  float* sq = smem;                    // M x kd queries in the keys' rotated domain
  float* kf = sq + M * kd;             // 32 x ks decoded keys
  float* vf = kf + kPageTokens * ks;   // 32 x vs decoded values
  float* ps = vf + kPageTokens * vs;   // per warp QPT x 32 softmax weights
  uint8_t* raw = reinterpret_cast<uint8_t*>(ps + kWarps * QPT * kPageTokens);

  for (int idx = threadIdx.x; idx < M * kd; idx += blockDim.x) {
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
  for (int idx = threadIdx.x; idx < M * n_rot; idx += blockDim.x) {
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
  for (int t = threadIdx.x; t < kMaxRows; t += blockDim.x) {
    const bool valid = t < ntok;
    tfirst[t] = !valid ? -1 : p.shared_part ? p.places.first[tok0] : p.places.first[tok0 + t];
    tend[t] = !valid ? 0 : p.shared_part ? p.shared_tokens : p.places.pos[tok0 + t] + 1;
  }
  __syncthreads();
  kvdev::RotateRows(sq, nq, kd, kd, p.k.rotation, p.k.params + lh * p.k.param_stride, false);

  const DecodeShare kshare = ShareOf(kd), vshare = ShareOf(vd);
  ElemRef kref[2], vref[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    kref[j] = MakeElemRef(p.k, min(kshare.c0 + kThreads * j, kd - 1));
    vref[j] = MakeElemRef(p.v, min(vshare.c0 + kThreads * j, vd - 1));
  }
  const int begin = p.shared_part ? 0 : p.shared_tokens;
  const uint8_t* base = p.pages.base;
  const size_t k_off = kvdev::RowsOffset(p.pages, false, p.layer, h);
  const size_t v_off = kvdev::RowsOffset(p.pages, true, p.layer, h);
  const int k_chunk = kPageTokens * p.pages.k_row_bytes, v_chunk = kPageTokens * p.pages.v_row_bytes;

  float m[QPT], l[QPT], acc[QPT][NC];
#pragma unroll
  for (int i = 0; i < QPT; ++i) {
    m[i] = -INFINITY;
    l[i] = 0;  // this lane's rows' share; summed over the warp at the end
#pragma unroll
    for (int c = 0; c < NC; ++c) acc[i][c] = 0;
  }
  // Passes: the item's tokens of one page table at a time (a prefill item may straddle two sequences).
  unsigned long long done = 0;
  for (;;) {
    int t0 = 0;
    while (t0 < ntok && ((done >> t0) & 1ull)) ++t0;
    if (t0 >= ntok) break;
    const int pick = tfirst[t0];
    int pass_end = begin;
    for (int t = t0; t < ntok; ++t) {
      if (tfirst[t] == pick) {
        done |= 1ull << t;
        pass_end = max(pass_end, tend[t]);
      }
    }
    int hi[QPT];  // each query row's end in this pass (begin: not in this pass)
#pragma unroll
    for (int i = 0; i < QPT; ++i) {
      const int qi = warp + 4 * i, t = qi / group;
      hi[i] = qi < nq && tfirst[t] == pick ? tend[t] : begin;
    }
    const int32_t* table = p.places.pages + pick;
    const int pg0 = begin / kPageTokens;
    const int n_pages = pass_end > begin ? (pass_end + kPageTokens - 1) / kPageTokens - pg0 : 0;
    const int first_pg = pg0 + z * n_pages / p.splits, end_pg = pg0 + (z + 1) * n_pages / p.splits;
    const int count = end_pg - first_pg;
    auto issue = [&](int it) {
      if (it < count) {
        const uint8_t* page = base + static_cast<size_t>(table[first_pg + it]) * p.pages.page_bytes;
        uint8_t* dst = raw + static_cast<size_t>(it % p.stages) * p.raw_bytes;
        for (int o = threadIdx.x * 16; o < k_chunk; o += kThreads * 16)
          CopyAsync16(SharedAddress(dst + o), page + k_off + o, true);
        for (int o = threadIdx.x * 16; o < v_chunk; o += kThreads * 16)
          CopyAsync16(SharedAddress(dst + k_chunk + o), page + v_off + o, true);
      }
      CommitCopies();
    };
    for (int it = 0; it < p.stages - 1; ++it) issue(it);
    for (int it = 0; it < count; ++it) {
      issue(it + p.stages - 1);
      WaitCopiesUpTo(p.stages - 1);
      __syncthreads();
      const int pg = first_pg + it, row0 = pg * kPageTokens;
      const uint8_t* src = raw + static_cast<size_t>(it % p.stages) * p.raw_bytes;
      const int lo = max(0, begin - row0), hi_row = min(kPageTokens, pass_end - row0);
      DecodePage(p.k, kref, kshare, src, lo, hi_row, lvk, kf, ks);
      DecodePage(p.v, vref, vshare, src + k_chunk, lo, hi_row, lvv, vf, vs);
      __syncthreads();
      // Scores of this lane's row for the warp's query rows.
      const int pos = row0 + lane;
      float s[QPT];
#pragma unroll
      for (int i = 0; i < QPT; ++i) s[i] = 0;
      const float* krow = kf + lane * ks;
      for (int c = 0; c < kd; c += 4) {
        const float4 kv = *reinterpret_cast<const float4*>(krow + c);
#pragma unroll
        for (int i = 0; i < QPT; ++i) {
          const float4 qv = *reinterpret_cast<const float4*>(sq + (warp + 4 * i) * kd + c);
          s[i] += qv.x * kv.x + qv.y * kv.y + qv.z * kv.z + qv.w * kv.w;
        }
      }
      if (n_rot > 0 && pos >= begin && pos < pass_end) {
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
          for (int i = 0; i < QPT; ++i) s[i] += rq[warp + 4 * i][j][0] * ua + rq[warp + 4 * i][j][1] * ub;
        }
      }
      float* wp = ps + warp * QPT * kPageTokens;
#pragma unroll
      for (int i = 0; i < QPT; ++i) {
        const bool valid = pos >= begin && pos < hi[i];
        const float mx = WarpMax(valid ? s[i] : -INFINITY);
        const float m_new = fmaxf(m[i], mx);
        const float corr = m_new == -INFINITY || m[i] == -INFINITY ? 0.f : expf(m[i] - m_new);
        const float pr = valid ? expf(s[i] - m_new) : 0.f;
        l[i] = l[i] * corr + pr;
        m[i] = m_new;
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[i][c] *= corr;
        wp[i * kPageTokens + lane] = pr;
      }
      __syncwarp();
      const int j_end = min(kPageTokens, pass_end - row0);
      for (int j0 = max(0, begin - row0) & ~3; j0 < j_end; j0 += 4) {
        float4 pw[QPT];
#pragma unroll
        for (int i = 0; i < QPT; ++i) pw[i] = *reinterpret_cast<const float4*>(wp + i * kPageTokens + j0);
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) {
#pragma unroll
          for (int g = 0; g < NC / 4; ++g) {
            const int ch = 4 * lane + kThreads * g;
            if (ch < vd) {
              const float4 v4 = *reinterpret_cast<const float4*>(vf + (j0 + jj) * vs + ch);
#pragma unroll
              for (int i = 0; i < QPT; ++i) {
                const float w = jj == 0 ? pw[i].x : jj == 1 ? pw[i].y : jj == 2 ? pw[i].z : pw[i].w;
                acc[i][4 * g] += w * v4.x;
                acc[i][4 * g + 1] += w * v4.y;
                acc[i][4 * g + 2] += w * v4.z;
                acc[i][4 * g + 3] += w * v4.w;
              }
            }
          }
        }
      }
      __syncthreads();  // the decoded rows and the weights are rewritten by the next page
    }
    WaitCopies<0>();
  }
  // This split's state of each query row: unnormalised output, max, sum.
  const int stride = vd + 2;
#pragma unroll
  for (int i = 0; i < QPT; ++i) {
    const float sum = WarpSum(l[i]);
    const int qi = warp + 4 * i;
    if (qi >= nq) continue;
    const size_t row = static_cast<size_t>(tok0 + qi / group) * p.n_head + h * group + qi % group;
    float* st = p.part + (row * p.parts + p.part_offset + z) * stride;
#pragma unroll
    for (int g = 0; g < NC / 4; ++g) {
      const int ch = 4 * lane + kThreads * g;
      if (ch < vd) {
#pragma unroll
        for (int c = 0; c < 4; ++c) st[ch + c] = acc[i][4 * g + c];
      }
    }
    if (lane == 0) {
      st[vd] = m[i];
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

// Query rows per block: 64 for value rows up to 128 wide, else 32 (the accumulators' registers).
int MaxRows(int v_dim) { return v_dim <= 128 ? kMaxRows : kMaxRows / 2; }

// Items (blocks of consecutive tokens), splits of each item's pages, and query rows per block of one launch.
struct Plan {
  int tokens_per_item, items, splits, rows;
};
// Decode steps (n <= kMaxMatVecTokens): one token per item, the splits filling the device (a function of n, so that
// a captured graph fits every depth). Prefill: as many tokens per item as a block takes, one split. Shared prefix:
// all tokens' rows in as few items as a block takes, split to fill the device.
Plan MakePlan(int n, int n_head_kv, int group, int v_dim, bool shared) {
  const int per_block = std::max(1, MaxRows(v_dim) / group);
  Plan p;
  p.tokens_per_item = shared || n > kMaxMatVecTokens ? std::min(n, per_block) : 1;
  p.items = (n + p.tokens_per_item - 1) / p.tokens_per_item;
  p.splits = !shared && n > kMaxMatVecTokens ? 1 : std::clamp(kCodedBlocks / (n_head_kv * p.items), 1, kMaxCodedSplits);
  p.rows = p.tokens_per_item * group;
  return p;
}

int Pow2AtLeast(int x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

template <int QPT, int NC>
Status LaunchQ(Params p, int items, Stream stream) {
  const int fixed =
      4 * (4 * QPT * p.k.dim + kPageTokens * (p.k.dim + 4) + kPageTokens * (p.v.dim + 4) + kWarps * QPT * kPageTokens);
  int device = 0, max_smem = 0;
  LR_RETURN_IF_ERROR(CheckCuda(cudaGetDevice(&device), "cudaGetDevice"));
  LR_RETURN_IF_ERROR(
      CheckCuda(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "smem"));
  max_smem -= 8 * 1024;  // the kernel's static shared memory
  // Up to kMaxStages pages in flight while the whole block stays under a quarter of an SM's memory where it can.
  p.stages = std::clamp((std::max(56 * 1024, fixed + 2 * p.raw_bytes) - fixed) / p.raw_bytes, 2, kMaxStages);
  const int smem = fixed + p.stages * p.raw_bytes;
  if (smem > max_smem)
    return Unsupported("CUDA attention on codes: rows of " + std::to_string(p.k.dim) + " / " + std::to_string(p.v.dim) +
                       " values need " + std::to_string(smem) + " bytes of shared memory per block");
  static const cudaError_t opted =
      cudaFuncSetAttribute(CodedAttentionKernel<QPT, NC>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
  LR_RETURN_IF_ERROR(CheckCuda(opted, "cudaFuncSetAttribute (coded attention)"));
  const dim3 grid(p.k.n_head_kv, items, p.splits);
  CodedAttentionKernel<QPT, NC><<<grid, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(p);
  return CheckLaunch("CodedAttention");
}

Status Launch(const Params& p, int rows, int items, Stream stream) {
  const int qpt = Pow2AtLeast((rows + kWarps - 1) / kWarps);
  if (p.v.dim <= 128) {
    switch (qpt) {
      case 1: return LaunchQ<1, 4>(p, items, stream);
      case 2: return LaunchQ<2, 4>(p, items, stream);
      case 4: return LaunchQ<4, 4>(p, items, stream);
      case 8: return LaunchQ<8, 4>(p, items, stream);
      case 16: return LaunchQ<16, 4>(p, items, stream);
    }
  } else {
    switch (qpt) {
      case 1: return LaunchQ<1, 8>(p, items, stream);
      case 2: return LaunchQ<2, 8>(p, items, stream);
      case 4: return LaunchQ<4, 8>(p, items, stream);
      case 8: return LaunchQ<8, 8>(p, items, stream);
    }
  }
  return Internal("CodedAttention: no kernel for " + std::to_string(rows) + " query rows per block");
}

}  // namespace

size_t CodedAttentionScratchFloats(int n, int n_head, int n_head_kv, int v_dim, bool shared) {
  if (n <= 0 || n_head_kv <= 0) return 0;
  const int group = n_head / n_head_kv;
  int parts = MakePlan(n, n_head_kv, group, v_dim, false).splits;
  if (shared) parts += MakePlan(n, n_head_kv, group, v_dim, true).splits;
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
  if (k.dim > kMaxCodedDim || v.dim > kMaxCodedDim || k.dim % 4 != 0 || v.dim % 4 != 0)
    return Unsupported("CUDA attention on codes: key rows of " + std::to_string(k.dim) + " and value rows of " +
                       std::to_string(v.dim) + " values (expected multiples of 4, at most " +
                       std::to_string(kMaxCodedDim) + ")");
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
  p.raw_bytes = kPageTokens * (pages.k_row_bytes + pages.v_row_bytes);
  const Plan own = MakePlan(n, n_head_kv, group, v.dim, false);
  const Plan shared = MakePlan(n, n_head_kv, group, v.dim, true);
  const int shared_splits = shared_tokens > 0 ? shared.splits : 0;
  p.parts = own.splits + shared_splits;
  if (shared_tokens > 0) {
    p.tokens_per_item = shared.tokens_per_item;
    p.shared_part = true;
    p.splits = shared.splits;
    p.part_offset = own.splits;
    LR_RETURN_IF_ERROR(Launch(p, shared.rows, shared.items, stream));
  }
  p.tokens_per_item = own.tokens_per_item;
  p.shared_part = false;
  p.splits = own.splits;
  p.part_offset = 0;
  LR_RETURN_IF_ERROR(Launch(p, own.rows, own.items, stream));
  MergeKernel<<<dim3(n_head, n), 128, 0, static_cast<cudaStream_t>(stream)>>>(scratch, p.parts, n_head, v, layer, out);
  return CheckLaunch("CodedAttentionMerge");
}

}  // namespace lr::cuda
