// The paged KV cache: every sequence's keys and values, compressed by kvquant's row codecs.
//
// Storage is a pool of pages. A page holds kPageTokens consecutive token positions of one sequence for every layer
// and KV head: for each (layer, head), kPageTokens key rows, contiguous (one kvquant::RowSpan), then the same for
// value rows. A sequence is a page table (page ids in position order) and a length. Pages carry reference counts:
// Fork() makes a new sequence that shares all pages of another (a metadata copy), and a sequence that appends into
// a page it shares first copies that page (copy on write). Truncate() rolls a sequence back. This is what prefix
// sharing builds on: n choices of one prompt are forks of the prefilled prompt.
//
// Across requests, full pages are kept in a prefix index (inference/prefix_index.h): IndexPages() registers a
// sequence's full pages under keys chained over their tokens, and NewSequenceFromCache() starts a sequence from the
// longest run of indexed pages matching a token prefix, so that only the rest needs a prefill. The index holds one
// reference on each page it lists; a page only the index references is "cached" and is evicted, least recently used
// first, when the pool has no free page left. A page that a sequence references is never evicted.
//
// Costs: NewSequence, Fork, NewSequenceFromCache, Truncate and Free touch page tables and reference counts only;
// the one copy is AppendSlot into a shared, partly filled page (one page memcpy).
//
// Each (layer, KV head) has its own RowCodec (kvquant's rotations are seeded per layer and head); keys and values use
// the formats named by KvCacheOptions (`--ctk` / `--ctv`), f16 by default.
//
// Sink rows: with KvCacheOptions::sink_tokens = s > 0 and a compressed format, the first s positions of a sequence
// are also stored as f16 rows, beside the page that holds positions 0..kPageTokens-1 (so they are shared, indexed
// and copied with that page), and attention reads those instead of their compressed rows. The first tokens of a
// context draw much of every head's attention (attention sinks) and their keys are unlike the others, so they are
// where a few exact rows help most. Cost: s f16 rows per sequence (the compressed slots of those positions stay in
// the page, unused by attention).
//
// Window rows: with KvCacheOptions::window_tokens = w > 0 and a compressed format, attention reads the last w
// positions before the attending token (its own included) from window rows too, stored in
// KvCacheOptions::window_format (f16, or a cheaper format such as q8_0 for a longer window at the same memory). Each
// sequence keeps these second copies of its recent rows in a ring of its own, beside the pages; the ring holds at
// least w rows and, while one forward pass appends a batch, the whole batch as well (every token of a batch attends
// to its own window), so it is trimmed to the last w stored positions at the next AppendSlot. A Fork copies the ring
// (its cost: w rows of every layer and head); a sequence started from cached pages has no window rows for them (the
// window then begins at the first position it computes itself), so its results differ slightly from a cold run's.
// Measured on the default model, the recent tokens are where most of a compressed cache's loss is
// (docs/RESULTS.md).
//
// Not thread-safe for changes (NewSequence, Fork, Free, Truncate, AppendSlot); reading and writing rows of distinct
// positions from several threads is fine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "inference/kv_calibration.h"
#include "inference/kv_shape.h"
#include "inference/prefix_index.h"
#include "kvquant/kvquant.h"

namespace lr::inference {

// Page storage outside host memory (a GPU's: cuda/). The cache then keeps only the bookkeeping (page tables,
// reference counts, the prefix index, LRU eviction) and the store holds page p's bytes, in the cache's page layout;
// the cache asks it to copy a page when a sequence writes into a shared one (copy on write). Rows are then stored
// and attended by the store's owner, not by Store / KRow / VRow / Attend / AttendState / Spans (which must not be
// called).
class KvPageStore {
 public:
  virtual ~KvPageStore() = default;
  // Page `to` becomes a copy of page `from` (both allocated).
  virtual void CopyPage(int from, int to) = 0;
};

struct KvCacheOptions {
  std::string k_format = "f16";
  std::string v_format = "f16";
  int max_tokens = 4096;  // pool size in token positions, summed over the pages of all sequences
  uint64_t seed = 0;      // the codecs' rotations
  // The model the rows come from (e.g. its file name and size), hashed into the prefix index's keys together with
  // the formats and seed: pages of different models or formats never match.
  std::string identity;
  // Per-channel centers and weights of the model's rows, set on every codec except f16 ones (exact:
  // inference/kv_calibration.h). Null: none. Must match the cache's shape.
  std::shared_ptr<const KvCalibration> calibration;
  // Positions [0, sink_tokens) of every sequence are kept as f16 rows too (see "Sink rows" above); 0..kPageTokens.
  // Ignored when both formats are f16. Not for caches without value rows (MLA).
  int sink_tokens = 0;
  // The last window_tokens positions are read from window rows too (see "Window rows" above); >= 0. Ignored when
  // both formats are f16. Not for caches without value rows (MLA).
  int window_tokens = 0;
  // The format of the window rows (keys and values), any kvquant format; with the calibration like the others
  // unless f16.
  std::string window_format = "f16";
  // Called with each query group (n_q rows of k_dim) once per attention (by Attend, or AttendState for the piece
  // starting at position 0): the KV calibration measures the queries through it. May be called from several threads
  // at once. Null: none.
  std::function<void(int layer, int head, const float* q, int n_q)> observe_queries;
  // Pages kept by this store instead of host memory (see KvPageStore); null: host memory. Requires value rows (not
  // MLA) and, for compressed formats, no sink or window rows.
  std::shared_ptr<KvPageStore> page_store;
};

// Accounting, for reports and the TUI's status bar. Page counts are disjoint: private + shared + cached <= total.
struct KvStats {
  size_t bytes_per_token = 0;  // keys and values of one position, over all layers and heads
  size_t page_bytes = 0;
  int pages_total = 0;            // the pool's capacity
  int pages_private = 0;          // referenced by one sequence
  int pages_shared = 0;           // referenced by two or more sequences
  int pages_cached = 0;           // in the prefix index and referenced by no sequence (evictable)
  int pages_peak = 0;             // most pages allocated at once (private, shared or cached) since Create
  size_t sink_bytes = 0;          // f16 sink rows held beside the pages in use
  size_t window_bytes = 0;        // window rows held by the live sequences
  long prefix_lookup_tokens = 0;  // tokens looked up by NewSequenceFromCache, summed over calls
  long prefix_hit_tokens = 0;     // of those, how many were found in the index
  size_t bytes_in_use() const {
    return page_bytes * static_cast<size_t>(pages_private + pages_shared + pages_cached) + sink_bytes + window_bytes;
  }
  size_t bytes_peak() const { return page_bytes * static_cast<size_t>(pages_peak); }
};

class KvCache {
 public:
  static constexpr int kPageTokens = 32;

