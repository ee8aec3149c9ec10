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

// Where the 8 elements c .. c + 7 (c a multiple of 8) of every row of a format sit: worked out once per thread, then
// each row's unit is a few 16-bit loads (Decode8). bits 16: f16 rows, the values at `byte` (16-byte aligned); else
// the block's scale at `scale` and the codes of run `run`: 8: 8 int8 codes at byte; 4: the low (sel 0) or high (sel
// 4) nibbles of the 8 bytes at byte; 3 and 2: half `sel` of the 16-code tile at byte (low bits of code k at bit
// 8 (k % 4) + 2 (k / 4) of the tile's first word, a 3-bit code's high bit at bit k % 8 of byte 4 + k / 8).
struct UnitRef {
  int bits, scale, byte, sel, run;
};

__device__ __forceinline__ UnitRef MakeUnitRef(const DeviceRowFormat& f, int c) {
  if (f.n_runs == 0) return {16, 0, 2 * c, 0, 0};
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
  if (bits == 8) return {8, blk, rp + j, 0, r};
  if (bits == 4) {
    const int g = j / 32 * 32, half = min(32, cnt - g) / 2, i = j - g;
    return {4, blk, rp + g / 2 + (i < half ? i : i - half), i < half ? 0 : 4, r};
  }
  return {bits, blk, rp + j / 16 * (bits == 3 ? 6 : 4), j % 16 / 8, r};
}

__device__ __forceinline__ uint32_t Load16x2(const uint8_t* p) {  // 4 bytes at a 2-byte aligned address
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | static_cast<uint32_t>(h[1]) << 16;
}

// The 8 elements of `row` (shared memory) at u, in their rotated domain.
__device__ __forceinline__ void Decode8(const UnitRef& u, const uint8_t* row, const float (*lv)[16], float* x) {
  if (u.bits == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(row + u.byte);
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[e]));
      x[2 * e] = f.x, x[2 * e + 1] = f.y;
    }
    return;
  }
  const float d = Half(row + u.scale);
  const float* L = lv[u.run];
  if (u.bits == 8 || u.bits == 4) {
    const uint32_t w0 = Load16x2(row + u.byte), w1 = Load16x2(row + u.byte + 4);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const uint32_t byte = ((e < 4 ? w0 : w1) >> (8 * (e % 4))) & 0xffu;
      x[e] = u.bits == 8 ? d * static_cast<float>(static_cast<int8_t>(byte)) : d * L[(byte >> u.sel) & 15u];
    }
    return;
  }
  const uint32_t w = Load16x2(row + u.byte);
  const uint32_t hi = u.bits == 3 ? row[u.byte + 4 + u.sel] : 0u;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const uint32_t code = ((w >> (8 * (e % 4) + 2 * (2 * u.sel + e / 4))) & 3u) | ((hi >> e) & 1u) << 2;
    x[e] = d * L[code];
  }
}

