// The prefix index alone: chained page keys, lookups, LRU order and eviction that skips pages in use.
#include "inference/prefix_index.h"

#include <gtest/gtest.h>

#include <vector>

namespace lr::inference {
namespace {

std::vector<int32_t> Tokens(int n, int32_t first) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(first + i);
  return t;
}

TEST(PrefixIndex, KeysChainOverParentTokensAndSalt) {
  const std::vector<int32_t> a = Tokens(32, 0), b = Tokens(32, 100);
  const uint64_t salt = PrefixIndex::Salt("model-1 f16 f16"), other = PrefixIndex::Salt("model-1 q8_0 f16");
  EXPECT_NE(salt, other);
  EXPECT_EQ(PrefixIndex::PageKey(salt, a), PrefixIndex::PageKey(salt, a));
  EXPECT_NE(PrefixIndex::PageKey(salt, a), PrefixIndex::PageKey(other, a));  // another model or format
  EXPECT_NE(PrefixIndex::PageKey(salt, a), PrefixIndex::PageKey(salt, b));   // other tokens
  // The same page of tokens after a different first page has a different key.
  const uint64_t after_a = PrefixIndex::PageKey(PrefixIndex::PageKey(salt, a), b);
  const uint64_t after_b = PrefixIndex::PageKey(PrefixIndex::PageKey(salt, b), b);
  EXPECT_NE(after_a, after_b);
  std::vector<int32_t> one_changed = a;
  one_changed[31] = 7;
  EXPECT_NE(PrefixIndex::PageKey(salt, a), PrefixIndex::PageKey(salt, one_changed));
}

TEST(PrefixIndex, FindInsertAndDuplicates) {
  PrefixIndex index;
  EXPECT_FALSE(index.Find(1).has_value());
  EXPECT_TRUE(index.Insert(1, 10));
  EXPECT_FALSE(index.Insert(1, 11));  // the key is taken: page 11 stays out
  EXPECT_EQ(index.Find(1), 10);
  EXPECT_TRUE(index.Holds(10));
  EXPECT_FALSE(index.Holds(11));
  EXPECT_EQ(index.size(), 1);
}

TEST(PrefixIndex, EvictsLeastRecentlyUsedAcceptedPage) {
  PrefixIndex index;
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(index.Insert(static_cast<uint64_t>(i), 100 + i));
  // Use order, oldest first: 1, 2, 3, 0 (Find refreshes key 0).
  ASSERT_TRUE(index.Find(0).has_value());
  EXPECT_EQ(index.EvictLeastRecent([](int) { return true; }), 101);
  // Page 102 is in use: the next oldest accepted one goes.
  EXPECT_EQ(index.EvictLeastRecent([](int page) { return page != 102; }), 103);
  EXPECT_FALSE(index.EvictLeastRecent([](int) { return false; }).has_value());
  EXPECT_EQ(index.size(), 2);
  EXPECT_FALSE(index.Holds(101));
  EXPECT_FALSE(index.Find(1).has_value());
  EXPECT_EQ(index.Find(2), 102);
}

}  // namespace
}  // namespace lr::inference
