// The kernels of moe.h.
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "cuda/common.cuh"
#include "cuda/device.h"
#include "cuda/mma.cuh"
#include "cuda/moe.h"

namespace lr::cuda {
namespace {

// Value and index of the warp's best (value, index) pair: the larger value, on ties the smaller index.
__device__ __forceinline__ void WarpArgMax(float* v, int* i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float v2 = __shfl_xor_sync(kFull, *v, o);
    const int i2 = __shfl_xor_sync(kFull, *i, o);
    if (v2 > *v || (v2 == *v && i2 < *i)) {
      *v = v2;
      *i = i2;
    }
  }
}

// The choice of one token by one warp: l its n_expert logits, score and choice 2 * n_expert floats of shared memory;
// lane 0 writes experts[0..k) and weights[0..k).
__device__ void RouteOne(const RouterArgs& a, const float* l, float* score, float* choice, int32_t* experts,
                         float* weights) {
  const int lane = threadIdx.x % 32;
  const int ne = a.n_expert;
  if (a.sigmoid) {
    for (int e = lane; e < ne; e += 32) score[e] = 1.0f / (1.0f + expf(-l[e]));
  } else {
    float mx = -INFINITY;
    for (int e = lane; e < ne; e += 32) mx = fmaxf(mx, l[e]);
    mx = WarpMax(mx);
    float sum = 0;
    for (int e = lane; e < ne; e += 32) sum += (score[e] = expf(l[e] - mx));
    const float inv = 1.0f / WarpSum(sum);
    for (int e = lane; e < ne; e += 32) score[e] *= inv;
  }
  for (int e = lane; e < ne; e += 32) choice[e] = score[e] + (a.bias != nullptr ? a.bias[e] : 0.0f);
  __syncwarp();
  if (a.n_groups > 1) {
    // Lane g scores group g (the sum of its best two), then the best n_groups_used groups are kept.
    const int per = ne / a.n_groups;
    float group = -INFINITY;
    if (lane < a.n_groups) {
      float best = -INFINITY, second = -INFINITY;
      for (int e = lane * per; e < (lane + 1) * per; ++e) {
        const float c = choice[e];
        if (c > best) {
          second = best;
          best = c;
        } else if (c > second) {
          second = c;
        }
      }
      group = best + second;
    }
    unsigned kept = 0;
    for (int k = 0; k < a.n_groups_used; ++k) {
      float v = lane < a.n_groups && !((kept >> lane) & 1) ? group : -INFINITY;
      int i = lane < a.n_groups && !((kept >> lane) & 1) ? lane : 32;
      WarpArgMax(&v, &i);
      kept |= 1u << i;
    }
    for (int e = lane; e < ne; e += 32)
      if (!((kept >> (e / per)) & 1)) choice[e] = -INFINITY;
    __syncwarp();
  }
  float sum = 0, w[kMaxExpertsUsed];
  int chosen[kMaxExpertsUsed];
  for (int k = 0; k < a.n_used; ++k) {
    float v = -INFINITY;
    int i = ne;
    for (int e = lane; e < ne; e += 32) {
      if (choice[e] > v) {  // ascending e: the first maximum of this lane's share
        v = choice[e];
        i = e;
      }
    }
    WarpArgMax(&v, &i);
    if (i >= ne) i = 0;  // every choice ruled out cannot happen with k <= the kept groups' experts
    chosen[k] = i;
    w[k] = score[i];
    sum += w[k];
    __syncwarp();
    if (lane == 0) choice[i] = -INFINITY;
    __syncwarp();
  }
  if (lane == 0) {
    const float norm = a.norm ? 1.0f / sum : 1.0f;
    for (int k = 0; k < a.n_used; ++k) {
      experts[k] = chosen[k];
      weights[k] = w[k] * norm * a.scale;
    }
  }
}

// One warp per token (4 per block); scores and choice values in shared memory (2 * n_expert floats per warp).
constexpr int kRouteWarps = 4;
__global__ void __launch_bounds__(32 * kRouteWarps)
    RouteKernel(RouterArgs a, const float* logits, int n, int32_t* experts, float* weights) {
  extern __shared__ float sm[];
  const int warp = threadIdx.x / 32;
  const int t = blockIdx.x * kRouteWarps + warp;
  if (t >= n) return;  // whole warps: no block-wide barrier follows
  float* score = sm + static_cast<size_t>(warp) * 2 * a.n_expert;
  const size_t at = static_cast<size_t>(t) * a.n_used;
  RouteOne(a, logits + static_cast<size_t>(t) * a.n_expert, score, score + a.n_expert, experts + at, weights + at);
}

struct ExpertProducts {
  ExpertProduct p[kMaxExpertProducts];
};

// The grouping by the whole block: counts per expert (shared atomics), their prefix sums, the active list and the
// tiles (warp 0, 32 experts per step), then every slot takes the next row of its expert. count, cursor: shared,
// n_expert each.
__device__ void GroupSlots(const int32_t* experts, int slots, int ne, const ExpertGroups& g, int32_t* tally,
                           int max_tiles, int* count, int* cursor) {
  for (int e = threadIdx.x; e < ne; e += blockDim.x) count[e] = 0;
  __syncthreads();
  for (int s = threadIdx.x; s < slots; s += blockDim.x) atomicAdd(&count[experts[s]], 1);
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int carry = 0, n_active = 0, tile_carry = 0;
    if (lane == 0) g.first[0] = 0;
    for (int e0 = 0; e0 < ne; e0 += 32) {
      const int e = e0 + lane;
      const int c = e < ne ? count[e] : 0;
      int incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int up = __shfl_up_sync(kFull, incl, o);
        if (lane >= o) incl += up;
      }
      const unsigned used = __ballot_sync(kFull, c > 0);
      const int nt = (c + kExpertTileTokens - 1) / kExpertTileTokens;
      int tiles_incl = nt;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int up = __shfl_up_sync(kFull, tiles_incl, o);
        if (lane >= o) tiles_incl += up;
      }
      if (e < ne) {
        cursor[e] = carry + incl - c;
        g.first[e + 1] = carry + incl;
        if (c > 0) g.active[n_active + __popc(used & ((1u << lane) - 1))] = e;
        if (g.tiles != nullptr) {
          for (int t = 0, at = tile_carry + tiles_incl - nt; t < nt; ++t, ++at) {
            g.tiles[2 * at] = e;
            g.tiles[2 * at + 1] = carry + incl - c + t * kExpertTileTokens;
          }
        }
      }
      carry += __shfl_sync(kFull, incl, 31);
      tile_carry += __shfl_sync(kFull, tiles_incl, 31);
      n_active += __popc(used);
    }
    if (lane == 0) {
      g.active[ne] = n_active;
      if (g.tiles != nullptr) g.tiles[2 * max_tiles] = tile_carry;
      if (tally != nullptr) *tally = n_active;
    }
  }
  __syncthreads();
  for (int s = threadIdx.x; s < slots; s += blockDim.x) {
    const int r = atomicAdd(&cursor[experts[s]], 1);
    g.row_of[s] = r;
    g.order[r] = s;
  }
}