// Decodes one page's rows [0, 32) of a format (raw: 32 rows of row_bytes in shared memory), calling store(r, c, x)
// with each unit's 8 elements x (elements c .. c + 7 of row r, in the rotated domain); rows outside [lo, hi) are
// stored as zeros (their bytes may be anything). units: the format's UnitRef of each unit column (shared memory).
// f16 rows go by rows (a row's units on consecutive threads: consecutive 16-byte loads); coded rows by columns (lane
// r takes row r, warp w unit columns w, w + 4, ...), so that a warp's lanes decode the same kind of codes.
template <typename Store>
__device__ __forceinline__ void DecodePage(const DeviceRowFormat& f, const UnitRef* units, const uint8_t* raw, int lo,
                                           int hi, const float (*lv)[16], Store store) {
  const int n_units = f.dim / 8, t = threadIdx.x;
  float x[8];
  if (f.n_runs == 0) {
    const int groups = kThreads / n_units, u = t % n_units;
    if (t >= groups * n_units) return;
    for (int r = t / n_units; r < kPageTokens; r += groups) {
      if (r >= lo && r < hi) {
        Decode8(units[u], raw + r * f.row_bytes, lv, x);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = 0;
      }
      store(r, 8 * u, x);
    }
    return;
  }
  const int r = t % 32;
  const bool in = r >= lo && r < hi;
  for (int u = t / 32; u < n_units; u += kWarps) {
    if (in) {
      Decode8(units[u], raw + r * f.row_bytes, lv, x);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = 0;
    }
    store(r, 8 * u, x);
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

// x as the sum of two f16 pairs (hi + lo: about 22 bits of the float's 24), packed for the mma's fragments.
__device__ __forceinline__ void SplitPair(float2 x, uint32_t& hi, uint32_t& lo) {
  const __half2 h = __floats2half2_rn(x.x, x.y);
  const float2 back = __half22float2(h);
  const __half2 l = __floats2half2_rn(x.x - back.x, x.y - back.y);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = *reinterpret_cast<const uint32_t*>(&l);
}
__device__ __forceinline__ uint32_t Load32(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }

// c += a * b in about f32 precision from f16 halves: hi * hi + lo * hi + hi * lo.
__device__ __forceinline__ void Mma3(float* c, const uint32_t* ah, const uint32_t* al, const uint32_t* bh,
                                     const uint32_t* bl) {
  Mma16816(c, ah, bh);
  Mma16816(c, al, bh);
  Mma16816(c, ah, bl);
}

// Shared memory of a block past the static arrays, in bytes from its start: the queries (floats), the decoded key
// and value rows, the softmax weights (SIMT) or the rotating centers' terms of the page's positions (mma), then the
// raw page buffers.
struct Layout {
  int q_stride, k_stride, v_stride;  // floats (SIMT, mma queries) or halves (mma keys and values); rows 16-byte
                                     // aligned, and 4 banks apart so that 8 rows' 16-byte pieces are conflict-free
  int k, v, w, raw, fixed;           // byte offsets; fixed: the bytes before the raw page buffers
};
__host__ __device__ inline Layout MakeLayout(bool mma, int qpt, int kd, int vd) {
  Layout l;
  if (mma) {
    l.q_stride = kd + 8, l.k_stride = kd + 8, l.v_stride = vd + 8;
    l.k = 4 * 4 * qpt * l.q_stride;
    l.v = l.k + 2 * 2 * kPageTokens * l.k_stride;  // hi and lo halves
    l.w = l.v + 2 * 2 * kPageTokens * l.v_stride;
    l.raw = l.w + 4 * kPageTokens * kMaxRotating * 2;
  } else {
    l.q_stride = kd, l.k_stride = kd + 4, l.v_stride = vd + 4;
    l.k = 4 * 4 * qpt * l.q_stride;
    l.v = l.k + 4 * kPageTokens * l.k_stride;
    l.w = l.v + 4 * kPageTokens * l.v_stride;
    l.raw = l.w + 4 * kWarps * qpt * kPageTokens;
  }
  l.fixed = l.raw;
  return l;
}

// One block per (KV head, item, split): the item's query rows (its tokens x the group, at most 4 QPT) against the
// split's pages, each page's raw rows copied into shared memory ahead and decoded there once.
//   SIMT (kMma false): warp w owns query rows w, w + 4, ... (QPT of them); each lane scores one row of the page in
//     floats and accumulates NC value channels (4 lane + 128 j, ...).
//   mma (kMma true, QPT 16, value rows up to 128): warp w owns query rows 16 w .. 16 w + 15; scores and the weighted
//     values on the tensor cores (m16n8k16), each operand split into f16 hi + lo parts and multiplied as hi hi + lo hi
//     + hi lo, so that the products keep about f32 precision.
template <int QPT, int NC, bool kMma>
__global__ void __launch_bounds__(kThreads) CodedAttentionKernel(Params p) {
  extern __shared__ __align__(16) uint8_t smem[];
  __shared__ float lvk[2][16], lvv[2][16];
  __shared__ float rq[4 * QPT][kMaxRotating][2];  // scale * q at each rotating pair's channels (a, b)
  __shared__ int tfirst[kMaxRows], tend[kMaxRows];
  __shared__ UnitRef kunits[kMaxCodedDim / 8], vunits[kMaxCodedDim / 8];
  constexpr int M = 4 * QPT;
  const int h = blockIdx.x, item = blockIdx.y, z = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int kd = p.k.dim, vd = p.v.dim;
  const int group = p.n_head / p.k.n_head_kv;
  const int tok0 = item * p.tokens_per_item;
  const int ntok = min(p.tokens_per_item, p.n - tok0);
  const int nq = ntok * group;
  const size_t lh = static_cast<size_t>(p.layer) * p.k.n_head_kv + h;
  const Layout lay = MakeLayout(kMma, QPT, kd, vd);
  float* sq = reinterpret_cast<float*>(smem);  // M rows of queries in the keys' rotated domain
  uint8_t* raw = smem + lay.raw;

  for (int idx = threadIdx.x; idx < M * kd; idx += blockDim.x) {
    const int qi = idx / kd, e = idx % kd;
    float x = 0;
    if (qi < nq) {
      const int tok = tok0 + qi / group, g = qi % group;
      x = p.q[(static_cast<size_t>(tok) * p.n_head + h * group + g) * kd + e];
      if (p.k.weights != nullptr) x /= p.k.weights[lh * kd + e];
    }
    sq[qi * lay.q_stride + e] = x * p.scale;
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
  for (int u = threadIdx.x; u < kMaxCodedDim / 8; u += blockDim.x) {
    if (8 * u < kd) kunits[u] = MakeUnitRef(p.k, 8 * u);
    if (8 * u < vd) vunits[u] = MakeUnitRef(p.v, 8 * u);
  }
  for (int t = threadIdx.x; t < kMaxRows; t += blockDim.x) {
    const bool valid = t < ntok;
    tfirst[t] = !valid ? -1 : p.shared_part ? p.places.first[tok0] : p.places.first[tok0 + t];
    tend[t] = !valid ? 0 : p.shared_part ? p.shared_tokens : p.places.pos[tok0 + t] + 1;
  }
  __syncthreads();
  kvdev::RotateRows(sq, nq, lay.q_stride, kd, p.k.rotation, p.k.params + lh * p.k.param_stride, false);

  const int begin = p.shared_part ? 0 : p.shared_tokens;
  const uint8_t* base = p.pages.base;
  const size_t k_off = kvdev::RowsOffset(p.pages, false, p.layer, h);
  const size_t v_off = kvdev::RowsOffset(p.pages, true, p.layer, h);
  const int k_chunk = kPageTokens * p.pages.k_row_bytes, v_chunk = kPageTokens * p.pages.v_row_bytes;

  // Per-thread state. SIMT: query rows warp + 4 i, channels 4 lane + 128 g. mma: rows 16 warp + quad (i = 0) and + 8
  // (i = 1), the C fragments of value tiles 8 j (acc[0][4 j ..]).
  constexpr int RS = kMma ? 2 : QPT;      // query rows per thread
  constexpr int AC = kMma ? 4 * 16 : NC;  // accumulators per row (mma: all rows' C fragments in acc[0])
  float m[RS], l[RS], acc[kMma ? 1 : QPT][AC];
#pragma unroll
  for (int i = 0; i < RS; ++i) {
    m[i] = -INFINITY;
    l[i] = 0;  // this lane's share; summed over the warp (SIMT) or the quad (mma) at the end
  }
#pragma unroll
  for (int i = 0; i < (kMma ? 1 : QPT); ++i)
#pragma unroll
    for (int c = 0; c < AC; ++c) acc[i][c] = 0;
  const int quad = lane / 4, tq = lane % 4;
  auto row_of = [&](int i) { return kMma ? 16 * warp + quad + 8 * i : warp + 4 * i; };

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
    int hi[RS];  // each query row's end in this pass (begin: not in this pass)
#pragma unroll
    for (int i = 0; i < RS; ++i) {
      const int qi = row_of(i);
      hi[i] = qi < nq && tfirst[qi / group] == pick ? tend[qi / group] : begin;
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
      if constexpr (kMma) {
        __half* kh = reinterpret_cast<__half*>(smem + lay.k);
        __half* kl = kh + kPageTokens * lay.k_stride;
        __half* vh = reinterpret_cast<__half*>(smem + lay.v);
        __half* vl = vh + kPageTokens * lay.v_stride;
        float* u = reinterpret_cast<float*>(smem + lay.w);
        auto store = [](__half* hi, __half* lo, const float* x) {  // 8 floats as hi and lo halves
          uint32_t h[4], l[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) SplitPair(make_float2(x[2 * e], x[2 * e + 1]), h[e], l[e]);
          *reinterpret_cast<uint4*>(hi) = make_uint4(h[0], h[1], h[2], h[3]);
          *reinterpret_cast<uint4*>(lo) = make_uint4(l[0], l[1], l[2], l[3]);
        };
        DecodePage(p.k, kunits, src, lo, hi_row, lvk, [&](int r, int c, const float* x) {
          store(kh + r * lay.k_stride + c, kl + r * lay.k_stride + c, x);
        });
        DecodePage(p.v, vunits, src + k_chunk, lo, hi_row, lvv, [&](int r, int c, const float* x) {
          store(vh + r * lay.v_stride + c, vl + r * lay.v_stride + c, x);
        });
        if (n_rot > 0 && threadIdx.x < kPageTokens) {
          // Rotating key centers: u(pos) of each position of the page, for scale * q . u(pos) in the scores
          // (kvquant.h); the angle reduced in double, so that the float sine and cosine are accurate at any position.
          const int pos = row0 + threadIdx.x;
          for (int j = 0; j < n_rot; ++j) {
            float ua = 0, ub = 0;
            if (pos >= begin && pos < pass_end) {
              const double angle = static_cast<double>(pos) * rot[j * 5 + 2];
              const double turns = rint(angle * (0.5 / 3.14159265358979323846));
              float sn, cs;
              sincosf(static_cast<float>(angle - turns * (2 * 3.14159265358979323846)), &sn, &cs);
              const float ca = rot[j * 5 + 3], cb = rot[j * 5 + 4];
              ua = ca * cs - cb * sn, ub = ca * sn + cb * cs;
            }
            u[(threadIdx.x * kMaxRotating + j) * 2] = ua;
            u[(threadIdx.x * kMaxRotating + j) * 2 + 1] = ub;
          }
        }
        __syncthreads();
        // S = Q K^T for the warp's 16 rows and the page's 32 positions (4 tiles of 8): s[t][0..1] row quad, positions
        // 8 t + 2 tq + {0, 1}; s[t][2..3] row quad + 8.
        float s[4][4];
#pragma unroll
        for (int t = 0; t < 4; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0;
        const float* q0 = sq + (16 * warp + quad) * lay.q_stride + 2 * tq;
        for (int ks = 0; ks < kd; ks += 16) {
          uint32_t ah[4], al[4];
          SplitPair(*reinterpret_cast<const float2*>(q0 + ks), ah[0], al[0]);
          SplitPair(*reinterpret_cast<const float2*>(q0 + 8 * lay.q_stride + ks), ah[1], al[1]);
          SplitPair(*reinterpret_cast<const float2*>(q0 + ks + 8), ah[2], al[2]);
          SplitPair(*reinterpret_cast<const float2*>(q0 + 8 * lay.q_stride + ks + 8), ah[3], al[3]);
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const int off = (8 * t + quad) * lay.k_stride + ks + 2 * tq;
            const uint32_t bh[2] = {Load32(kh + off), Load32(kh + off + 8)};
            const uint32_t bl[2] = {Load32(kl + off), Load32(kl + off + 8)};
            Mma3(s[t], ah, al, bh, bl);
          }
        }
        if (n_rot > 0) {
#pragma unroll
          for (int t = 0; t < 4; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int r = row_of(e / 2), key = 8 * t + 2 * tq + e % 2;
              float add = 0;
              for (int j = 0; j < n_rot; ++j)
                add +=
                    rq[r][j][0] * u[(key * kMaxRotating + j) * 2] + rq[r][j][1] * u[(key * kMaxRotating + j) * 2 + 1];
              s[t][e] += add;
            }
          }
        }
        // Online softmax of rows quad and quad + 8 (their 32 positions spread over the quad's 4 lanes).
        float corr[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          float mx = -INFINITY;
#pragma unroll
          for (int t = 0; t < 4; ++t) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int pos = row0 + 8 * t + 2 * tq + e;
              const bool valid = pos >= begin && pos < hi[i];
              s[t][2 * i + e] = valid ? s[t][2 * i + e] : -INFINITY;
              mx = fmaxf(mx, s[t][2 * i + e]);
            }
          }
          mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
          mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 2));
          const float m_new = fmaxf(m[i], mx);
          corr[i] = m_new == -INFINITY || m[i] == -INFINITY ? 0.f : expf(m[i] - m_new);
          float sum = 0;
#pragma unroll
          for (int t = 0; t < 4; ++t) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float x = s[t][2 * i + e];
              const float pr = x == -INFINITY ? 0.f : expf(x - m_new);
              s[t][2 * i + e] = pr;
              sum += pr;
            }
          }
          l[i] = l[i] * corr[i] + sum;
          m[i] = m_new;
        }
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          acc[0][4 * j] *= corr[0], acc[0][4 * j + 1] *= corr[0];
          acc[0][4 * j + 2] *= corr[1], acc[0][4 * j + 3] *= corr[1];
        }
        // O += P V: P (16 rows x 32 positions) from the score fragments as A, two k steps of 16 positions.
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          uint32_t ph[4], pl[4];
          SplitPair(make_float2(s[2 * kk][0], s[2 * kk][1]), ph[0], pl[0]);
          SplitPair(make_float2(s[2 * kk][2], s[2 * kk][3]), ph[1], pl[1]);
          SplitPair(make_float2(s[2 * kk + 1][0], s[2 * kk + 1][1]), ph[2], pl[2]);
          SplitPair(make_float2(s[2 * kk + 1][2], s[2 * kk + 1][3]), ph[3], pl[3]);
          // B fragments of two value tiles (16 channels) at a time, transposed out of the row-major rows: lanes 0-7
          // address positions 16 kk + 0..7, lanes 8-15 positions + 8, lanes 16-31 the same for channels + 8.
          const int key = 16 * kk + lane % 8 + 8 * (lane / 8 % 2), ch = 8 * (lane / 16);