  // kInvalidArgument for an unknown format or a row size the format cannot hold (from kvquant, with the dims).
  static Result<KvCache> Create(const KvShape& shape, const KvCacheOptions& options);

  const KvShape& shape() const { return shape_; }
  const KvCacheOptions& options() const { return options_; }
  const kvquant::RowCodec& k_codec(int layer, int head) const { return k_codecs_[layer * shape_.n_head_kv + head]; }
  const kvquant::RowCodec& v_codec(int layer, int head) const { return v_codecs_[layer * shape_.n_head_kv + head]; }
  // The codecs of the window rows (window_tokens > 0 only).
  const kvquant::RowCodec& window_k_codec(int layer, int head) const {
    return window_codecs_[2 * (layer * shape_.n_head_kv + head)];
  }
  const kvquant::RowCodec& window_v_codec(int layer, int head) const {
    return window_codecs_[2 * (layer * shape_.n_head_kv + head) + 1];
  }
  // Bytes one token position takes over all layers and heads (keys and values).
  size_t bytes_per_token() const { return token_bytes_; }
  // The window rows' length in effect (KvCacheOptions::window_tokens; 0 when both formats are f16).
  int window_tokens() const { return window_tokens_; }

  // Sequences are small integer ids, reused after Free.
  int NewSequence();
  // A new sequence with the same rows as `seq`, sharing its pages (no copy).
  int Fork(int seq);
  // Releases the sequence's pages (indexed ones stay cached) and its id.
  void Free(int seq);
  int Length(int seq) const { return seqs_[seq].length; }
  // Drops positions >= n_tokens (n_tokens <= Length).
  void Truncate(int seq, int n_tokens);

  // A new sequence holding the longest run of indexed full pages whose tokens are a prefix of `tokens` (shared, no
  // copy), rolled back to max_length positions when longer; its Length says how many positions of `tokens` it
  // already holds. Counts tokens.size() looked up and Length found (KvStats).
  int NewSequenceFromCache(std::span<const int32_t> tokens, int max_length);
  // Adds the full pages of `seq` to the prefix index. tokens: the sequence's tokens, at least Length(seq) of them.
  // A page whose key is already indexed (the same tokens computed twice) is left out.
  void IndexPages(int seq, std::span<const int32_t> tokens);

  // Makes room for position Length(seq) and returns it; the caller then writes that position's rows of every layer
  // and head. kResourceExhausted when the pool is full.
  Result<int> AppendSlot(int seq);

  // Writes one position's key and value rows of one (layer, head), once, right after AppendSlot: encoded with the
  // codecs, as f16 sink rows too when pos < sink_tokens, and into the window ring (window_format) when
  // window_tokens > 0. Distinct positions and heads may be stored from several threads.
  void Store(int seq, int layer, int head, int pos, const float* k, const float* v);
  // The stored (encoded) rows of one position; Store writes them, or the caller with k_codec when the cache has no
  // value rows (MLA).
  uint8_t* KRow(int seq, int layer, int head, int pos);
  uint8_t* VRow(int seq, int layer, int head, int pos);

