// The paged KV cache: fork / append / roll back / release invariants and reference counts on a synthetic shape; the
// prefix index inside the cache (hits, the budget, LRU eviction that never touches a page in use); and, on a tiny
// fixture for every KV format, that a fork and a prefix hit give exactly the logits of an unshared cold run.
#include "inference/kv_cache.h"

#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "inference/model.h"
#include "kvquant/attention_reference.h"

namespace lr::inference {
namespace {

constexpr int kPage = KvCache::kPageTokens;

KvCache SmallCache(int max_tokens) {
  KvCacheOptions o;
  o.max_tokens = max_tokens;
  o.identity = "synthetic";
  return std::move(KvCache::Create(KvShape{2, 1, 32, 32}, o)).value();
}

// Appends n positions to seq, marking each position's rows with `mark` + position.
void Append(KvCache& cache, int seq, int n, uint8_t mark) {
  for (int i = 0; i < n; ++i) {
    Result<int> pos = cache.AppendSlot(seq);
    ASSERT_TRUE(pos.ok()) << pos.status().ToString();
    for (int layer = 0; layer < 2; ++layer) {
      std::memset(cache.KRow(seq, layer, 0, *pos), mark + *pos, 8);
      std::memset(cache.VRow(seq, layer, 0, *pos), mark + *pos + 1, 8);
    }
  }
}

// Whether positions [0, n) of seq hold the marks Append wrote.
bool Holds(KvCache& cache, int seq, int n, uint8_t mark) {
  for (int pos = 0; pos < n; ++pos)
    for (int layer = 0; layer < 2; ++layer)
      if (cache.KRow(seq, layer, 0, pos)[7] != static_cast<uint8_t>(mark + pos) ||
          cache.VRow(seq, layer, 0, pos)[7] != static_cast<uint8_t>(mark + pos + 1))
        return false;
  return true;
}

std::vector<int32_t> Tokens(int n, int32_t seed) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((seed + 37 * i) % 251);
  return t;
}

TEST(KvCache, ForkSharesPagesAndCopiesTheTailOnWrite) {
  KvCache cache = SmallCache(8 * kPage);
  const int a = cache.NewSequence();
  Append(cache, a, 40, 0);
  EXPECT_EQ(cache.pages_in_use(), 2);
  const int b = cache.Fork(a);
  EXPECT_EQ(cache.Length(b), 40);
  EXPECT_EQ(cache.pages_in_use(), 2);  // nothing copied
  KvStats st = cache.Stats();
  EXPECT_EQ(st.pages_shared, 2);
  EXPECT_EQ(st.pages_private, 0);
  // b writes into the shared partial page: it gets its own copy; a's rows stay.
  Append(cache, b, 1, 100);
  EXPECT_EQ(cache.pages_in_use(), 3);
  st = cache.Stats();
  EXPECT_EQ(st.pages_shared, 1);
  EXPECT_EQ(st.pages_private, 2);
  EXPECT_TRUE(Holds(cache, b, 40, 0));
  EXPECT_EQ(cache.KRow(b, 0, 0, 40)[0], static_cast<uint8_t>(140));
  Append(cache, a, 1, 50);
  EXPECT_TRUE(Holds(cache, a, 40, 0));
  EXPECT_EQ(cache.KRow(a, 0, 0, 40)[0], static_cast<uint8_t>(90));
  EXPECT_EQ(cache.pages_in_use(), 3);  // a's tail was no longer shared: written in place
  cache.Free(a);
  cache.Free(b);
  EXPECT_EQ(cache.pages_in_use(), 0);
  EXPECT_EQ(cache.Stats().pages_peak, 3);
}

TEST(KvCache, TruncateRollsBackAndReleasesWholePages) {
  KvCache cache = SmallCache(4 * kPage);
  const int a = cache.NewSequence();
  Append(cache, a, 70, 0);
  EXPECT_EQ(cache.pages_in_use(), 3);
  cache.Truncate(a, 33);
  EXPECT_EQ(cache.Length(a), 33);
  EXPECT_EQ(cache.pages_in_use(), 2);
  cache.Truncate(a, 32);
  EXPECT_EQ(cache.pages_in_use(), 1);
  Append(cache, a, 10, 7);  // positions 32..41 rewritten
  EXPECT_TRUE(Holds(cache, a, 32, 0));
  EXPECT_EQ(cache.KRow(a, 1, 0, 32)[0], static_cast<uint8_t>(39));
  cache.Free(a);
  EXPECT_EQ(cache.pages_in_use(), 0);
  // Ids are reused after Free.
  EXPECT_EQ(cache.NewSequence(), a);
}

TEST(KvCache, FullPoolIsAnErrorAndRecovers) {
  KvCache cache = SmallCache(2 * kPage);
  const int a = cache.NewSequence();
  Append(cache, a, 2 * kPage, 0);
  Result<int> more = cache.AppendSlot(a);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(cache.Length(a), 2 * kPage);
  cache.Truncate(a, kPage);
  EXPECT_TRUE(cache.AppendSlot(a).ok());
  cache.Free(a);
  EXPECT_EQ(cache.pages_in_use(), 0);
}

TEST(KvCache, PrefixHitsStartFromCachedFullPages) {
  KvCache cache = SmallCache(8 * kPage);
  const std::vector<int32_t> t = Tokens(3 * kPage + 5, 1);
  const int a = cache.NewSequence();
  Append(cache, a, static_cast<int>(t.size()), 0);
  cache.IndexPages(a, t);
  cache.Free(a);
  KvStats st = cache.Stats();
  EXPECT_EQ(st.pages_cached, 3);  // full pages only; the partial fourth was released
  EXPECT_EQ(st.pages_private + st.pages_shared, 0);
  EXPECT_EQ(cache.pages_in_use(), 3);

  // The whole prefix, then capped one short of it (a prompt fully cached still computes its last token).
  const int b = cache.NewSequenceFromCache(t, static_cast<int>(t.size()));
  EXPECT_EQ(cache.Length(b), 3 * kPage);
  EXPECT_TRUE(Holds(cache, b, 3 * kPage, 0));
  const std::vector<int32_t> exact(t.begin(), t.begin() + 2 * kPage);
  const int c = cache.NewSequenceFromCache(exact, 2 * kPage - 1);
  EXPECT_EQ(cache.Length(c), 2 * kPage - 1);
  st = cache.Stats();
  EXPECT_EQ(st.pages_shared, 2);   // pages 0 and 1: b and c
  EXPECT_EQ(st.pages_private, 1);  // b's page 2
  // c appends into the shared page 1 it was rolled back into: copy on write, the cached rows stay.
  Append(cache, c, 1, 200);
  EXPECT_TRUE(Holds(cache, b, 3 * kPage, 0));

  // A token changed in the second page: only the first page matches.
  std::vector<int32_t> changed = t;
  changed[kPage + 3] += 1;
  const int d = cache.NewSequenceFromCache(changed, static_cast<int>(changed.size()));
  EXPECT_EQ(cache.Length(d), kPage);
  st = cache.Stats();
  EXPECT_EQ(st.prefix_lookup_tokens, static_cast<long>(2 * t.size() + exact.size()));
  EXPECT_EQ(st.prefix_hit_tokens, 3 * kPage + 2 * kPage - 1 + kPage);
  for (int seq : {b, c, d}) cache.Free(seq);
  st = cache.Stats();
  EXPECT_EQ(st.pages_private + st.pages_shared, 0);
  EXPECT_EQ(st.pages_cached, 3);
  EXPECT_EQ(cache.pages_in_use(), 3);
}

TEST(KvCache, IndexingTheSameTokensTwiceKeepsTheFirstPages) {
  KvCache cache = SmallCache(8 * kPage);
  const std::vector<int32_t> t = Tokens(2 * kPage, 3);
  const int a = cache.NewSequence(), b = cache.NewSequence();
  Append(cache, a, 2 * kPage, 0);
  Append(cache, b, 2 * kPage, 9);
  cache.IndexPages(a, t);
  cache.IndexPages(b, t);
  cache.Free(a);
  cache.Free(b);
  EXPECT_EQ(cache.pages_in_use(), 2);  // b's pages were not indexed: released
  const int c = cache.NewSequenceFromCache(t, 2 * kPage);
  EXPECT_TRUE(Holds(cache, c, 2 * kPage, 0));
  cache.Free(c);
}

TEST(KvCache, EvictionIsLeastRecentlyUsedAndSparesPagesInUse) {
  KvCache cache = SmallCache(4 * kPage);  // the budget: 4 pages
  const std::vector<int32_t> t = Tokens(3 * kPage, 5);
  const int a = cache.NewSequence();
  Append(cache, a, 3 * kPage, 0);
  cache.IndexPages(a, t);
  cache.Free(a);
  // A sequence holds the first two cached pages; the third is cached and unreferenced.
  const int held = cache.NewSequenceFromCache(t, 2 * kPage);
  ASSERT_EQ(cache.Length(held), 2 * kPage);
  // A new sequence needs three pages: the free one, then the cached third (evicted), then none is left.
  const int b = cache.NewSequence();
  Append(cache, b, 2 * kPage, 77);
  EXPECT_EQ(cache.Stats().pages_cached, 0);
  Result<int> more = cache.AppendSlot(b);
  ASSERT_FALSE(more.ok());
  EXPECT_EQ(more.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Holds(cache, held, 2 * kPage, 0));
  EXPECT_TRUE(Holds(cache, b, 2 * kPage, 77));
  KvStats st = cache.Stats();
  EXPECT_LE(st.pages_peak, st.pages_total);
  EXPECT_EQ(st.pages_total, 4);
  // The evicted page is gone from the index: a lookup stops after the two held pages.
  const int again = cache.NewSequenceFromCache(t, 3 * kPage);
  EXPECT_EQ(cache.Length(again), 2 * kPage);
  for (int seq : {held, b, again}) cache.Free(seq);

  // LRU: of two cached chains, the one looked up last survives.
  KvCache lru = SmallCache(4 * kPage);
  const std::vector<int32_t> x = Tokens(kPage, 11), y = Tokens(kPage, 12);
  for (const std::vector<int32_t>* tokens : {&x, &y}) {
    const int s = lru.NewSequence();
    Append(lru, s, kPage, 0);
    lru.IndexPages(s, *tokens);
    lru.Free(s);
  }
  lru.Free(lru.NewSequenceFromCache(x, kPage));  // x is now the most recently used
  const int big = lru.NewSequence();
  Append(lru, big, 3 * kPage, 0);  // two free pages, then one eviction: y's
  lru.Free(big);
  const int hx = lru.NewSequenceFromCache(x, kPage), hy = lru.NewSequenceFromCache(y, kPage);
  EXPECT_EQ(lru.Length(hx), kPage);
  EXPECT_EQ(lru.Length(hy), 0);
  lru.Free(hx);
  lru.Free(hy);
}

// Sink rows: attention reads the first sink_tokens positions as f16 rows and the rest from their compressed rows
// (checked against exact attention on rows decoded that way); a fork that writes into the first page copies them
// with it; they are counted in the stats; MLA-shaped caches refuse them.
TEST(KvCache, SinkRowsAreReadInsteadOfTheFirstCompressedRows) {
  KvCacheOptions o;
  o.k_format = "tq3";
  o.v_format = "hx3";
  o.max_tokens = 4 * kPage;
  o.sink_tokens = 4;
  Result<KvCache> created = KvCache::Create(KvShape{2, 2, 64, 64}, o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  KvCache& cache = *created;
  const int a = cache.NewSequence();
  const int n = 40, layer = 1, head = 1;
  std::vector<float> k(n * 64), v(n * 64), q(2 * 64);
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::sin(0.37f * i) + (i % 64 == 3 ? 4.0f : 0.0f);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::cos(0.21f * i);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(1.3f * i);
  for (int pos = 0; pos < n; ++pos) {
    ASSERT_TRUE(cache.AppendSlot(a).ok());
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h) cache.Store(a, l, h, pos, &k[pos * 64], &v[pos * 64]);
  }
  // Expected: f16-rounded rows below 4, decoded compressed rows from 4 on.
  const kvquant::RowCodec f16 = *kvquant::RowCodec::Create("f16", 64, 0, 0, 0);
  std::vector<float> kd(n * 64), vd(n * 64);
  std::vector<uint8_t> row(f16.row_bytes());
  for (int pos = 0; pos < n; ++pos) {
    if (pos < 4) {
      f16.EncodeRow(&k[pos * 64], row.data());
      f16.DecodeRow(row.data(), &kd[pos * 64]);
      f16.EncodeRow(&v[pos * 64], row.data());
      f16.DecodeRow(row.data(), &vd[pos * 64]);
    } else {
      cache.k_codec(layer, head).DecodeRow(cache.KRow(a, layer, head, pos), &kd[pos * 64]);
      cache.v_codec(layer, head).DecodeRow(cache.VRow(a, layer, head, pos), &vd[pos * 64]);
    }
  }
  for (int len : {3, 4, 33, 40}) {
    SCOPED_TRACE(len);
    std::vector<float> want(2 * 64), got(2 * 64);
    kvquant::AttendF32(kd.data(), vd.data(), len, 64, 64, q.data(), 2, 0.125f, want.data());
    ASSERT_TRUE(cache.Attend(a, layer, head, len, q.data(), 2, 0.125f, got.data()).ok());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5);
  }
  EXPECT_EQ(cache.Stats().sink_bytes, 2u * 2 * 4 * (128 + 128));
  // A fork inside the first page, then a write: the copy of the page has the sink rows too.
  cache.Truncate(a, 20);
  const int b = cache.Fork(a);
  ASSERT_TRUE(cache.AppendSlot(b).ok());
  for (int l = 0; l < 2; ++l)
    for (int h = 0; h < 2; ++h) cache.Store(b, l, h, 20, &k[20 * 64], &v[20 * 64]);
  EXPECT_EQ(cache.Stats().sink_bytes, 2u * 2 * 2 * 4 * (128 + 128));
  std::vector<float> from_a(2 * 64), from_b(2 * 64);
  ASSERT_TRUE(cache.Attend(a, layer, head, 20, q.data(), 2, 0.125f, from_a.data()).ok());
  cache.Free(a);
  ASSERT_TRUE(cache.Attend(b, layer, head, 20, q.data(), 2, 0.125f, from_b.data()).ok());
  EXPECT_EQ(from_a, from_b);