#pragma unroll
          for (int j = 0; j < 16; j += 2) {
            if (8 * j < vd) {
              uint32_t bh[4], bl[4];
              LoadMatrixX4T(SharedAddress(vh + key * lay.v_stride + 8 * j + ch), bh);
              LoadMatrixX4T(SharedAddress(vl + key * lay.v_stride + 8 * j + ch), bl);
              Mma3(&acc[0][4 * j], ph, pl, bh, bl);
              Mma3(&acc[0][4 * j + 4], ph, pl, bh + 2, bl + 2);
            }
          }
        }
      } else {
        float* kf = reinterpret_cast<float*>(smem + lay.k);
        float* vf = reinterpret_cast<float*>(smem + lay.v);
        float* ps = reinterpret_cast<float*>(smem + lay.w);
        const int ks = lay.k_stride, vs = lay.v_stride;
        auto store = [](float* at, const float* x) {
          *reinterpret_cast<float4*>(at) = make_float4(x[0], x[1], x[2], x[3]);
          *reinterpret_cast<float4*>(at + 4) = make_float4(x[4], x[5], x[6], x[7]);
        };
        DecodePage(p.k, kunits, src, lo, hi_row, lvk, [&](int r, int c, const float* x) { store(kf + r * ks + c, x); });
        DecodePage(p.v, vunits, src + k_chunk, lo, hi_row, lvv,
                   [&](int r, int c, const float* x) { store(vf + r * vs + c, x); });
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
          // Rotating key centers, as in the mma branch.
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
      }
      __syncthreads();  // the decoded rows and the weights are rewritten by the next page
    }
    WaitCopies<0>();
  }
  // This split's state of each query row: unnormalised output, max, sum.
  const int stride = vd + 2;
