// MLA prompt-chunk attention (MlaAttendChunk: the rows decoded once, scores and values as f32 matrix products)
// against kvquant::AttendSharedKV token by token over the same stored rows, for the f16 cache and compressed formats
// (rotated ones among them), a chunk that starts after rows of earlier calls, and partial query blocks.
#include "inference/mla.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "inference/kv_cache.h"
#include "kvquant/kvquant.h"

namespace lr::inference {
namespace {

class MlaAttendChunkTest : public ::testing::TestWithParam<const char*> {};

TEST_P(MlaAttendChunkTest, EqualsAttendSharedKvTokenByToken) {
  // Leanstral's row: kv_lora 256 + rope 64; 3 heads; 70 positions, the chunk the last 50 (blocks of 32 + 18), so
  // its first token already sees 21 rows stored by "earlier calls" and the rows cross page boundaries.
  constexpr int kLat = 256, kRow = 320, kHeads = 3, kPositions = 70, kFirst = 20, kTokens = kPositions - kFirst;
  constexpr float kScale = 0.08f;
  KvCacheOptions options;
  options.k_format = GetParam();
  options.max_tokens = 128;
  Result<KvCache> cache = KvCache::Create(KvShape{2, 1, kRow, 0}, options);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  const int layer = 1, seq = cache->NewSequence();
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> row(kRow);
  for (int p = 0; p < kPositions; ++p) {
    Result<int> pos = cache->AppendSlot(seq);
    ASSERT_TRUE(pos.ok()) << pos.status().ToString();
    for (float& v : row) v = nd(rng);
    for (int l = 0; l < 2; ++l) cache->k_codec(l, 0).EncodeRow(row.data(), cache->KRow(seq, l, 0, *pos), *pos);
  }
  // Queries [head][token], as MlaAttention lays them out, with a token stride wider than the chunk.
  constexpr int kStrideTokens = kTokens + 3;
  std::vector<float> q(static_cast<size_t>(kHeads) * kStrideTokens * kRow);
  for (float& v : q) v = nd(rng);
  std::vector<float> got(static_cast<size_t>(kHeads) * kStrideTokens * kLat, -7.0f);
  MlaAttendChunk(*cache, layer, seq, kFirst, kTokens, kHeads, kLat, q.data(), int64_t{kStrideTokens} * kRow, kScale,
                 got.data(), int64_t{kStrideTokens} * kLat);

  std::vector<kvquant::RowSpan> spans;
  std::vector<float> qi(static_cast<size_t>(kHeads) * kRow), want(static_cast<size_t>(kHeads) * kLat);
  for (int i = 0; i < kTokens; ++i) {
    spans.clear();
    cache->Spans(seq, layer, 0, kFirst + i + 1, &spans);
    for (int h = 0; h < kHeads; ++h)
      std::copy_n(&q[(static_cast<size_t>(h) * kStrideTokens + i) * kRow], kRow, &qi[static_cast<size_t>(h) * kRow]);
    ASSERT_TRUE(
        kvquant::AttendSharedKV(cache->k_codec(layer, 0), kLat, qi.data(), kHeads, spans, kScale, want.data()).ok());
    for (int h = 0; h < kHeads; ++h) {
      const float* w = &want[static_cast<size_t>(h) * kLat];
      const float* g = &got[(static_cast<size_t>(h) * kStrideTokens + i) * kLat];
      float max_abs = 0;
      for (int d = 0; d < kLat; ++d) max_abs = std::max(max_abs, std::fabs(w[d]));
      for (int d = 0; d < kLat; ++d)
        ASSERT_NEAR(g[d], w[d], 2e-5f * max_abs) << GetParam() << " token " << i << " head " << h << " value " << d;
    }
  }
  for (int h = 0; h < kHeads; ++h)  // the stride's padding untouched
    for (int i = kTokens; i < kStrideTokens; ++i)
      ASSERT_EQ(got[(static_cast<size_t>(h) * kStrideTokens + i) * kLat], -7.0f);
}

INSTANTIATE_TEST_SUITE_P(Formats, MlaAttendChunkTest, ::testing::Values("f16", "q8_0", "tq4", "hx3"),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

}  // namespace
}  // namespace lr::inference