  o.sink_tokens = kPage + 1;
  EXPECT_EQ(KvCache::Create(KvShape{2, 2, 64, 64}, o).status().code(), StatusCode::kInvalidArgument);
  o.sink_tokens = 4;
  EXPECT_EQ(KvCache::Create(KvShape{2, 1, 320, 0}, o).status().code(), StatusCode::kInvalidArgument);
}

// Window rows: attention reads the last window_tokens positions from window rows (f16, or another format), after a
// batch (all rows appended, then stored) and after a decode step that trims the ring; a fork copies them; the stats
// count them.
class WindowRows : public ::testing::TestWithParam<std::string> {};

TEST_P(WindowRows, AreReadForTheLastPositions) {
  KvCacheOptions o;
  o.k_format = "tq3";
  o.v_format = "q4_0";
  o.max_tokens = 4 * kPage;
  o.sink_tokens = 2;
  o.window_tokens = 5;
  o.window_format = GetParam();
  Result<KvCache> created = KvCache::Create(KvShape{2, 2, 64, 64}, o);
  ASSERT_TRUE(created.ok()) << created.status().ToString();
  KvCache& cache = *created;
  const int a = cache.NewSequence(), n = 41, layer = 1, head = 0;
  std::vector<float> k(n * 64), v(n * 64), q(3 * 64);
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::sin(0.37f * i) + (i % 64 == 3 ? 4.0f : 0.0f);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::cos(0.21f * i);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(1.3f * i);
  auto store = [&](int seq, int pos) {
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h) cache.Store(seq, l, h, pos, &k[pos * 64], &v[pos * 64]);
  };
  // One batch of 40 positions, then one decode step.
  for (int pos = 0; pos < 40; ++pos) ASSERT_TRUE(cache.AppendSlot(a).ok());
  for (int pos = 0; pos < 40; ++pos) store(a, pos);
  const kvquant::RowCodec f16 = *kvquant::RowCodec::Create("f16", 64, 0, 0, 0);
  const kvquant::RowCodec windowed = *kvquant::RowCodec::Create(GetParam(), 64, 0, layer, head);
  const size_t window_row_bytes = windowed.row_bytes();
  std::vector<uint8_t> row(f16.row_bytes());
  // Exact attention on rows decoded as the cache should read them for a token at position len - 1.
  auto expect = [&](int seq, int len) {
    SCOPED_TRACE(len);
    std::vector<float> kd(len * 64), vd(len * 64);
    for (int pos = 0; pos < len; ++pos) {
      if (pos < 2 || pos >= len - 5) {
        const kvquant::RowCodec& c = pos < 2 ? f16 : windowed;  // the sink rows are f16 whatever the window's format
        c.EncodeRow(&k[pos * 64], row.data());
        c.DecodeRow(row.data(), &kd[pos * 64]);
        c.EncodeRow(&v[pos * 64], row.data());
        c.DecodeRow(row.data(), &vd[pos * 64]);
      } else {
        cache.k_codec(layer, head).DecodeRow(cache.KRow(seq, layer, head, pos), &kd[pos * 64]);
        cache.v_codec(layer, head).DecodeRow(cache.VRow(seq, layer, head, pos), &vd[pos * 64]);
      }
    }
    std::vector<float> want(3 * 64), got(3 * 64);
    kvquant::AttendF32(kd.data(), vd.data(), len, 64, 64, q.data(), 3, 0.125f, want.data());
    ASSERT_TRUE(cache.Attend(seq, layer, head, len, q.data(), 3, 0.125f, got.data()).ok());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5);
    // Pieces of the range (cut inside the sink rows, the pages and the window rows) attended apart and merged.
    std::vector<int> cuts = {0, 1, len / 2, len - 2, len};
    cuts.erase(std::remove_if(cuts.begin(), cuts.end(), [&](int c) { return c < 0 || c > len; }), cuts.end());
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    std::vector<kvquant::AttentionState> states(cuts.size() - 1);
    for (size_t p = 0; p + 1 < cuts.size(); ++p)
      ASSERT_TRUE(cache.AttendState(seq, layer, head, len, cuts[p], cuts[p + 1], q.data(), 3, 0.125f, &states[p]).ok());
    std::vector<float> merged(3 * 64);
    kvquant::FinishAttention(states, 3, 64, merged.data());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(merged[i], got[i], 1e-5);
  };
  for (int len : {1, 3, 6, 7, 33, 40}) expect(a, len);
  EXPECT_GE(cache.Stats().window_bytes, 40u * 2 * 2 * 2 * window_row_bytes);  // the batch's rows, until the next step
  ASSERT_TRUE(cache.AppendSlot(a).ok());
  store(a, 40);
  expect(a, 41);
  EXPECT_EQ(cache.Stats().window_bytes, 6u * 2 * 2 * 2 * window_row_bytes);  // trimmed to the window and the new row
  const int b = cache.Fork(a);
  cache.Free(a);
  expect(b, 41);
  o.window_tokens = -1;
  EXPECT_EQ(KvCache::Create(KvShape{2, 2, 64, 64}, o).status().code(), StatusCode::kInvalidArgument);
  o.window_tokens = 5;
  o.window_format = "q7";
  Result<KvCache> bad = KvCache::Create(KvShape{2, 2, 64, 64}, o);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().ToString().find("--kv-window-format"), std::string::npos) << bad.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(F16AndQ8, WindowRows, ::testing::Values("f16", "q8_0"));

