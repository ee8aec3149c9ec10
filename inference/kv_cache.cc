#include "inference/kv_cache.h"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstring>

namespace lr::inference {

Result<KvCache> KvCache::Create(const KvShape& shape, const KvCacheOptions& options) {
  if (shape.n_layer < 1 || shape.n_head_kv < 1 || shape.k_dim < 1 || shape.v_dim < 0)
    return InvalidArgument("KV cache: layers, KV heads and key row size must be positive, value row size >= 0");
  if (options.max_tokens < 1) return InvalidArgument("KV cache: max_tokens must be positive");
  if (options.sink_tokens < 0 || options.sink_tokens > kPageTokens)
    return InvalidArgument("KV cache: sink_tokens is " + std::to_string(options.sink_tokens) + "; expected 0.." +
                           std::to_string(kPageTokens));
  const bool all_f16 = options.k_format == "f16" && options.v_format == "f16";
  if (options.page_store != nullptr && !all_f16 &&
      (shape.v_dim == 0 || options.sink_tokens > 0 || options.window_tokens > 0))
    return InvalidArgument(
        "KV cache on the device: compressed rows without sink or window rows, and f16 rows for caches without value "
        "rows (MLA); got " +
        options.k_format + " / " + options.v_format + " with " + std::to_string(options.sink_tokens) + " sink and " +
        std::to_string(options.window_tokens) + " window rows");
  if (options.window_tokens < 0)
    return InvalidArgument("KV cache: window_tokens is " + std::to_string(options.window_tokens) + "; expected >= 0");
  if ((options.sink_tokens > 0 || options.window_tokens > 0) && !all_f16 && shape.v_dim == 0)
    return InvalidArgument("KV cache: sink and window rows are not supported for caches without value rows (MLA)");
  const KvCalibration* cal = options.calibration.get();
  if (cal != nullptr && (cal->shape.n_layer != shape.n_layer || cal->shape.n_head_kv != shape.n_head_kv ||
                         cal->shape.k_dim != shape.k_dim || cal->shape.v_dim != shape.v_dim))
    return InvalidArgument(
        "KV cache: the calibration's shape does not match the cache's (layers, KV heads, row sizes)");
  KvCache c;
  c.shape_ = shape;
  c.options_ = options;
  for (int layer = 0; layer < shape.n_layer; ++layer) {
    for (int head = 0; head < shape.n_head_kv; ++head) {
      auto k = kvquant::RowCodec::Create(options.k_format, shape.k_dim, options.seed, layer, head);
      if (!k.ok()) return k.status().WithContext("KV cache keys (--ctk)");
      if (cal != nullptr && !k->is_f16()) {
        LR_RETURN_IF_ERROR(k->SetCenter(cal->KCenter(layer, head)));
        LR_RETURN_IF_ERROR(k->SetWeights(cal->KWeights(layer, head)));
        LR_RETURN_IF_ERROR(k->SetRotatingCenter(cal->KRotatingCenter(layer, head)));
      }
      c.k_codecs_.push_back(std::move(k).value());
      if (shape.v_dim == 0) continue;
      auto v = kvquant::RowCodec::Create(options.v_format, shape.v_dim, options.seed, layer, head);
      if (!v.ok()) return v.status().WithContext("KV cache values (--ctv)");
      if (cal != nullptr && !v->is_f16()) {
        LR_RETURN_IF_ERROR(v->SetCenter(cal->VCenter(layer, head)));
        LR_RETURN_IF_ERROR(v->SetWeights(cal->VWeights(layer, head)));
      }
      c.v_codecs_.push_back(std::move(v).value());
    }
  }
  c.sink_tokens_ = all_f16 ? 0 : options.sink_tokens;
  c.window_tokens_ = all_f16 ? 0 : options.window_tokens;
  if (c.sink_tokens_ > 0) {
    for (int dim : {shape.k_dim, shape.v_dim}) {
      auto f16 = kvquant::RowCodec::Create("f16", dim, options.seed, 0, 0);
      if (!f16.ok()) return f16.status().WithContext("KV cache sink rows");
      c.f16_codecs_.push_back(std::move(f16).value());
    }
  }
  if (c.window_tokens_ > 0) {
    for (int layer = 0; layer < shape.n_layer; ++layer) {
      for (int head = 0; head < shape.n_head_kv; ++head) {
        for (bool key : {true, false}) {
          auto w = kvquant::RowCodec::Create(options.window_format, key ? shape.k_dim : shape.v_dim, options.seed,
                                             layer, head);
          if (!w.ok()) return w.status().WithContext("KV cache window rows (--kv-window-format)");
          if (cal != nullptr && !w->is_f16()) {
            LR_RETURN_IF_ERROR(w->SetCenter(key ? cal->KCenter(layer, head) : cal->VCenter(layer, head)));
            LR_RETURN_IF_ERROR(w->SetWeights(key ? cal->KWeights(layer, head) : cal->VWeights(layer, head)));
            if (key) LR_RETURN_IF_ERROR(w->SetRotatingCenter(cal->KRotatingCenter(layer, head)));
          }
          c.window_codecs_.push_back(std::move(w).value());
        }
      }
    }
    c.window_k_bytes_ = c.window_codecs_[0].row_bytes();
    c.window_v_bytes_ = c.window_codecs_[1].row_bytes();
  }
  c.k_row_bytes_ = c.k_codecs_[0].row_bytes();
  c.v_row_bytes_ = shape.v_dim == 0 ? 0 : c.v_codecs_[0].row_bytes();
  const size_t heads = static_cast<size_t>(shape.n_layer) * shape.n_head_kv;
  c.token_bytes_ = heads * (c.k_row_bytes_ + c.v_row_bytes_);
  c.page_bytes_ = c.token_bytes_ * kPageTokens;
  if (c.sink_tokens_ > 0)
    c.sink_bytes_ = heads * c.sink_tokens_ * (c.f16_codecs_[0].row_bytes() + c.f16_codecs_[1].row_bytes());
  c.max_pages_ = (options.max_tokens + kPageTokens - 1) / kPageTokens;
  c.index_salt_ = PrefixIndex::Salt(options.identity + '\n' + options.k_format + '\n' + options.v_format + '\n' +
                                    std::to_string(options.seed) + '\n' + std::to_string(c.sink_tokens_) + '\n' +
                                    std::to_string(c.window_tokens_) + '\n' + options.window_format);
  return c;
}

int KvCache::NewSequence() {
  Sequence fresh;
  fresh.live = true;
  for (size_t i = 0; i < seqs_.size(); ++i) {
    if (!seqs_[i].live) {
      seqs_[i] = std::move(fresh);
      return static_cast<int>(i);
    }
  }
  seqs_.push_back(std::move(fresh));
  return static_cast<int>(seqs_.size() - 1);
}

int KvCache::Fork(int seq) {
  assert(seqs_[seq].live);
  const int id = NewSequence();
  seqs_[id].pages = seqs_[seq].pages;
  seqs_[id].length = seqs_[seq].length;
  seqs_[id].window_begin = seqs_[seq].window_begin;
  seqs_[id].window_slots = seqs_[seq].window_slots;
  seqs_[id].stored = seqs_[seq].stored;
  seqs_[id].window = seqs_[seq].window;  // a copy: the window rows are the sequence's own
  for (int p : seqs_[id].pages) ++refs_[p];
  return id;
}

void KvCache::Free(int seq) {
  Truncate(seq, 0);
  seqs_[seq] = Sequence{};
}

void KvCache::Truncate(int seq, int n_tokens) {
  Sequence& s = seqs_[seq];
  assert(s.live && n_tokens >= 0 && n_tokens <= s.length);
  const size_t keep = static_cast<size_t>((n_tokens + kPageTokens - 1) / kPageTokens);
  for (size_t i = keep; i < s.pages.size(); ++i) ReleasePage(s.pages[i]);
  s.pages.resize(keep);
  s.length = n_tokens;
  s.window_begin = std::min(s.window_begin, n_tokens);
  s.stored = std::min(s.stored, n_tokens);
}

int KvCache::NewSequenceFromCache(std::span<const int32_t> tokens, int max_length) {
  const int id = NewSequence();
  Sequence& s = seqs_[id];
  uint64_t key = index_salt_;
  for (size_t end = kPageTokens; end <= tokens.size(); end += kPageTokens) {
    key = PrefixIndex::PageKey(key, tokens.subspan(end - kPageTokens, kPageTokens));
    const std::optional<int> page = index_.Find(key);
    if (!page) break;
    ++refs_[*page];
    s.pages.push_back(*page);
    s.length += kPageTokens;
  }
  s.window_begin = s.stored = s.length;  // no window rows for cached pages
  if (s.length > max_length) Truncate(id, std::max(0, max_length));
  prefix_lookup_tokens_ += static_cast<long>(tokens.size());
  prefix_hit_tokens_ += s.length;
  return id;
}

void KvCache::IndexPages(int seq, std::span<const int32_t> tokens) {
  const Sequence& s = seqs_[seq];
  assert(s.live && tokens.size() >= static_cast<size_t>(s.length));
  uint64_t key = index_salt_;
  for (int i = 0; (i + 1) * kPageTokens <= s.length; ++i) {
    key = PrefixIndex::PageKey(key, tokens.subspan(static_cast<size_t>(i) * kPageTokens, kPageTokens));
    if (index_.Insert(key, s.pages[i])) ++refs_[s.pages[i]];
  }
}

KvStats KvCache::Stats() const {
  KvStats st;
  st.bytes_per_token = token_bytes_;
  st.page_bytes = page_bytes_;
  st.pages_total = max_pages_;
  st.pages_peak = pages_peak_;
  st.prefix_lookup_tokens = prefix_lookup_tokens_;
  st.prefix_hit_tokens = prefix_hit_tokens_;
  for (const Sequence& s : seqs_) st.window_bytes += s.window.size();
  for (size_t page = 0; page < refs_.size(); ++page) {
    if (refs_[page] > 0 && sink_rows_[page] != nullptr) st.sink_bytes += sink_bytes_;
    const int users = refs_[page] - (index_.Holds(static_cast<int>(page)) ? 1 : 0);  // sequences referencing it
    if (users == 1) {
      ++st.pages_private;
    } else if (users > 1) {
      ++st.pages_shared;
    } else if (refs_[page] == 1) {
      ++st.pages_cached;
    }
  }
  return st;
}

Result<int> KvCache::AllocatePage() {
  if (free_pages_.empty() && static_cast<int>(pages_.size()) == max_pages_) {
    // Pool full: evict the least recently used cached page (one only the index references), if any.
    const std::optional<int> evicted = index_.EvictLeastRecent([this](int page) { return refs_[page] == 1; });
    if (evicted) ReleasePage(*evicted);
  }
  int page;
  if (!free_pages_.empty()) {
    page = free_pages_.back();
    free_pages_.pop_back();
  } else if (static_cast<int>(pages_.size()) < max_pages_) {
    page = static_cast<int>(pages_.size());
    pages_.push_back(options_.page_store != nullptr ? nullptr : std::make_unique<uint8_t[]>(page_bytes_));
    sink_rows_.emplace_back();
    refs_.push_back(0);
  } else {
    return ResourceExhausted("KV cache full: all " + std::to_string(max_pages_ * kPageTokens) +
                             " token positions are in use by sequences (raise --kv-budget or the cache size)");
  }
  refs_[page] = 1;
  ++pages_in_use_;
  pages_peak_ = std::max(pages_peak_, pages_in_use_);
  return page;
}

void KvCache::ReleasePage(int page) {
  assert(refs_[page] > 0);
  if (--refs_[page] == 0) {
    sink_rows_[page].reset();
    free_pages_.push_back(page);
    --pages_in_use_;
  }
}

Result<int> KvCache::AppendSlot(int seq) {
  Sequence& s = seqs_[seq];
  assert(s.live);
  const int pos = s.length;
  if (window_tokens_ > 0) PrepareWindow(s, pos);
  if (pos % kPageTokens == 0) {
    LR_ASSIGN_OR_RETURN(int page, AllocatePage());
    s.pages.push_back(page);
    if (pos == 0 && sink_tokens_ > 0) sink_rows_[page] = std::make_unique<uint8_t[]>(sink_bytes_);
  } else if (refs_[s.pages.back()] > 1) {  // shared partial page: copy before writing into it
    LR_ASSIGN_OR_RETURN(int page, AllocatePage());
    const int old = s.pages.back();
    if (options_.page_store != nullptr) {
      options_.page_store->CopyPage(old, page);
    } else {
      std::memcpy(pages_[page].get(), pages_[old].get(), page_bytes_);
    }
    if (sink_rows_[old] != nullptr) {
      sink_rows_[page] = std::make_unique<uint8_t[]>(sink_bytes_);
      std::memcpy(sink_rows_[page].get(), sink_rows_[old].get(), sink_bytes_);
    }
    ReleasePage(old);
    s.pages.back() = page;
  }
  ++s.length;
  return pos;
}

void KvCache::Store(int seq, int layer, int head, int pos, const float* k, const float* v) {
  k_codec(layer, head).EncodeRow(k, KRow(seq, layer, head, pos), pos);
  if (shape_.v_dim > 0) v_codec(layer, head).EncodeRow(v, VRow(seq, layer, head, pos), pos);
  Sequence& s = seqs_[seq];
  if (pos < sink_tokens_) {
    f16_codecs_[0].EncodeRow(k, SinkK(s.pages[0], layer, head) + pos * f16_codecs_[0].row_bytes());
    f16_codecs_[1].EncodeRow(v, SinkV(s.pages[0], layer, head) + pos * f16_codecs_[1].row_bytes());
  }
  if (window_tokens_ > 0) {
    const size_t slot = static_cast<size_t>(pos % s.window_slots);
    window_k_codec(layer, head)
        .EncodeRow(k, s.window.data() + WindowKOffset(s.window_slots, layer, head) + slot * window_k_bytes_, pos);
    window_v_codec(layer, head)
        .EncodeRow(v, s.window.data() + WindowVOffset(s.window_slots, layer, head) + slot * window_v_bytes_, pos);
    if (layer == shape_.n_layer - 1 && head == shape_.n_head_kv - 1) {
      std::atomic_ref<int> stored(s.stored);
      int seen = stored.load(std::memory_order_relaxed);
      while (seen < pos + 1 && !stored.compare_exchange_weak(seen, pos + 1, std::memory_order_relaxed)) {
      }
    }
  }
}

size_t KvCache::WindowKOffset(int slots, int layer, int head) const {
  const size_t h = static_cast<size_t>(layer) * shape_.n_head_kv + head;
  return h * slots * window_k_bytes_;
}

size_t KvCache::WindowVOffset(int slots, int layer, int head) const {
  const size_t heads = static_cast<size_t>(shape_.n_layer) * shape_.n_head_kv;
  const size_t h = static_cast<size_t>(layer) * shape_.n_head_kv + head;
  return (heads * window_k_bytes_ + h * window_v_bytes_) * slots;
}

void KvCache::PrepareWindow(Sequence& s, int pos) {
  // Every position below `stored` has its rows; the tokens appended from here on attend to at most window_tokens_
  // positions before them, so older window rows are no longer read.
  s.window_begin = std::min(pos, std::max(s.window_begin, s.stored - window_tokens_));
  const int need = pos + 1 - s.window_begin, keep = std::max(need, window_tokens_ + 1);
  int slots;
  if (need > s.window_slots) {
    slots = std::max(keep, 2 * s.window_slots);
  } else if (s.window_slots > 2 * keep) {  // after a long batch: back to about the window
    slots = keep;
  } else {
    return;
  }
  const size_t kw = window_k_bytes_, vw = window_v_bytes_;
  const size_t heads = static_cast<size_t>(shape_.n_layer) * shape_.n_head_kv;
  std::vector<uint8_t> ring(heads * slots * (kw + vw));
  for (int layer = 0; layer < shape_.n_layer; ++layer) {
    for (int head = 0; head < shape_.n_head_kv; ++head) {
      for (int p = s.window_begin; p < pos; ++p) {
        const size_t from = static_cast<size_t>(p % s.window_slots), to = static_cast<size_t>(p % slots);
        std::memcpy(&ring[WindowKOffset(slots, layer, head) + to * kw],
                    &s.window[WindowKOffset(s.window_slots, layer, head) + from * kw], kw);
        std::memcpy(&ring[WindowVOffset(slots, layer, head) + to * vw],
                    &s.window[WindowVOffset(s.window_slots, layer, head) + from * vw], vw);
      }
    }
  }
  s.window.swap(ring);
  s.window_slots = slots;
}

uint8_t* KvCache::SinkK(int page, int layer, int head) const {
  const size_t h = static_cast<size_t>(layer) * shape_.n_head_kv + head;
  return sink_rows_[page].get() + h * sink_tokens_ * f16_codecs_[0].row_bytes();
}

uint8_t* KvCache::SinkV(int page, int layer, int head) const {
  const size_t heads = static_cast<size_t>(shape_.n_layer) * shape_.n_head_kv;
  const size_t h = static_cast<size_t>(layer) * shape_.n_head_kv + head;
  return sink_rows_[page].get() + heads * sink_tokens_ * f16_codecs_[0].row_bytes() +
         h * sink_tokens_ * f16_codecs_[1].row_bytes();
}

// The parts of positions [begin, end) of the range [0, n_tokens) a token attends to: [0, sink) from the sink rows,
// [sink, window) from the pages, [window, n_tokens) from the window ring, each cut to [begin, end). The spans live
// in *spans, *sink_span and window_spans.
int KvCache::Parts(int seq, int layer, int head, int n_tokens, int begin, int end, kvquant::CodedSpans parts[3],
                   std::vector<kvquant::RowSpan>* spans, kvquant::RowSpan* sink_span,
                   kvquant::RowSpan window_spans[2]) const {
  const Sequence& s = seqs_[seq];
  const int sink = std::min(sink_tokens_, n_tokens);
  const int window =
      window_tokens_ > 0 ? std::max({sink, n_tokens - window_tokens_, std::min(s.window_begin, n_tokens)}) : n_tokens;
  int n_parts = 0;
  const size_t k16 = f16_codecs_.empty() ? 0 : f16_codecs_[0].row_bytes();
  const size_t v16 = f16_codecs_.empty() ? 0 : f16_codecs_[1].row_bytes();
  if (const int b = std::max(0, begin), e = std::min(sink, end); b < e) {
    *sink_span = {SinkK(s.pages[0], layer, head) + b * k16, SinkV(s.pages[0], layer, head) + b * v16, e - b, b};
    parts[n_parts++] = {&f16_codecs_[0], &f16_codecs_[1], {sink_span, 1}};
  }
  spans->clear();
  if (const int b = std::max(sink, begin), e = std::min(window, end); b < e) {
    AppendSpans(seq, layer, head, b, e, spans);
    parts[n_parts++] = {&k_codec(layer, head), &v_codec(layer, head), *spans};
  }
  if (const int b = std::max(window, begin), e = std::min(n_tokens, end); b < e) {
    // The ring's slots of positions [b, e): one run, or two where it wraps around.
    const uint8_t* k = s.window.data() + WindowKOffset(s.window_slots, layer, head);
    const uint8_t* v = s.window.data() + WindowVOffset(s.window_slots, layer, head);
    const int first = b % s.window_slots, count = e - b;
    const int run = std::min(count, s.window_slots - first);
    window_spans[0] = {k + first * window_k_bytes_, v + first * window_v_bytes_, run, b};
    window_spans[1] = {k, v, count - run, b + run};
    parts[n_parts++] = {&window_k_codec(layer, head), &window_v_codec(layer, head), {window_spans, 2}};
  }
  return n_parts;
}

Status KvCache::Attend(int seq, int layer, int head, int n_tokens, const float* q, int n_q, float scale,
                       float* out) const {
  if (options_.observe_queries) options_.observe_queries(layer, head, q, n_q);
  thread_local std::vector<kvquant::RowSpan> spans;
  kvquant::CodedSpans parts[3];
  kvquant::RowSpan sink_span{}, window_spans[2]{};
  const int n_parts = Parts(seq, layer, head, n_tokens, 0, n_tokens, parts, &spans, &sink_span, window_spans);
  if (n_parts == 1 && parts[0].k == &k_codec(layer, head))
    return kvquant::Attend(k_codec(layer, head), v_codec(layer, head), q, n_q, spans, scale, out);
  return kvquant::AttendMixed({parts, static_cast<size_t>(n_parts)}, q, n_q, scale, out);
}

Status KvCache::AttendState(int seq, int layer, int head, int n_tokens, int begin, int end, const float* q, int n_q,
                            float scale, kvquant::AttentionState* state) const {
  if (options_.observe_queries && begin == 0) options_.observe_queries(layer, head, q, n_q);
  thread_local std::vector<kvquant::RowSpan> spans;
  kvquant::CodedSpans parts[3];
  kvquant::RowSpan sink_span{}, window_spans[2]{};
  const int n_parts = Parts(seq, layer, head, n_tokens, begin, end, parts, &spans, &sink_span, window_spans);
  return kvquant::AttendMixedState({parts, static_cast<size_t>(n_parts)}, q, n_q, scale, state);
}

size_t KvCache::KOffset(int layer, int head) const {
  const size_t h = static_cast<size_t>(layer) * shape_.n_head_kv + head;
  return h * kPageTokens * k_row_bytes_;
}

size_t KvCache::VOffset(int layer, int head) const {
  const size_t heads = static_cast<size_t>(shape_.n_layer) * shape_.n_head_kv;
  const size_t h = static_cast<size_t>(layer) * shape_.n_head_kv + head;
  return heads * kPageTokens * k_row_bytes_ + h * kPageTokens * v_row_bytes_;
}

uint8_t* KvCache::KRow(int seq, int layer, int head, int pos) {
  const int page = seqs_[seq].pages[pos / kPageTokens];
  return pages_[page].get() + KOffset(layer, head) + static_cast<size_t>(pos % kPageTokens) * k_row_bytes_;
}

uint8_t* KvCache::VRow(int seq, int layer, int head, int pos) {
  const int page = seqs_[seq].pages[pos / kPageTokens];
  return pages_[page].get() + VOffset(layer, head) + static_cast<size_t>(pos % kPageTokens) * v_row_bytes_;
}

void KvCache::Spans(int seq, int layer, int head, int n_tokens, std::vector<kvquant::RowSpan>* spans) const {
  AppendSpans(seq, layer, head, 0, n_tokens, spans);
}

void KvCache::AppendSpans(int seq, int layer, int head, int begin, int end,
                          std::vector<kvquant::RowSpan>* spans) const {
  const Sequence& s = seqs_[seq];
  assert(0 <= begin && begin <= end && end <= s.length);
  const size_t k_off = KOffset(layer, head), v_off = VOffset(layer, head);
  for (int pos = begin; pos < end;) {
    const int in_page = pos % kPageTokens;
    const int n = std::min(kPageTokens - in_page, end - pos);
    const uint8_t* page = pages_[s.pages[pos / kPageTokens]].get();
    spans->push_back({page + k_off + in_page * k_row_bytes_, page + v_off + in_page * v_row_bytes_, n, pos});
    pos += n;
  }
}

}  // namespace lr::inference
