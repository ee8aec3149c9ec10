// The paged KV cache: every sequence's keys and values, compressed by kvquant's row codecs.
//
// Storage is a pool of pages. A page holds kPageTokens consecutive token positions of one sequence for every layer
// and KV head: for each (layer, head), kPageTokens key rows, contiguous (one kvquant::RowSpan), then the same for
// value rows. A sequence is a page table (page ids in position order) and a length. Pages carry reference counts:
// Fork() makes a new sequence that shares all pages of another (a metadata copy), and a sequence that appends into
// a page it shares first copies that page (copy on write). Truncate() rolls a sequence back. This is what prefix
// sharing builds on: n choices of one prompt are forks of the prefilled prompt.
//
// Each (layer, KV head) has its own RowCodec (kvquant's rotations are seeded per layer and head); keys and values use
// the formats named by KvCacheOptions (`--ctk` / `--ctv`), f16 by default.
//
// Not thread-safe for changes (NewSequence, Fork, Free, Truncate, AppendSlot); reading and writing rows of distinct
// positions from several threads is fine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "kvquant/kvquant.h"

namespace lr::inference {

struct KvCacheOptions {
  std::string k_format = "f16";
  std::string v_format = "f16";
  int max_tokens = 4096;  // pool size in token positions, summed over the pages of all sequences
  uint64_t seed = 0;      // the codecs' rotations
};

// The cache's shape, from the model (inference/model.h fills it from its config).
struct KvShape {
  int n_layer = 0;
  int n_head_kv = 0;
  int k_dim = 0;  // values per key row
  int v_dim = 0;  // values per value row; 0: no value rows (MLA, whose values are part of the key row)
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
  // Bytes one token position takes over all layers and heads (keys and values).
  size_t bytes_per_token() const { return token_bytes_; }

  // Sequences are small integer ids, reused after Free.
  int NewSequence();
  // A new sequence with the same rows as `seq`, sharing its pages.
  int Fork(int seq);
  void Free(int seq);
  int Length(int seq) const { return seqs_[seq].length; }
  // Drops positions >= n_tokens (n_tokens <= Length).
  void Truncate(int seq, int n_tokens);

  // Makes room for position Length(seq) and returns it; the caller then writes that position's rows of every layer
  // and head. kResourceExhausted when the pool is full.
  Result<int> AppendSlot(int seq);

  // The stored rows of one position (written once, by the forward pass, right after AppendSlot).
  uint8_t* KRow(int seq, int layer, int head, int pos);
  uint8_t* VRow(int seq, int layer, int head, int pos);

  // Positions [0, n_tokens) of one (layer, head), as page-sized spans for kvquant::Attend. Appends to *spans.
  void Spans(int seq, int layer, int head, int n_tokens, std::vector<kvquant::RowSpan>* spans) const;

  int pages_in_use() const { return pages_in_use_; }

 private:
  struct Sequence {
    std::vector<int> pages;
    int length = 0;
    bool live = false;
  };

  KvCache() = default;
  Result<int> AllocatePage();
  void ReleasePage(int page);
  size_t KOffset(int layer, int head) const;
  size_t VOffset(int layer, int head) const;

  KvShape shape_;
  KvCacheOptions options_;
  std::vector<kvquant::RowCodec> k_codecs_, v_codecs_;  // [layer * n_head_kv + head]
  size_t k_row_bytes_ = 0, v_row_bytes_ = 0;
  size_t token_bytes_ = 0, page_bytes_ = 0;
  int max_pages_ = 0;
  std::vector<std::unique_ptr<uint8_t[]>> pages_;  // allocated on first use
  std::vector<int> refs_;                          // per page; 0 = free
  std::vector<int> free_pages_;
  int pages_in_use_ = 0;
  std::vector<Sequence> seqs_;
};

}  // namespace lr::inference