constexpr int kGroupThreads = 1024;
__global__ void __launch_bounds__(kGroupThreads)
    GroupKernel(const int32_t* experts, int slots, int ne, ExpertGroups g, int32_t* tally, int max_tiles) {
  __shared__ int count[kMaxExperts], cursor[kMaxExperts];
  GroupSlots(experts, slots, ne, g, tally, max_tiles, count, cursor);
}

// Grouped rows j0, j0 + step, ... < slots of gather.out from their tokens' rows of gather.in, by the block.
__device__ void GatherQ8Rows(const Q8Gather& q, const ExpertGroups& g, int k, int slots, int j0, int step) {
  const int64_t words = q.cols / 16, blocks = q.cols / 32;  // 16-byte words of values, (d, s) pairs
  const int4* in = reinterpret_cast<const int4*>(q.in.q);
  const float2* in_ds = reinterpret_cast<const float2*>(q.in.ds);
  int4* out = reinterpret_cast<int4*>(q.out.q);
  float2* out_ds = reinterpret_cast<float2*>(q.out.ds);
  for (int j = j0; j < slots; j += step) {
    const int64_t t = g.order[j] / k;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) out[j * words + w] = in[t * words + w];
    for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) out_ds[j * blocks + b] = in_ds[t * blocks + b];
  }
}

// One block per grouped row (RouteAndGroup's gather after a separate grouping).
__global__ void GatherQ8Kernel(Q8Gather q, ExpertGroups g, int k, int slots) {
  GatherQ8Rows(q, g, k, slots, blockIdx.x, gridDim.x);
}