// The forward pass once per KV format, on the tiny qwen3 fixture (head size 32, which every format but hx3 fits), else
// on the default model (head size 64; hx3 needs a multiple of 64).
class CacheLogits : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    for (const char* path : {"/tests/fixtures/models/qwen3.gguf", "/models/SmolLM2-135M-Instruct.Q4_1.gguf"}) {
      auto model = Model::Load(std::string(LR_SOURCE_DIR) + path);
      ASSERT_TRUE(model.ok()) << model.status().ToString();
      if (!KvCache::Create((*model)->kv_shape(), Options()).ok()) continue;
      model_ = std::move(model).value();
      return;
    }
    FAIL() << "neither model has rows that KV format " << GetParam() << " holds";
  }
  KvCacheOptions Options() const {
    KvCacheOptions o;
    o.k_format = o.v_format = GetParam();
    o.max_tokens = 16 * kPage;
    o.identity = "fixture";
    return o;
  }
  KvCache NewCache() const { return std::move(KvCache::Create(model_->kv_shape(), Options())).value(); }
  // Runs tokens through seq as one batch; the logits of every token.
  std::vector<float> Run(KvCache& cache, int seq, const std::vector<int32_t>& tokens) {
    std::vector<BatchToken> batch;
    for (int32_t t : tokens) batch.push_back({seq, t, true});
    std::vector<float> logits;
    const Status s = model_->Forward(cache, batch, &logits);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return logits;
  }
  std::unique_ptr<Model> model_;
};