#pragma unroll
  for (int i = 0; i < RS; ++i) {
    float sum = l[i];
    if (kMma) {
      sum += __shfl_xor_sync(kFull, sum, 1);
      sum += __shfl_xor_sync(kFull, sum, 2);
    } else {
      sum = WarpSum(sum);
    }
    const int qi = row_of(i);
    if (qi >= nq) continue;
    const size_t row = static_cast<size_t>(tok0 + qi / group) * p.n_head + h * group + qi % group;
    float* st = p.part + (row * p.parts + p.part_offset + z) * stride;
    if constexpr (kMma) {
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        if (8 * j < vd) {
          st[8 * j + 2 * tq] = acc[0][4 * j + 2 * i];
          st[8 * j + 2 * tq + 1] = acc[0][4 * j + 2 * i + 1];
        }
      }
      if (tq == 0) st[vd] = m[i], st[vd + 1] = sum;
    } else {
#pragma unroll
      for (int g = 0; g < NC / 4; ++g) {
        const int ch = 4 * lane + kThreads * g;
        if (ch < vd) {
#pragma unroll
          for (int c = 0; c < 4; ++c) st[ch + c] = acc[i][4 * g + c];
        }
      }
      if (lane == 0) st[vd] = m[i], st[vd + 1] = sum;
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

template <int QPT, int NC, bool kMma>
Status LaunchQ(Params p, int items, Stream stream) {
  const int fixed = MakeLayout(kMma, QPT, p.k.dim, p.v.dim).fixed;
  // The device's shared memory per block less the kernel's static arrays (the process uses one device).
  static const int max_smem = [] {
    int device = 0, bytes = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
      return 0;
    return bytes - 8 * 1024;
  }();
  // Up to kMaxStages pages in flight, within about 100 KB per block (two blocks per SM) where the rows allow.
  p.stages = std::clamp((100 * 1024 - fixed) / p.raw_bytes, 2, kMaxStages);
  const int smem = fixed + p.stages * p.raw_bytes;
  if (smem > max_smem)
    return Unsupported("CUDA attention on codes: rows of " + std::to_string(p.k.dim) + " / " + std::to_string(p.v.dim) +
                       " values need " + std::to_string(smem) + " bytes of shared memory per block");
  static const cudaError_t opted =
      cudaFuncSetAttribute(CodedAttentionKernel<QPT, NC, kMma>, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem);
  LR_RETURN_IF_ERROR(CheckCuda(opted, "cudaFuncSetAttribute (coded attention)"));
  const dim3 grid(p.k.n_head_kv, items, p.splits);
  CodedAttentionKernel<QPT, NC, kMma><<<grid, kThreads, smem, static_cast<cudaStream_t>(stream)>>>(p);
  return CheckLaunch("CodedAttention");
}

// The tensor cores take blocks of more than 8 query rows with key rows of whole k steps and value rows of whole
// tiles up to 128; the rest runs on the SIMT kernel with 4 QPT rows.
Status Launch(const Params& p, int rows, int items, Stream stream) {
  if (rows > 8 && p.k.dim % 16 == 0 && p.v.dim % 16 == 0 && p.v.dim <= 128)
    return LaunchQ<16, 4, true>(p, items, stream);
  const int qpt = Pow2AtLeast((rows + kWarps - 1) / kWarps);
  if (p.v.dim <= 128) {
    switch (qpt) {
      case 1: return LaunchQ<1, 4, false>(p, items, stream);
      case 2: return LaunchQ<2, 4, false>(p, items, stream);
      case 4: return LaunchQ<4, 4, false>(p, items, stream);
      case 8: return LaunchQ<8, 4, false>(p, items, stream);
      case 16: return LaunchQ<16, 4, false>(p, items, stream);
    }
  } else {
    switch (qpt) {
      case 1: return LaunchQ<1, 8, false>(p, items, stream);
      case 2: return LaunchQ<2, 8, false>(p, items, stream);
      case 4: return LaunchQ<4, 8, false>(p, items, stream);
      case 8: return LaunchQ<8, 8, false>(p, items, stream);
    }
  }
  return Internal("CodedAttention: no kernel for " + std::to_string(rows) + " query rows per block");
}

// Whether every run of the format's rows splits into the kernel's units of 8 elements (Decode8): f16 and 8-bit
// runs in 8s, 2-, 3- and 4-bit runs in 16s (a 3-bit tile, a 4-bit group's half).
bool WholeUnits(const DeviceRowFormat& f) {
  if (f.dim % 8 != 0) return false;
  if (f.n_runs == 0) return true;
  for (int b = 0; b * f.block_elems < f.dim; ++b) {
    const int size = std::min(f.block_elems, f.dim - b * f.block_elems);
    int count[2] = {f.count[0], f.count[1]};  // a short last block: kvquant's rule (kvdev::RunsOf)
    if (size < f.block_elems) {
      count[0] = f.n_runs == 1 ? size : size / 2 - 16;
      count[1] = size - count[0];
    }
    for (int r = 0; r < f.n_runs; ++r)
      if (count[r] % (f.bits[r] == 8 ? 8 : 16) != 0) return false;
  }
  return true;
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
  if (k.dim > kMaxCodedDim || v.dim > kMaxCodedDim || !WholeUnits(k) || !WholeUnits(v))
    return Unsupported("CUDA attention on codes: key rows of " + std::to_string(k.dim) + " and value rows of " +
                       std::to_string(v.dim) + " values (expected at most " + std::to_string(kMaxCodedDim) +
                       ", in whole units of 8 elements: runs of 2-, 3- and 4-bit codes multiples of 16)");
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