// Route and GroupByExpert in one block for a decode step: warp t routes token t, then the block groups (and gathers
// the grouped rows' activations where gather.cols > 0).
constexpr int kFusedRouteExperts = 256;
__global__ void __launch_bounds__(32 * kMaxMatVecTokens)
    RouteGroupKernel(RouterArgs a, const float* logits, int n, int32_t* experts, float* weights, ExpertGroups g,
                     int32_t* tally, int max_tiles, Q8Gather gather) {
  extern __shared__ float sm[];
  __shared__ int count[kFusedRouteExperts], cursor[kFusedRouteExperts];
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int warp = threadIdx.x / 32;
  if (warp < n) {
    float* score = sm + static_cast<size_t>(warp) * 2 * a.n_expert;
    const size_t at = static_cast<size_t>(warp) * a.n_used;
    RouteOne(a, logits + static_cast<size_t>(warp) * a.n_expert, score, score + a.n_expert, experts + at, weights + at);
  }
  __syncthreads();
  GroupSlots(experts, n * a.n_used, a.n_expert, g, tally, max_tiles, count, cursor);
  if (gather.cols == 0) return;  // the whole block
  __syncthreads();
  GatherQ8Rows(gather, g, a.n_used, n * a.n_used, 0, 1);
}

// One warp per weight row of one chosen expert (blockIdx.y: its place in the active list); its rows' tokens in
// chunks of NT, so that every chosen expert's row is read once per step and shared by the tokens that chose it.
// kGateUp: the warp takes row r of both products (gate, up) and writes silu(gate) * up into the first's output;
// otherwise blockIdx.z picks the product.
constexpr int kExpertWarps = 4;
template <WeightType T, int NT, bool kGateUp>
__global__ void __launch_bounds__(32 * kExpertWarps)
    ExpertMatVecKernel(ExpertProducts set, ExpertGroups g, int ne, int k) {
  const ExpertProduct& p = set.p[kGateUp ? 0 : blockIdx.z];
  const int j = blockIdx.y;
  if (j >= g.active[ne]) return;
  const int e = g.active[j];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kExpertWarps + warp;
  if (r >= p.rows) return;
  const DeviceMatrix& w = p.stacked;
  const int64_t row = static_cast<int64_t>(e) * p.rows + r;
  const int r0 = g.first[e], m = g.first[e + 1] - r0;
  const int nsb = static_cast<int>(w.cols / 32);
  const int q = lane % 4;
  for (int c0 = 0; c0 < m; c0 += NT) {
    int in[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      const int jr = r0 + c0 + t;
      in[t] = c0 + t < m ? (p.gather ? g.order[jr] / k : jr) : 0;
    }
    float acc[NT], acc2[kGateUp ? NT : 1];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0;
#pragma unroll
    for (int t = 0; t < (kGateUp ? NT : 1); ++t) acc2[t] = 0;
#pragma unroll 4
    for (int sb = lane / 4; sb < nsb; sb += 8) {
      float v[8], v2[8];
      Dequant8<T>(w, row, sb, q, v);
      if constexpr (kGateUp) Dequant8<T>(set.p[1].stacked, row, sb, q, v2);
#pragma unroll
      for (int t = 0; t < NT; ++t) {
        if (c0 + t < m) {
          const int64_t at = static_cast<int64_t>(in[t]) * w.cols + 32 * sb + 4 * q;
          const float4 a = __ldg(reinterpret_cast<const float4*>(p.x + at));
          const float4 b = __ldg(reinterpret_cast<const float4*>(p.x + at + 16));
          acc[t] +=
              v[0] * a.x + v[1] * a.y + v[2] * a.z + v[3] * a.w + v[4] * b.x + v[5] * b.y + v[6] * b.z + v[7] * b.w;
          if constexpr (kGateUp)
            acc2[t] += v2[0] * a.x + v2[1] * a.y + v2[2] * a.z + v2[3] * a.w + v2[4] * b.x + v2[5] * b.y + v2[6] * b.z +
                       v2[7] * b.w;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
      float sum = WarpSum(acc[t]);
      if constexpr (kGateUp) sum = sum / (1.0f + expf(-sum)) * WarpSum(acc2[t]);
      if (lane == 0 && c0 + t < m) p.y[static_cast<int64_t>(r0 + c0 + t) * p.rows + r] = sum;
    }
  }
}

// Tensor-core product over tiles of one expert's grouped rows (the prefill path): a block computes 128 weight rows of
// the tile's expert x its up to 64 grouped rows, 8 warps of 32 x 32 (2 x 2 wmma 16x16x16 tiles, f16 operands, f32
// sums); per step 64 values of k: every thread decodes one (row, sub-block) into f16 shared memory and converts 16
// values of one gathered input row.
constexpr int kTileRows = 128, kTileK = 64, kTilePad = kTileK + 8;
template <WeightType T>
__global__ void __launch_bounds__(256) ExpertTiledKernel(ExpertProducts set, ExpertGroups g, int k, int max_tiles) {
  const ExpertProduct& p = set.p[blockIdx.z];
  using namespace nvcuda;
  struct In {
    __half a[kTileRows * kTilePad];
    __half b[kExpertTileTokens * kTilePad];
  };
  __shared__ union {
    In in;
    float c[8][32 * 32];
  } sm;
  __shared__ int in_row[kExpertTileTokens];
  const int tile = blockIdx.y;
  if (tile >= g.tiles[2 * max_tiles]) return;  // the whole block: before any barrier
  const int e = g.tiles[2 * tile], j0 = g.tiles[2 * tile + 1];
  const int n_tok = min(kExpertTileTokens, g.first[e + 1] - j0);
  const DeviceMatrix& w = p.stacked;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTileRows;  // within the expert
  const int64_t base = static_cast<int64_t>(e) * p.rows;
  if (tid < kExpertTileTokens) in_row[tid] = tid < n_tok ? (p.gather ? g.order[j0 + tid] / k : j0 + tid) : -1;
  __syncthreads();
  const int wr = warp % 4, wc = warp / 4;
  const int nsb = static_cast<int>(w.cols / 32);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(c[i][j], 0.0f);
  for (int k0 = 0; k0 < nsb; k0 += 2) {
    {
      const int r = tid >> 1, s = k0 + (tid & 1);
      __half2* dst = reinterpret_cast<__half2*>(sm.in.a + r * kTilePad + (tid & 1) * 32);
      if (r0 + r < p.rows && s < nsb) {
        float v[32];
        Dequant32<T>(w, base + r0 + r, s, v);
#pragma unroll
        for (int i = 0; i < 16; ++i) dst[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) dst[i] = __floats2half2_rn(0.f, 0.f);
      }
    }
    {
      const int t = tid >> 2, quarter = tid & 3;
      const int64_t col = static_cast<int64_t>(k0) * 32 + quarter * 16;
      __half2* dst = reinterpret_cast<__half2*>(sm.in.b + t * kTilePad + quarter * 16);
      if (in_row[t] >= 0 && col < w.cols) {
        const float4* src = reinterpret_cast<const float4*>(p.x + static_cast<int64_t>(in_row[t]) * w.cols + col);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const float4 a = __ldg(src + i);
          dst[2 * i] = __floats2half2_rn(a.x, a.y);
          dst[2 * i + 1] = __floats2half2_rn(a.z, a.w);
        }
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) dst[i] = __floats2half2_rn(0.f, 0.f);
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], sm.in.a + (wr * 32 + i * 16) * kTilePad + kk, kTilePad);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], sm.in.b + (wc * 32 + j * 16) * kTilePad + kk, kTilePad);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(c[i][j], fa[i], fb[j], c[i][j]);
    }
    __syncthreads();
  }
  // Element (row r, token t) of the warp's 32 x 32 tile at c[warp][t * 32 + r], written with consecutive lanes on
  // consecutive rows.
  float* cw = sm.c[warp];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::store_matrix_sync(cw + (j * 16) * 32 + i * 16, c[i][j], 32, wmma::mem_col_major);
  __syncwarp();
  for (int idx = lane; idx < 32 * 32; idx += 32) {
    const int t = wc * 32 + idx / 32;
    const int64_t r = r0 + wr * 32 + idx % 32;
    if (t < n_tok && r < p.rows) p.y[static_cast<int64_t>(j0 + t) * p.rows + r] = cw[idx];
  }
}

