// Attention on compressed KV rows on the device (kvquant's formats in KvCache's pages, cuda/kv_codec.h), and
// shared-prefix attention for k sequences forked from one prompt.
//
// Contract as cuda::Attention's (kernels.h): out[i][head] = softmax(scale * q . K^T) V over positions 0..pos[i] of
// token i's sequence, for its n_head query heads (q: n x n_head x k.dim; out: n x n_head x v.dim); n_head /
// n_head_kv at most 8; dims at most kMaxCodedDim, keys a multiple of 8 when f16.
//
// How: one block per (KV head, work item, split). The block loads its queries (divided by the key codec's channel
// weights, times scale) and rotates them once into the keys' stored domain (kvquant: q.k = Rq.Rk); its 4 warps take
// the split's pages in turn, each lane scoring one row of the page from its codes (unpacked in registers, Lloyd-Max
// levels from shared memory), with an online softmax per warp; values are accumulated from their codes in their
// rotated domain, lane by lane over the elements (each lane's element positions worked out once). The warps' states
// (max, sum, accumulator) are merged in shared memory and each split writes one to scratch; a merge kernel combines
// the splits' states of each (token, head) by log-sum-exp, rotates the output back, and undoes the value codec's
// weights and center. A key center needs nothing: it shifts all of a query's scores alike.
//
// Shared prefix (shared_tokens > 0): token i is the one token of sequence i (a decode step of n sequences) and the
// first shared_tokens positions (a multiple of kPageTokens, at most every token's position + 1) of every sequence
// are the same pages (forks of one prompt); those pages are read once per group of up to 16 queries (16 / group
// tokens: one block scores a page for all of them), then each sequence's own positions separately, and the two
// merged exactly. SharedPrefixTokens finds shared_tokens from the page tables.
//
// Prefill uses the same kernel with one item per token (the pages of a sequence are then re-read from L2 by its
// tokens); decode steps of at most kMaxMatVecTokens tokens split each range over AttentionSplits blocks.
#pragma once

#include <cstddef>
#if __cplusplus >= 202002L
#include <span>
#endif

#include "base/status.h"
#include "cuda/kernels.h"
#include "cuda/kv_codec.h"

namespace lr::cuda {

// Floats of scratch CodedAttention needs for n tokens (shared: shared_tokens > 0).
size_t CodedAttentionScratchFloats(int n, int n_head, int n_head_kv, int v_dim, bool shared);

Status CodedAttention(const float* q, int n_head, float scale, const DeviceRowFormat& k, const DeviceRowFormat& v,
                      const KvPages& pages, int layer, const TokenPlaces& places, int n, int shared_tokens, float* out,
                      float* scratch, Stream stream);

#if __cplusplus >= 202002L  // host code (kv_codecs.cc); the .cu files are C++17
// The positions every sequence of a step can read from the same pages: the longest run of leading page ids common
// to all tables, in positions, capped at the smallest context (positions attended) and rounded down to whole pages.
// 0 for fewer than two sequences.
int SharedPrefixTokens(std::span<const std::span<const int>> tables, std::span<const int> contexts);
#endif

}  // namespace lr::cuda
