// The forward pass and the paged cache: the scalar path against transformers on the tiny random-weight fixtures
// (tests/fixtures/models/), forks and rollbacks, several sequences in one batch, a compressed cache, bad input.
#include "inference/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

namespace lr::inference {
namespace {

const std::string kFixtures = std::string(LR_SOURCE_DIR) + "/tests/fixtures/models/";

struct Fixture {
  std::vector<int32_t> tokens;
  int n_vocab = 0;
  std::vector<float> logits;  // n_tokens x n_vocab
};

Fixture ReadFixture(const std::string& name) {
  Fixture f;
  std::ifstream js(kFixtures + name + ".json");
  const nlohmann::json j = nlohmann::json::parse(js);
  f.tokens = j["tokens"].get<std::vector<int32_t>>();
  f.n_vocab = j["n_vocab"].get<int>();
  std::ifstream bin(kFixtures + j["logits"].get<std::string>(), std::ios::binary);
  f.logits.resize(f.tokens.size() * f.n_vocab);
  bin.read(reinterpret_cast<char*>(f.logits.data()), static_cast<std::streamsize>(f.logits.size() * 4));
  EXPECT_TRUE(bin.good()) << name;
  return f;
}

// Largest |a - b| relative to the largest |reference|, over all logits.
double MaxRelError(const std::vector<float>& got, const std::vector<float>& ref) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(got[i]) - ref[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[i])));
  }
  return max_diff / max_ref;
}

KvCache NewCache(const Model& m, const std::string& format = "f16") {
  KvCacheOptions o;
  o.k_format = o.v_format = format;
  o.max_tokens = 256;
  return std::move(KvCache::Create(m.kv_shape(), o)).value();
}

// The scalar path decodes quantized weights and multiplies in f32, exactly what transformers ran on: every fixture,
// the Q8_0 one included, must match to 1e-3. (reference_test.cc checks the SIMD path, which also quantizes
// activations, and the MoE/MLA fixtures.)
class ScalarReference : public ::testing::TestWithParam<std::string> {};

TEST_P(ScalarReference, MatchesTransformers) {
  const Fixture f = ReadFixture(GetParam());
  auto model = Model::Load(kFixtures + GetParam() + ".gguf");
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  ASSERT_EQ((*model)->config().n_vocab, f.n_vocab);
  ops::SetActiveIsa(Isa::kBaseline);
  KvCache cache = NewCache(**model);
  const int seq = cache.NewSequence();
  std::vector<BatchToken> batch;
  for (int32_t t : f.tokens) batch.push_back({seq, t, true});
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Forward(cache, batch, &logits).ok());
  ops::SetActiveIsa(BestIsa());
  ASSERT_EQ(logits.size(), f.logits.size());
  EXPECT_LE(MaxRelError(logits, f.logits), 1e-3) << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ScalarReference, ::testing::Values("llama", "llama_q8_0", "qwen2", "qwen3"));

// A forked sequence continues exactly as the original would: the shared pages are read, the partial page copied.
TEST(Model, ForkAndTruncateGiveTheSameLogits) {
  const Fixture f = ReadFixture("qwen3");
  auto model = Model::Load(kFixtures + "qwen3.gguf");
  ASSERT_TRUE(model.ok());
  KvCache cache = NewCache(**model);
  const int a = cache.NewSequence();
  std::vector<BatchToken> prompt;
  for (int i = 0; i < 20; ++i) prompt.push_back({a, f.tokens[i], false});
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Forward(cache, prompt, &logits).ok());
  const int b = cache.Fork(a);
  EXPECT_EQ(cache.Length(b), 20);
  // Two sequences advanced in one batch, with different next tokens.
  const BatchToken step[2] = {{a, f.tokens[20], true}, {b, f.tokens[5], true}};
  ASSERT_TRUE((*model)->Forward(cache, step, &logits).ok());
  const int v = f.n_vocab;
  const std::vector<float> got_a(logits.begin(), logits.begin() + v);
  const std::vector<float> ref_a(f.logits.begin() + 20 * v, f.logits.begin() + 21 * v);
  EXPECT_LE(MaxRelError(got_a, ref_a), 1e-3);
  // Roll b back to the fork point and give it the original token: it must now match too.
  cache.Truncate(b, 20);
  const BatchToken again{b, f.tokens[20], true};
  ASSERT_TRUE((*model)->Forward(cache, {&again, 1}, &logits).ok());
  EXPECT_LE(MaxRelError(logits, ref_a), 1e-3);
}

TEST(Model, CompressedCacheStaysClose) {
  const Fixture f = ReadFixture("qwen3");  // head_dim 32: every kvquant format fits
  auto model = Model::Load(kFixtures + "qwen3.gguf");
  ASSERT_TRUE(model.ok());
  KvCache cache = NewCache(**model, "q8_0");
  const int seq = cache.NewSequence();
  std::vector<BatchToken> batch;
  for (int32_t t : f.tokens) batch.push_back({seq, t, true});
  std::vector<float> logits;
  ASSERT_TRUE((*model)->Forward(cache, batch, &logits).ok());
  EXPECT_LE(MaxRelError(logits, f.logits), 2e-2);
}

TEST(Model, BadInput) {
  auto missing = Model::Load(kFixtures + "no_such_model.gguf");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  auto model = Model::Load(kFixtures + "llama.gguf");
  ASSERT_TRUE(model.ok());
  KvCache cache = NewCache(**model);
  const int seq = cache.NewSequence();
  const BatchToken bad{seq, 256, true};
  std::vector<float> logits;
  const Status s = (*model)->Forward(cache, {&bad, 1}, &logits);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.Length(seq), 0);

  // A cache of 32 positions takes 32 tokens, then reports the 33rd.
  KvCacheOptions small;
  small.max_tokens = 32;
  KvCache tiny = std::move(KvCache::Create((*model)->kv_shape(), small)).value();
  const int s2 = tiny.NewSequence();
  std::vector<BatchToken> batch(32, BatchToken{s2, 1, false});
  ASSERT_TRUE((*model)->Forward(tiny, batch, &logits).ok());
  const BatchToken more{s2, 1, true};
  EXPECT_EQ((*model)->Forward(tiny, {&more, 1}, &logits).code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lr::inference