// Q4_0 experts' prefill products on int8 activations, on the tensor cores (mma m16n8k32, MmaS8): block (x, tile)
// takes weight rows 128 x .. 128 x + 127 of the tile's expert (4 warps of 32 rows: 4 column tiles of 8) and the
// tile's up to kExpertTileTokens grouped rows (token tiles of 16). Per 32-value block the int32 sums are scaled by the
// weight row's d and the activation row's d into f32 (Q4_0's values are nibble - 8: signed bytes, no offset term).
// The weights' words and scales of kMmaBlocks blocks are loaded before they are used; each lane loads its own row's
// scales (8 bytes: 4 blocks) and the rows 2t, 2t + 1 that its sums need come by shuffles.
constexpr int kMmaWarps = 4, kMmaRows = 32 * kMmaWarps, kMmaBlocks = 4, kTokenTiles = kExpertTileTokens / 16;
__global__ void __launch_bounds__(32 * kMmaWarps)
    ExpertMmaQ4_0Kernel(DeviceMatrix w, int64_t rows, Q8Activations x, bool gather, ExpertGroups g, int k,
                        int max_tiles, float* y) {
  const int tile = blockIdx.y;
  if (tile >= g.tiles[2 * max_tiles]) return;  // the whole block
  const int e = g.tiles[2 * tile], j0 = g.tiles[2 * tile + 1];
  const int n_tok = min(kExpertTileTokens, g.first[e + 1] - j0);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gq = lane / 4, t = lane % 4;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kMmaRows + warp * 32;  // within the expert
  if (r0 >= rows) return;
  const int nb = static_cast<int>(w.cols / 32);
  const int m_tiles = (n_tok + 15) / 16;
  const int64_t base = static_cast<int64_t>(e) * rows;
  const uint8_t* wq[4];  // word t of row gq of each column tile, block 0
  const uint2* sc[4];    // row gq's scales of each column tile, 4 blocks at a time
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const int64_t r = min(r0 + 8 * nt + gq, rows - 1);
    wq[nt] = w.q + static_cast<size_t>(base + r) * w.row_bytes + 4 * t;
    sc[nt] = reinterpret_cast<const uint2*>(reinterpret_cast<const __half*>(w.scales) + (base + r) * nb);
  }
  int in[kTokenTiles][2];  // activation rows of tokens gq and gq + 8 of each token tile, -1: none
