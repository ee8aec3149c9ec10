// The runner against an independent implementation: tiny random-weight models of every supported architecture
// (tests/fixtures/models/, made by scripts/make_model_fixtures.py with transformers in float64). Each fixture's
// logits must match on every position within the stated relative error, through the prefill path (one batch) and
// the decode path (one token per call).
#include <cmath>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/inference/reference_util.h"

namespace lr::inference {
namespace {

using testing::FixturePath;
using testing::ReadF32File;
using testing::ReadJsonFile;
using testing::RowRelError;
using testing::RunInChunks;
using testing::RunSequence;

struct Fixture {
  const char* name;
  // max |ours - reference| / max |reference| per position. Float weights: the runner's f32 arithmetic on the same
  // f16 values. Q8_0: the runner also quantizes activations to int8 blocks (the reference does not).
  double max_rel_error;
};

class ReferenceTest : public ::testing::TestWithParam<Fixture> {};

TEST_P(ReferenceTest, LogitsMatchOnEveryPosition) {
  const Fixture& f = GetParam();
  nlohmann::json manifest = ReadJsonFile(FixturePath(std::string(f.name) + ".json"));
  ASSERT_FALSE(manifest.empty());
  const std::vector<int32_t> tokens = manifest["tokens"].get<std::vector<int32_t>>();
  const int n_vocab = manifest["n_vocab"].get<int>();
  const std::vector<float> want =
      ReadF32File(FixturePath(manifest["logits"].get<std::string>()), tokens.size() * n_vocab);
  ASSERT_FALSE(want.empty());

  auto model = Model::Load(FixturePath(manifest["gguf"].get<std::string>()));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  ASSERT_EQ((*model)->config().arch, manifest["architecture"].get<std::string>());
  ASSERT_EQ((*model)->config().n_vocab, n_vocab);

  for (bool one_at_a_time : {false, true}) {
    SCOPED_TRACE(one_at_a_time ? "decode, one token per call" : "prefill, one batch");
    auto cache = KvCache::Create((*model)->kv_shape(), KvCacheOptions{});
    ASSERT_TRUE(cache.ok()) << cache.status().ToString();
    const int seq = cache->NewSequence();
    auto got = RunSequence(**model, *cache, seq, tokens, one_at_a_time);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    ASSERT_EQ(got->size(), want.size());
    double worst = 0;
    for (size_t pos = 0; pos < tokens.size(); ++pos) {
      const float* g = got->data() + pos * n_vocab;
      const float* w = want.data() + pos * n_vocab;
      const double err = RowRelError(g, w, n_vocab);
      worst = std::max(worst, err);
      EXPECT_LE(err, f.max_rel_error) << "position " << pos;
      EXPECT_EQ(testing::ArgMax(g, n_vocab), testing::ArgMax(w, n_vocab)) << "position " << pos;
    }
    RecordProperty(one_at_a_time ? "max_rel_error_decode" : "max_rel_error_prefill", std::to_string(worst));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceTest,
                         ::testing::Values(Fixture{"llama", 1e-3}, Fixture{"llama_q8_0", 2e-2},
                                           Fixture{"llama_q4_1", 2e-2}, Fixture{"qwen2", 1e-3}, Fixture{"qwen3", 1e-3},
                                           Fixture{"mixtral", 1e-3}, Fixture{"mistral4", 1e-3},
                                           Fixture{"deepseek_v3", 1e-3}),
                         [](const ::testing::TestParamInfo<Fixture>& info) { return std::string(info.param.name); });

// A prompt run as one batch (MoE tokens grouped by expert, MLA attention in blocks over the chunk) gives the logits
// of running it one token per call, within float rounding: the MoE/MLA fixtures (f16 weights, float products) and
// moe_mla_q4_0.gguf (scripts/make_bench_model.py --preset tiny: Q4_0 experts repacked to 16-row groups, Q8_0
// attention, int8 activations; no reference logits, only this self-consistency). So do chunks of 17 (the later ones
// attend to rows of earlier calls, across a page boundary) and two sequences' prompts in one batch. (MLA on a
// compressed cache: mla_test.cc.)
class PrefillEqualsDecodeTest : public ::testing::TestWithParam<const char*> {};

TEST_P(PrefillEqualsDecodeTest, SameLogitsOnEveryPosition) {
  auto model = Model::Load(FixturePath(std::string(GetParam()) + ".gguf"));
  ASSERT_TRUE(model.ok()) << model.status().ToString();
  const int n_vocab = (*model)->config().n_vocab;
  std::vector<int32_t> tokens, other;
  for (int i = 0; i < 40; ++i) tokens.push_back((i * 97 + 13) % n_vocab);
  for (int i = 0; i < 24; ++i) other.push_back((i * 31 + 5) % n_vocab);
  auto run = [&](std::span<const int32_t> t, size_t chunk) -> std::vector<float> {
    auto cache = KvCache::Create((*model)->kv_shape(), KvCacheOptions{});
    EXPECT_TRUE(cache.ok()) << cache.status().ToString();
    if (!cache.ok()) return {};
    auto logits = RunInChunks(**model, *cache, cache->NewSequence(), t, chunk);
    EXPECT_TRUE(logits.ok()) << logits.status().ToString();
    return logits.ok() ? std::move(*logits) : std::vector<float>{};
  };
  const std::vector<float> step = run(tokens, 1), other_step = run(other, 1);
  ASSERT_EQ(step.size(), tokens.size() * n_vocab);
  ASSERT_EQ(other_step.size(), other.size() * n_vocab);
  auto expect_equal = [&](const std::vector<float>& got, const std::vector<float>& want, const char* what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t pos = 0; pos < want.size() / n_vocab; ++pos) {
      const float* g = got.data() + pos * n_vocab;
      const float* w = want.data() + pos * n_vocab;
      EXPECT_LE(RowRelError(g, w, n_vocab), 1e-4) << what << ", position " << pos;
      EXPECT_EQ(testing::ArgMax(g, n_vocab), testing::ArgMax(w, n_vocab)) << what << ", position " << pos;
    }
  };
  expect_equal(run(tokens, tokens.size()), step, "one batch");
  expect_equal(run(tokens, 17), step, "chunks of 17");

  // Both prompts in one batch, each a run of its own sequence.
  auto cache = KvCache::Create((*model)->kv_shape(), KvCacheOptions{});
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  const int a = cache->NewSequence(), b = cache->NewSequence();
  std::vector<BatchToken> batch;
  for (int32_t t : tokens) batch.push_back({a, t, true});
  for (int32_t t : other) batch.push_back({b, t, true});
  std::vector<float> both;
  ASSERT_TRUE((*model)->Forward(*cache, batch, &both).ok());
  const auto split = both.begin() + static_cast<std::ptrdiff_t>(tokens.size() * n_vocab);
  expect_equal(std::vector<float>(both.begin(), split), step, "first of two sequences in one batch");
  expect_equal(std::vector<float>(split, both.end()), other_step, "second of two sequences in one batch");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PrefillEqualsDecodeTest,
                         ::testing::Values("mixtral", "mistral4", "deepseek_v3", "moe_mla_q4_0"));

// Group-limited sigmoid routing worked by hand: 4 experts in 2 groups, 1 group and 1 expert kept, weights x2.
TEST(MoeRoutingTest, GroupsBiasAndScale) {
  ModelConfig c;
  c.n_expert = 4;
  c.n_expert_used = 1;
  c.n_expert_groups = 2;
  c.n_expert_groups_used = 1;
  c.gating = ExpertGating::kSigmoid;
  c.expert_weights_scale = 2.0f;
  auto logit = [](double p) { return static_cast<float>(std::log(p / (1 - p))); };
  // Scores 0.9, 0.1 | 0.6, 0.65: group 1 wins (1.25 > 1.0) although expert 0 has the best score.
  const float logits[4] = {logit(0.9), logit(0.1), logit(0.6), logit(0.65)};
  int expert = -1;
  float weight = 0;
  RouteToken(c, {}, logits, &expert, &weight);
  EXPECT_EQ(expert, 3);
  EXPECT_NEAR(weight, 1.3f, 1e-6);
  // A bias moves the choice to expert 2 but not its weight, which stays its unbiased score.
  RouteToken(c, {0.0f, 0.0f, 0.1f, 0.0f}, logits, &expert, &weight);
  EXPECT_EQ(expert, 2);
  EXPECT_NEAR(weight, 1.2f, 1e-6);
  // Softmax, top-2 of 4 renormalised (Mixtral): the two best logits' softmax over just the two.
  c.gating = ExpertGating::kSoftmax;
  c.n_expert_groups = c.n_expert_groups_used = 1;
  c.n_expert_used = 2;
  c.expert_weights_norm = true;
  c.expert_weights_scale = 1.0f;
  const float mixtral[4] = {0.5f, 2.0f, -1.0f, 1.0f};
  int experts[2];
  float weights[2];
  RouteToken(c, {}, mixtral, experts, weights);
  EXPECT_EQ(experts[0], 1);
  EXPECT_EQ(experts[1], 3);
  EXPECT_NEAR(weights[0], 1 / (1 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(weights[1], 1 / (1 + std::exp(1.0)), 1e-6);
}

// A Leanstral-2603-shaped config (REFERENCES.md §1; the fixture holds transformers' Mistral4Config() defaults as
// deepseek2 metadata and a one-row token_embd) is read from GGUF metadata alone.
TEST(LeanstralConfigTest, ReadsFromMetadata) {
  auto gguf = GgufFile::Open(FixturePath("leanstral_config.gguf"));
  ASSERT_TRUE(gguf.ok()) << gguf.status().ToString();
  auto config = ReadModelConfig(*gguf);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  const ModelConfig& c = *config;
  EXPECT_EQ(c.arch, "deepseek2");
  EXPECT_EQ(c.n_layer, 36);
  EXPECT_EQ(c.n_embd, 4096);
  EXPECT_EQ(c.n_head, 32);
  EXPECT_FLOAT_EQ(c.rms_eps, 1e-6f);
  EXPECT_EQ(gguf->GetU32("deepseek2.vocab_size").value(), 131072u);
  EXPECT_EQ(c.n_vocab, 1);  // the fixture's token_embd has one row
  // MLA: q_lora 1024, kv_lora 256, q/k head 64 nope + 64 rope, v head 128; the cache row is 256 + 64 values.
  EXPECT_EQ(c.q_lora_rank, 1024);
  EXPECT_EQ(c.kv_lora_rank, 256);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.qk_nope_dim, 64);
  EXPECT_EQ(c.qk_rope_dim, 64);
  EXPECT_EQ(c.head_dim_v, 128);
  EXPECT_EQ(c.rope.style, ops::RopeStyle::kAdjacentPairs);
  const KvShape kv = MlaKvShape(c);
  EXPECT_EQ(kv.n_head_kv, 1);
  EXPECT_EQ(kv.k_dim, 320);
  EXPECT_EQ(kv.v_dim, 0);
  // MoE in every layer: 128 experts, top-4, 1 shared, expert FFN 2048, softmax, renormalised, scale 1.
  EXPECT_EQ(c.n_leading_dense, 0);
  EXPECT_EQ(c.n_expert, 128);
  EXPECT_EQ(c.n_expert_used, 4);
  EXPECT_EQ(c.n_expert_shared, 1);
  EXPECT_EQ(c.n_ff_expert, 2048);
  EXPECT_EQ(c.gating, ExpertGating::kSoftmax);
  EXPECT_TRUE(c.expert_weights_norm);
  EXPECT_FLOAT_EQ(c.expert_weights_scale, 1.0f);
  EXPECT_EQ(c.n_expert_groups, 1);
  // YaRN: theta 10000, factor 128 over 8192 positions, mscale_all_dim 1; query temperature beta 0.1 per 8192.
  EXPECT_FLOAT_EQ(c.rope.base, 10000.0f);
  EXPECT_FLOAT_EQ(c.rope.scaling_factor, 128.0f);
  EXPECT_EQ(c.rope.original_ctx, 8192);
  EXPECT_FLOAT_EQ(c.rope.yarn_log_multiplier, 0.1f);
  EXPECT_FLOAT_EQ(c.attn_temperature_scale, 0.1f);
  EXPECT_EQ(c.attn_temperature_length, 8192);
  // The highest-frequency pair is extrapolated (kept), the lowest interpolated (divided by the factor).
  const std::vector<float> inv_freq = ops::RopeInvFreq(c.rope);
  ASSERT_EQ(inv_freq.size(), 32u);
  EXPECT_FLOAT_EQ(inv_freq[0], 1.0f);
  EXPECT_NEAR(inv_freq[31], std::pow(10000.0, -62.0 / 64) / 128, 1e-12);

  // Loading the model itself fails cleanly on the first missing weight.
  auto model = Model::Load(FixturePath("leanstral_config.gguf"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kNotFound);
  EXPECT_NE(model.status().ToString().find("output_norm.weight"), std::string::npos) << model.status().ToString();
}

}  // namespace
}  // namespace lr::inference
