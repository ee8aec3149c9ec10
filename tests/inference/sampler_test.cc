// Sampler: each stage of the chain on small hand-made distributions; StopMatcher: stop strings and UTF-8 split
// across pieces.
#include "inference/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

namespace lr::inference {
namespace {

SamplingParams Params(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  p.seed = 42;
  return p;
}

// Draws `n` tokens and returns how often each id came up.
std::map<int32_t, int> Histogram(Sampler& s, const std::vector<float>& logits, int n) {
  std::map<int32_t, int> h;
  for (int i = 0; i < n; ++i) ++h[s.Sample(logits, {})];
  return h;
}

TEST(Sampler, GreedyTakesTheLargestLogit) {
  Sampler s(Params(0.0f));
  EXPECT_EQ(s.Sample(std::vector<float>{0.1f, 2.0f, -1.0f, 1.9f}, {}), 1);
  EXPECT_EQ(s.Sample(std::vector<float>{3.0f, 3.0f}, {}), 0);  // ties: lowest id
}

TEST(Sampler, TopKOfOneIsGreedyAtAnyTemperature) {
  SamplingParams p = Params(5.0f);
  p.top_k = 1;
  Sampler s(p);
  const std::vector<float> logits{0.5f, 0.4f, 0.6f, 0.1f};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.Sample(logits, {}), 2);
}

TEST(Sampler, SamplesTheSoftmaxDistribution) {
  Sampler s(Params(1.0f));
  const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  const int n = 20000;
  auto h = Histogram(s, logits, n);
  EXPECT_NEAR(h[0] / double(n), 0.5, 0.02);
  EXPECT_NEAR(h[1] / double(n), 0.3, 0.02);
  EXPECT_NEAR(h[2] / double(n), 0.2, 0.02);
}

TEST(Sampler, TemperatureSharpens) {
  Sampler s(Params(0.5f));  // p ~ (0.5, 0.3, 0.2)^2 normalised = (0.658, 0.237, 0.105)
  const std::vector<float> logits{std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  const int n = 20000;
  auto h = Histogram(s, logits, n);
  EXPECT_NEAR(h[0] / double(n), 0.25 / 0.38, 0.02);
  EXPECT_NEAR(h[2] / double(n), 0.04 / 0.38, 0.02);
}

TEST(Sampler, TopPKeepsTheSmallestNucleus) {
  SamplingParams p = Params(1.0f);
  p.top_p = 0.75f;  // 0.5 + 0.3 >= 0.75: token 2 is cut
  Sampler s(p);
  auto h = Histogram(s, {std::log(0.5f), std::log(0.3f), std::log(0.2f)}, 5000);
  EXPECT_EQ(h.count(2), 0u);
  EXPECT_NEAR(h[0] / 5000.0, 0.5 / 0.8, 0.03);
}

TEST(Sampler, MinPCutsRelativeToTheBest) {
  SamplingParams p = Params(1.0f);
  p.min_p = 0.5f;  // keeps p >= 0.25: tokens 0 and 1
  Sampler s(p);
  auto h = Histogram(s, {std::log(0.5f), std::log(0.3f), std::log(0.2f)}, 5000);
  EXPECT_EQ(h.count(2), 0u);
  EXPECT_GT(h[1], 0);
}

TEST(Sampler, RepeatPenaltyDemotesRecentTokens) {
  SamplingParams p = Params(0.0f);
  p.repeat_penalty = 2.0f;
  Sampler s(p);
  const std::vector<float> logits{3.0f, 2.0f, -1.0f};
  const std::vector<int32_t> recent{0, 0, 7};  // 3 / 2 = 1.5 < 2; repeated and out-of-range ids are harmless
  EXPECT_EQ(s.Sample(logits, recent), 1);
  const std::vector<float> negative{-1.0f, -1.5f};
  const std::vector<int32_t> recent0{0};  // -1 * 2 = -2 < -1.5
  EXPECT_EQ(s.Sample(negative, recent0), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  const std::vector<float> logits{0.1f, 0.2f, 0.3f, 0.4f, 0.5f};
  Sampler a(Params(1.0f)), b(Params(1.0f));
  SamplingParams other = Params(1.0f);
  other.seed = 43;
  Sampler c(other);
  std::vector<int32_t> ra, rb, rc;
  for (int i = 0; i < 64; ++i) {
    ra.push_back(a.Sample(logits, {}));
    rb.push_back(b.Sample(logits, {}));
    rc.push_back(c.Sample(logits, {}));
  }
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
}

TEST(StopMatcher, StopsBeforeAStopSplitAcrossPieces) {
  StopMatcher m({"<|im_end|>", "\n\n"});
  std::string out = m.Push("theorem foo");
  out += m.Push(" := by simp<|im");
  EXPECT_EQ(out, "theorem foo := by simp");  // "<|im" held back: it may become the stop string
  EXPECT_FALSE(m.stopped());
  out += m.Push("_end|> trailing");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "theorem foo := by simp");
  EXPECT_EQ(m.Push("more"), "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcher, ReleasesAHeldTailThatDidNotStop) {
  StopMatcher m({"<|im_end|>"});
  EXPECT_EQ(m.Push("a <|i"), "a ");
  EXPECT_EQ(m.Push("x"), "<|ix");
  EXPECT_EQ(m.Push("<"), "");
  EXPECT_EQ(m.Flush(), "<");
}

TEST(StopMatcher, HoldsAnUnfinishedUtf8Character) {
  StopMatcher m({});
  // "⊢" is E2 8A A2; a tokenizer may split it over tokens.
  EXPECT_EQ(m.Push("x \xE2"), "x ");
  EXPECT_EQ(m.Push("\x8A"), "");
  EXPECT_EQ(m.Push("\xA2 y"), "\xE2\x8A\xA2 y");
  EXPECT_EQ(m.Push("\xC3"), "");
  EXPECT_EQ(m.Flush(), "\xC3");  // the end of generation emits what is left
}

}  // namespace
}  // namespace lr::inference