#pragma unroll
  for (int mt = 0; mt < kTokenTiles; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int tok = 16 * mt + gq + 8 * h;
      in[mt][h] = tok < n_tok ? (gather ? g.order[j0 + tok] / k : j0 + tok) : -1;
    }
  float acc[kTokenTiles][4][4];
#pragma unroll
  for (int mt = 0; mt < kTokenTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.f;
  for (int b0 = 0; b0 < nb; b0 += kMmaBlocks) {
    uint32_t wv[kMmaBlocks][4];
    uint2 own[4];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      own[nt] = __ldg(sc[nt] + b0 / kMmaBlocks);
#pragma unroll
      for (int u = 0; u < kMmaBlocks; ++u)
        wv[u][nt] = __ldg(reinterpret_cast<const uint32_t*>(wq[nt] + 16 * static_cast<size_t>(b0 + u)));
    }
#pragma unroll
    for (int u = 0; u < kMmaBlocks; ++u) {
      const int b = b0 + u;
      uint32_t lo[4], hi[4];
      float ws[4][2];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        lo[nt] = __vsub4(wv[u][nt] & 0x0F0F0F0Fu, 0x08080808u);
        hi[nt] = __vsub4((wv[u][nt] >> 4) & 0x0F0F0F0Fu, 0x08080808u);
        const uint32_t word = u < 2 ? own[nt].x : own[nt].y;
        const float mine = __half2float(__ushort_as_half(static_cast<unsigned short>(word >> (16 * (u % 2)))));
        ws[nt][0] = __shfl_sync(kFull, mine, 8 * t);
        ws[nt][1] = __shfl_sync(kFull, mine, 8 * t + 4);
      }
#pragma unroll
      for (int mt = 0; mt < kTokenTiles; ++mt) {
        if (mt < m_tiles) {
          uint32_t a[4];
          float da[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const bool valid = in[mt][h] >= 0;
            const size_t row = valid ? static_cast<size_t>(in[mt][h]) : 0;
            const uint32_t* aw = reinterpret_cast<const uint32_t*>(x.q + row * w.cols + 32 * static_cast<size_t>(b));
            a[h] = valid ? __ldg(aw + t) : 0u;
            a[2 + h] = valid ? __ldg(aw + 4 + t) : 0u;
            da[h] = valid ? __ldg(x.ds + 2 * (row * nb + b)) : 0.f;
          }
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            int c[4] = {0, 0, 0, 0};
            MmaS8(c, a, lo[nt], hi[nt]);
            acc[mt][nt][0] += ws[nt][0] * da[0] * static_cast<float>(c[0]);
            acc[mt][nt][1] += ws[nt][1] * da[0] * static_cast<float>(c[1]);
            acc[mt][nt][2] += ws[nt][0] * da[1] * static_cast<float>(c[2]);
            acc[mt][nt][3] += ws[nt][1] * da[1] * static_cast<float>(c[3]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int mt = 0; mt < kTokenTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int tok = 16 * mt + gq + (i >= 2 ? 8 : 0);
        const int64_t r = r0 + 8 * nt + 2 * t + i % 2;
        if (tok < n_tok && r < rows) y[static_cast<int64_t>(j0 + tok) * rows + r] = acc[mt][nt][i];
      }
}

// One block per token; with norm.out, the new row's RMSNorm after it (every thread reads back only its own writes).
// The token's choices (rows and weights) are read once into shared memory, so that the loads of the rows' values
// are independent of each other.
constexpr int kCombineThreads = 1024;
__global__ void __launch_bounds__(kCombineThreads)
    CombineKernel(const float* __restrict__ ys, const float* __restrict__ weights, ExpertGroups g, int k, int dim,
                  float* __restrict__ x, RowNorm norm) {
  __shared__ float weight[kMaxExpertsUsed];
  __shared__ int row[kMaxExpertsUsed];
  WaitForPreviousKernel();
  LetNextKernelStart();
  const int t = blockIdx.x;
  if (threadIdx.x < k) {
    weight[threadIdx.x] = weights[t * k + threadIdx.x];
    row[threadIdx.x] = g.row_of[t * k + threadIdx.x];
  }
  __syncthreads();
  float* xt = x + static_cast<size_t>(t) * dim;
  float ss = 0;
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    float sum = 0;
    for (int i = 0; i < k; ++i) sum += weight[i] * ys[static_cast<size_t>(row[i]) * dim + d];
    const float v = xt[d] + sum;
    xt[d] = v;
    ss += v * v;
  }
  if (norm.out == nullptr) return;  // the whole block
  const float scale = rsqrtf(BlockSum<kCombineThreads>(ss) / dim + norm.eps);
  for (int d = threadIdx.x; d < dim; d += blockDim.x) {
    const size_t i = static_cast<size_t>(t) * dim + d;
    const float v = xt[d] * scale * norm.w[d];
    norm.out[i] = v;
    if (norm.q.q != nullptr) QuantizeWarp(v, static_cast<int64_t>(i), norm.q);  // whole warps: dim % 32 == 0
  }
}

}  // namespace