// Ranges of Model::kSplitAttentionFrom positions or more are attended in two halves merged exactly, the same way
// whatever the thread count (with 2 threads the halves run on different threads) and the batch: a prompt of that
// length and one decode step give the same logits, to the bit, with 1 and with 2 threads.
TEST_P(CacheLogits, LongRangesGiveTheSameLogitsWithOneOrTwoThreads) {
  const std::vector<int32_t> prompt = Tokens(Model::kSplitAttentionFrom + 20, 3), next = Tokens(1, 77);
  const int threads = omp_get_max_threads();
  std::vector<float> logits[2][2];
  for (int t : {1, 2}) {
    omp_set_num_threads(t);
    KvCache cache = NewCache();
    const int seq = cache.NewSequence();
    logits[t - 1][0] = Run(cache, seq, prompt);
    logits[t - 1][1] = Run(cache, seq, next);
  }
  omp_set_num_threads(threads);
  EXPECT_EQ(logits[0][0], logits[1][0]);
  EXPECT_EQ(logits[0][1], logits[1][1]);
}

TEST_P(CacheLogits, ForkGivesTheLogitsOfAnUnsharedRun) {
  const std::vector<int32_t> prompt = Tokens(kPage + 18, 2), x = Tokens(10, 40), y = Tokens(10, 90);
  KvCache shared = NewCache();
  const int a = shared.NewSequence();
  Run(shared, a, prompt);
  const int b = shared.Fork(a);
  const std::vector<float> got_b = Run(shared, b, x);  // writes into the shared partial page: a copy
  const std::vector<float> got_a = Run(shared, a, y);

  KvCache cold = NewCache();
  const int c = cold.NewSequence(), d = cold.NewSequence();
  Run(cold, c, prompt);
  Run(cold, d, prompt);
  EXPECT_EQ(got_b, Run(cold, c, x));
  EXPECT_EQ(got_a, Run(cold, d, y));
  for (int seq : {a, b}) shared.Free(seq);
  for (int seq : {c, d}) cold.Free(seq);
  EXPECT_EQ(shared.pages_in_use(), 0);
}

