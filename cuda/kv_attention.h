// Attention on compressed KV rows on the device (kvquant's formats in KvCache's pages, cuda/kv_codec.h), and
// shared-prefix attention for k sequences forked from one prompt.
//
// Contract as cuda::Attention's (kernels.h): out[i][head] = softmax(scale * q . K^T) V over positions 0..pos[i] of
// token i's sequence, for its n_head query heads (q: n x n_head x k.dim; out: n x n_head x v.dim); n_head /
// n_head_kv at most 8; dims multiples of 4, at most kMaxCodedDim.
//
// How: one block per (KV head, item, split), an item being one token (decode) or up to 64 query rows (tokens x the
// group: a prefill chunk's consecutive tokens, or every sequence of a shared-prefix step). The block loads its
// queries (divided by the key codec's channel weights, times scale) and rotates them once into the keys' stored
// domain (kvquant: q.k = Rq.Rk). It streams the split's pages through shared memory (asynchronous copies of each
// page's raw key and value bytes, up to 4 pages ahead), decodes each page once into float rows in shared memory (the
// codes unpacked with Lloyd-Max levels from shared memory) and runs an online softmax on it: warp w owns query rows
// w, w + 4, ..., each lane scoring one row of the page and accumulating 4 (or 8) value channels. So a page is read
// and decoded once for all of an item's query rows. Each split writes its states (max, sum, accumulator); a merge
// kernel combines the splits' states of each (token, head) by log-sum-exp, rotates the output back, and undoes the
// value codec's weights and center. A key center needs nothing: it shifts all of a query's scores alike.
//
// Shared prefix (shared_tokens > 0): token i is the one token of sequence i (a decode step of n sequences) and the
// first shared_tokens positions (a multiple of kPageTokens, at most every token's position + 1) of every sequence
// are the same pages (forks of one prompt); those pages are read once for all the step's queries (up to 64 query
// rows per block), then each sequence's own positions separately, and the two merged exactly. SharedPrefixTokens
// finds shared_tokens from the page tables.
//
// Decode steps (at most kMaxMatVecTokens tokens) split each range over enough blocks to fill the device (a count that
// depends on n alone, so that a captured graph fits every depth); a prefill item (one split) may hold tokens of two
// sequences, which it attends in one pass over the pages per sequence.
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