namespace {

Status CheckRouter(const RouterArgs& a) {
  if (a.n_expert < 1 || a.n_expert > kMaxExperts || a.n_used < 1 || a.n_used > kMaxExpertsUsed || a.n_used > a.n_expert)
    return InvalidArgument("Route: " + std::to_string(a.n_used) + " of " + std::to_string(a.n_expert) +
                           " experts (the CUDA router takes up to " + std::to_string(kMaxExpertsUsed) + " of " +
                           std::to_string(kMaxExperts) + ")");
  if (a.n_groups < 1 || a.n_groups > 32 || a.n_expert % a.n_groups != 0 || a.n_groups_used < 1 ||
      a.n_groups_used > a.n_groups)
    return InvalidArgument("Route: " + std::to_string(a.n_groups) + " expert groups (at most 32, dividing the " +
                           std::to_string(a.n_expert) + " experts), " + std::to_string(a.n_groups_used) + " kept");
  return Status::Ok();
}

}  // namespace

Status Route(const RouterArgs& a, const float* logits, int n, int32_t* experts, float* weights, Stream stream) {
  LR_RETURN_IF_ERROR(CheckRouter(a));
  if (n <= 0) return Status::Ok();
  const size_t shared = static_cast<size_t>(kRouteWarps) * 2 * a.n_expert * sizeof(float);
  RouteKernel<<<Blocks(n, kRouteWarps), 32 * kRouteWarps, shared, S(stream)>>>(a, logits, n, experts, weights);
  return CheckLaunch("Route");
}