  // Attention of one KV head's query group over positions [0, n_tokens) of seq: kvquant::Attend over the pages, or
  // kvquant::AttendMixed over the sink rows, the compressed middle and the window rows. Arguments as
  // kvquant::Attend's.
  Status Attend(int seq, int layer, int head, int n_tokens, const float* q, int n_q, float scale, float* out) const;
  // The attention state (kvquant::AttentionState) of the same query group over positions [begin, end) of that range
  // (0 <= begin < end <= n_tokens), read as Attend reads them: pieces of one range attended by different threads and
  // merged with kvquant::FinishAttention give Attend's result up to float rounding. observe_queries is called by the
  // piece that starts at 0, so that each query group is seen once.
  Status AttendState(int seq, int layer, int head, int n_tokens, int begin, int end, const float* q, int n_q,
                     float scale, kvquant::AttentionState* state) const;
  // Positions [0, n_tokens) of one (layer, head), as page-sized spans of the encoded rows (sink rows not used), for
  // kvquant::Attend / AttendSharedKV. Appends to *spans.
  void Spans(int seq, int layer, int head, int n_tokens, std::vector<kvquant::RowSpan>* spans) const;

  // The page ids of seq's positions, in order (page i holds positions [32 i, 32 i + 32)).
  std::span<const int> PageTable(int seq) const { return seqs_[seq].pages; }
  // The pool's capacity in pages (ids are 0 .. max_pages() - 1).
  int max_pages() const { return max_pages_; }
  // Bytes of one page: for each (layer, head) kPageTokens key rows, then the same for the value rows.
  size_t page_bytes() const { return page_bytes_; }

  // Pages allocated now: referenced by a sequence or cached.
  int pages_in_use() const { return pages_in_use_; }
  KvStats Stats() const;

 private:
  struct Sequence {
    std::vector<int> pages;
    int length = 0;
    bool live = false;
    // Window rows (window_tokens_ > 0): positions [window_begin, length) have f16 rows in `window`, position p in slot
    // p % window_slots: for each (layer, head) window_slots key rows, then the same for values. `stored` is 1 + the
    // highest position whose last (layer, head) Store finished (updated atomically by Store).
    int window_begin = 0;
    int window_slots = 0;
    int stored = 0;
    std::vector<uint8_t> window;
  };

  KvCache() = default;
  Result<int> AllocatePage();
  void ReleasePage(int page);
  size_t KOffset(int layer, int head) const;
  size_t VOffset(int layer, int head) const;
  // The parts Attend reads for positions [begin, end) of a range [0, n_tokens): sink rows, pages, window rows (those
  // that are not empty, in that order; their spans in *spans, *sink_span, window_spans). Returns how many.
  int Parts(int seq, int layer, int head, int n_tokens, int begin, int end, kvquant::CodedSpans parts[3],
            std::vector<kvquant::RowSpan>* spans, kvquant::RowSpan* sink_span, kvquant::RowSpan window_spans[2]) const;
  // Spans of positions [begin, end) of one (layer, head), appended to *spans.
  void AppendSpans(int seq, int layer, int head, int begin, int end, std::vector<kvquant::RowSpan>* spans) const;
  // The sink rows of a page holding positions 0..kPageTokens-1: for each (layer, head) sink_tokens_ f16 key rows,
  // then the same for values. Allocated when the page first becomes a sequence's first page.
  uint8_t* SinkK(int page, int layer, int head) const;
  uint8_t* SinkV(int page, int layer, int head) const;
  // The window ring's key and value rows of one (layer, head) in `slots` slots (Sequence::window's layout).
  size_t WindowKOffset(int slots, int layer, int head) const;
  size_t WindowVOffset(int slots, int layer, int head) const;
  // Before appending position `pos`: drops window rows older than the last window_tokens_ stored positions and grows
  // the ring to hold [window_begin, pos].
  void PrepareWindow(Sequence& s, int pos);

  KvShape shape_;
  KvCacheOptions options_;
  std::vector<kvquant::RowCodec> k_codecs_, v_codecs_;  // [layer * n_head_kv + head]
  int sink_tokens_ = 0;                                 // 0 when both formats are f16
  int window_tokens_ = 0;                               // 0 when both formats are f16
  std::vector<kvquant::RowCodec> f16_codecs_;           // f16 codecs for sink key and value rows
  std::vector<kvquant::RowCodec> window_codecs_;        // [2 * (layer * n_head_kv + head) + (0 key, 1 value)]
  size_t window_k_bytes_ = 0, window_v_bytes_ = 0;      // one window row
  size_t sink_bytes_ = 0;                               // one page's sink rows
  std::vector<std::unique_ptr<uint8_t[]>> sink_rows_;   // per page: its sink rows, or null
  size_t k_row_bytes_ = 0, v_row_bytes_ = 0;
  size_t token_bytes_ = 0, page_bytes_ = 0;
  int max_pages_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> pages_;  // allocated on first use
  std::vector<int> refs_;                          // per page: its sequences, plus 1 when indexed; 0 = free
  std::vector<int> free_pages_;
  int pages_in_use_ = 0;
  int pages_peak_ = 0;
  std::vector<Sequence> seqs_;
  PrefixIndex index_;
  uint64_t index_salt_ = 0;  // the first page's parent key: identity, formats, seed
  long prefix_lookup_tokens_ = 0, prefix_hit_tokens_ = 0;
};

}  // namespace lr::inference