TEST_P(CacheLogits, PrefixHitComputesOnlyNewTokensWithTheLogitsOfAColdRun) {
  const std::vector<int32_t> head = Tokens(2 * kPage, 3), first_tail = Tokens(10, 60), second_tail = Tokens(20, 70);
  KvCache cache = NewCache();
  // First request: head + its tail, indexed.
  const int a = cache.NewSequence();
  Run(cache, a, head);
  Run(cache, a, first_tail);
  std::vector<int32_t> first = head;
  first.insert(first.end(), first_tail.begin(), first_tail.end());
  cache.IndexPages(a, first);
  cache.Free(a);
  // Second request shares the head: it starts from the two cached pages and computes only its tail.
  std::vector<int32_t> second = head;
  second.insert(second.end(), second_tail.begin(), second_tail.end());
  const int b = cache.NewSequenceFromCache(second, static_cast<int>(second.size()) - 1);
  ASSERT_EQ(cache.Length(b), 2 * kPage);
  const std::vector<float> got = Run(cache, b, second_tail);
  EXPECT_EQ(cache.Stats().prefix_hit_tokens, 2 * kPage);

  KvCache cold = NewCache();
  const int c = cold.NewSequence();
  Run(cold, c, head);
  EXPECT_EQ(got, Run(cold, c, second_tail));
  cache.Free(b);
  cold.Free(c);
  EXPECT_EQ(cache.Stats().pages_private + cache.Stats().pages_shared, 0);
}

std::vector<std::string> AllFormats() {
  std::vector<std::string> names;
  for (const kvquant::FormatInfo& f : kvquant::ListFormats()) names.emplace_back(f.name);
  return names;
}

INSTANTIATE_TEST_SUITE_P(EveryFormat, CacheLogits, ::testing::ValuesIn(AllFormats()));

}  // namespace
}  // namespace lr::inference