Status RouteAndGroup(const RouterArgs& a, const float* logits, int n, int32_t* experts, float* weights,
                     const ExpertGroups& g, int32_t* tally, Stream stream, const Q8Gather* gather) {
  if (gather != nullptr && (gather->cols <= 0 || gather->cols % 32 != 0))
    return InvalidArgument("RouteAndGroup: gathered rows of " + std::to_string(gather->cols) +
                           " values (a multiple of 32)");
  const Q8Gather none{};
  if (n > kMaxMatVecTokens || a.n_expert > kFusedRouteExperts) {
    LR_RETURN_IF_ERROR(Route(a, logits, n, experts, weights, stream));
    LR_RETURN_IF_ERROR(GroupByExpert(experts, n * a.n_used, a.n_expert, g, tally, stream));
    if (gather == nullptr || n <= 0) return Status::Ok();
    GatherQ8Kernel<<<n * a.n_used, 256, 0, S(stream)>>>(*gather, g, a.n_used, n * a.n_used);
    return CheckLaunch("RouteAndGroup (gather)");
  }
  LR_RETURN_IF_ERROR(CheckRouter(a));
  if (n <= 0) return Status::Ok();
  const size_t shared = static_cast<size_t>(kMaxMatVecTokens) * 2 * a.n_expert * sizeof(float);
  LaunchEarlyShared(RouteGroupKernel, 1, 32 * kMaxMatVecTokens, shared, stream, a, logits, n, experts, weights, g,
                    tally, MaxExpertTiles(n * a.n_used, a.n_expert), gather != nullptr ? *gather : none);
  return CheckLaunch("RouteAndGroup");
}

Status GroupByExpert(const int32_t* experts, int slots, int n_expert, const ExpertGroups& g, int32_t* tally,
                     Stream stream) {
  if (n_expert < 1 || n_expert > kMaxExperts) return InvalidArgument("GroupByExpert: at most 1024 experts");
  if (slots <= 0) return Status::Ok();
  GroupKernel<<<1, kGroupThreads, 0, S(stream)>>>(experts, slots, n_expert, g, tally, MaxExpertTiles(slots, n_expert));
  return CheckLaunch("GroupByExpert");
}

namespace {

// The matrix-vector products (1..16 tokens): NT from the tokens, blockIdx.y over the most experts the step can choose.
template <bool kGateUp>
Status LaunchMatVec(const ExpertProducts& set, int count, const ExpertGroups& g, int ne, int k, int max_active,
                    int n_tokens, Stream stream) {
  const ExpertProduct& p = set.p[0];
  const dim3 grid(Blocks(p.rows, kExpertWarps), std::min(max_active, ne), kGateUp ? 1 : count);
  const int threads = 32 * kExpertWarps;
  LR_RETURN_IF_ERROR(DispatchType(p.stacked.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    if (n_tokens == 1) {
      ExpertMatVecKernel<T, 1, kGateUp><<<grid, threads, 0, S(stream)>>>(set, g, ne, k);
    } else if (n_tokens == 2) {
      ExpertMatVecKernel<T, 2, kGateUp><<<grid, threads, 0, S(stream)>>>(set, g, ne, k);
    } else if (n_tokens <= 4) {
      ExpertMatVecKernel<T, 4, kGateUp><<<grid, threads, 0, S(stream)>>>(set, g, ne, k);
    } else if (n_tokens <= 8) {
      ExpertMatVecKernel<T, 8, kGateUp><<<grid, threads, 0, S(stream)>>>(set, g, ne, k);
    } else {
      ExpertMatVecKernel<T, 16, kGateUp><<<grid, threads, 0, S(stream)>>>(set, g, ne, k);
    }
  }));
  return CheckLaunch("ExpertMatMul");
}

// Checks `count` products of one type, shape and input; their set.
Result<ExpertProducts> ProductSet(const ExpertProduct* products, int count) {
  if (count < 1 || count > kMaxExpertProducts) return InvalidArgument("ExpertMatMul takes 1 or 2 products");
  ExpertProducts set{};
  for (int i = 0; i < count; ++i) {
    LR_RETURN_IF_ERROR(CheckMatrix(products[i].stacked));
    set.p[i] = products[i];
    if (products[i].stacked.type != products[0].stacked.type || products[i].stacked.rows != products[0].stacked.rows ||
        products[i].stacked.cols != products[0].stacked.cols || products[i].rows != products[0].rows ||
        products[i].x != products[0].x || products[i].gather != products[0].gather)
      return InvalidArgument("ExpertMatMul: the products differ in type, shape or inputs");
  }
  if (products[0].rows <= 0 || products[0].stacked.rows % products[0].rows != 0)
    return InvalidArgument("ExpertMatMul: " + std::to_string(products[0].stacked.rows) +
                           " stacked rows are not whole experts of " + std::to_string(products[0].rows));
  return set;
}

}  // namespace

int MaxExpertTiles(int slots, int n_expert) { return slots / kExpertTileTokens + std::min(slots, n_expert); }

Status ExpertMatMul(const ExpertProduct* products, int count, const ExpertGroups& g, int k, int max_active,
                    int n_tokens, Stream stream) {
  LR_ASSIGN_OR_RETURN(const ExpertProducts set, ProductSet(products, count));
  const ExpertProduct& p = products[0];
  const int ne = static_cast<int>(p.stacked.rows / p.rows);
  if (max_active <= 0 || n_tokens <= 0) return Status::Ok();
  if (n_tokens <= kMaxMatVecTokens) return LaunchMatVec<false>(set, count, g, ne, k, max_active, n_tokens, stream);
  if (g.tiles == nullptr) return InvalidArgument("ExpertMatMul: more than 16 tokens need the groups' tiles");
  const int max_tiles = MaxExpertTiles(n_tokens * k, ne);
  const dim3 tiled(Blocks(p.rows, kTileRows), max_tiles, count);
  LR_RETURN_IF_ERROR(DispatchType(p.stacked.type, [&](auto tag) {
    constexpr WeightType T = decltype(tag)::value;
    ExpertTiledKernel<T><<<tiled, 256, 0, S(stream)>>>(set, g, k, max_tiles);
  }));
  return CheckLaunch("ExpertMatMul (tiled)");
}

bool ExpertMatMulQ8Takes(const DeviceMatrix& w) { return w.type == WeightType::kQ4_0 && w.cols % 128 == 0; }

Status ExpertMatMulQ8(const DeviceMatrix& w, int64_t rows, Q8Activations x, bool gather, const ExpertGroups& g, int k,
                      int n_tokens, float* y, Stream stream) {
  LR_RETURN_IF_ERROR(CheckMatrix(w));
  if (!ExpertMatMulQ8Takes(w) || rows <= 0 || w.rows % rows != 0)
    return InvalidArgument("ExpertMatMulQ8: Q4_0 experts of " + std::to_string(rows) + " rows of a multiple of 128 " +
                           "values, got " + std::to_string(w.rows) + " rows of " + std::to_string(w.cols));
  if (g.tiles == nullptr) return InvalidArgument("ExpertMatMulQ8 needs the groups' tiles");
  if (n_tokens <= 0) return Status::Ok();
  const int ne = static_cast<int>(w.rows / rows), max_tiles = MaxExpertTiles(n_tokens * k, ne);
  const dim3 grid(Blocks(rows, kMmaRows), max_tiles);
  ExpertMmaQ4_0Kernel<<<grid, 32 * kMmaWarps, 0, S(stream)>>>(w, rows, x, gather, g, k, max_tiles, y);
  return CheckLaunch("ExpertMatMulQ8");
}

Status ExpertGateUp(const ExpertProduct& gate, const ExpertProduct& up, const ExpertGroups& g, int k, int max_active,
                    int n_tokens, Stream stream) {
  const ExpertProduct pair[] = {gate, up};
  if (n_tokens > kMaxMatVecTokens) {
    LR_RETURN_IF_ERROR(ExpertMatMul(pair, 2, g, k, max_active, n_tokens, stream));
    return SwiGlu(gate.y, up.y, static_cast<int64_t>(n_tokens) * k * gate.rows, stream);
  }
  LR_ASSIGN_OR_RETURN(const ExpertProducts set, ProductSet(pair, 2));
  const int ne = static_cast<int>(gate.stacked.rows / gate.rows);
  if (max_active <= 0 || n_tokens <= 0) return Status::Ok();
  return LaunchMatVec<true>(set, 2, g, ne, k, max_active, n_tokens, stream);
}

Status CombineExperts(const float* ys, const float* weights, const ExpertGroups& g, int n, int k, int dim, float* x,
                      Stream stream, const RowNorm* norm) {
  if (n <= 0) return Status::Ok();
  if (norm != nullptr && norm->q.q != nullptr && dim % 32 != 0)
    return InvalidArgument("CombineExperts: quantized rows of " + std::to_string(dim) + " values (a multiple of 32)");
  LaunchEarly(CombineKernel, n, kCombineThreads, stream, ys, weights, g, k, dim, x,
              norm != nullptr ? *norm : RowNorm{});
  return CheckLaunch("CombineExperts");
}

}  // namespace lr::cuda
