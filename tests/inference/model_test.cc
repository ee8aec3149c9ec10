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

INSTANTIATE_TEST_SUITE_P(Fixtures, ScalarReference,
                         ::testing::Values("llama", "llama_q8_0", "llama_q4_1", "qwen2", "qwen3"));

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

// Shared-prefix attention: attempts forked from one prompt and decoded in one batch (their shared pages read once for
// all of them) give the logits of decoding each alone (per-sequence attention), within float rounding. Prompts of
// odd lengths and on a page boundary, one longer than a shared piece (kSharedPieceTokens), two prompts' attempts
// interleaved in one batch with an unrelated sequence; 40 steps, so the attempts cross page boundaries.
struct SharedCase {
  const char* format;
  int sinks, window;
};

class SharedPrefix : public ::testing::TestWithParam<SharedCase> {};

TEST_P(SharedPrefix, EqualsPerSequenceAttention) {
  const SharedCase sc = GetParam();
  const Fixture f = ReadFixture("qwen3");  // head_dim 32: the compressed formats fit
  auto model = Model::Load(kFixtures + "qwen3.gguf");
  ASSERT_TRUE(model.ok());
  Model& m = **model;
  KvCacheOptions o;
  o.k_format = o.v_format = sc.format;
  o.sink_tokens = sc.sinks;
  o.window_tokens = sc.window;
  o.max_tokens = 4096;
  // Two caches built the same way: `shared` decodes the attempts in one batch, `alone` one sequence per Forward.
  KvCache shared = std::move(KvCache::Create(m.kv_shape(), o)).value();
  KvCache alone = std::move(KvCache::Create(m.kv_shape(), o)).value();
  const int n_steps = 40;
  for (const std::vector<int>& prompts : std::vector<std::vector<int>>{{301, 288}, {333, 600}}) {
    // Per prompt p, attempts p*4 .. p*4+3 (the root and 3 forks); then a lone sequence of 300 tokens.
    std::vector<int> seqs_shared, seqs_alone;
    std::vector<float> logits;
    int next = 0;
    auto token = [&]() {
      const int32_t t = (f.tokens[next % f.tokens.size()] ^ (next / 32)) % f.n_vocab;
      ++next;
      return t;
    };
    for (int len : prompts) {
      std::vector<BatchToken> prompt;
      for (int i = 0; i < len; ++i) prompt.push_back({0, token(), false});
      for (KvCache* cache : {&shared, &alone}) {
        const int root = cache->NewSequence();
        std::vector<BatchToken> b = prompt;
        for (BatchToken& t : b) t.seq = root;
        ASSERT_TRUE(m.Forward(*cache, b, &logits).ok());
        std::vector<int>& seqs = cache == &shared ? seqs_shared : seqs_alone;
        seqs.push_back(root);
        for (int k = 1; k < 4; ++k) seqs.push_back(cache->Fork(root));
      }
    }
    std::vector<BatchToken> lone;
    for (int i = 0; i < 300; ++i) lone.push_back({0, token(), false});
    for (KvCache* cache : {&shared, &alone}) {
      const int seq = cache->NewSequence();
      std::vector<BatchToken> b = lone;
      for (BatchToken& t : b) t.seq = seq;
      ASSERT_TRUE(m.Forward(*cache, b, &logits).ok());
      (cache == &shared ? seqs_shared : seqs_alone).push_back(seq);
    }
    const int n_seq = static_cast<int>(seqs_shared.size());
    double worst = 0;
    for (int step = 0; step < n_steps; ++step) {
      std::vector<BatchToken> batch;
      for (int j = 0; j < n_seq; ++j) batch.push_back({seqs_shared[j], token(), true});
      std::reverse(batch.begin() + 2, batch.end() - 2);  // members of a group need not be adjacent
      std::vector<float> got;
      ASSERT_TRUE(m.Forward(shared, batch, &got).ok());
      // The groups: each prompt's 4 attempts, sharing their full prompt pages, less the window rows and their own
      // position, when that leaves kSharedPrefixFrom positions.
      constexpr int kPage = KvCache::kPageTokens;
      auto shared_end = [&](int len) {
        return std::min(len / kPage * kPage, (len + step + 1 - std::max(1, sc.window)) / kPage * kPage);
      };
      const std::vector<SharedPrefixGroup> groups = Model::PlanSharedPrefix(shared, batch);
      size_t want_groups = 0;
      for (int len : prompts) want_groups += shared_end(len) >= Model::kSharedPrefixFrom ? 1 : 0;
      ASSERT_EQ(groups.size(), want_groups) << "step " << step;
      for (const SharedPrefixGroup& g : groups) {
        ASSERT_EQ(g.members.size(), 4u);
        const int len = shared.Length(batch[g.members[0]].seq) - step - 1;
        EXPECT_EQ(g.shared_end, shared_end(len)) << "prompt " << len << " step " << step;
      }
      for (int j = 0; j < n_seq; ++j) {
        const int at = static_cast<int>(
            std::find_if(batch.begin(), batch.end(), [&](const BatchToken& t) { return t.seq == seqs_shared[j]; }) -
            batch.begin());
        const BatchToken t{seqs_alone[j], batch[at].token, true};
        std::vector<float> want;
        ASSERT_TRUE(m.Forward(alone, {&t, 1}, &want).ok());
        const std::vector<float> row(got.begin() + static_cast<size_t>(at) * f.n_vocab,
                                     got.begin() + static_cast<size_t>(at + 1) * f.n_vocab);
        worst = std::max(worst, MaxRelError(row, want));
      }
    }
    EXPECT_LE(worst, 1e-5) << sc.format << " prompts " << prompts[0] << ", " << prompts[1];
    for (int seq : seqs_shared) shared.Free(seq);
    for (int seq : seqs_alone) alone.Free(seq);
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, SharedPrefix,
                         ::testing::Values(SharedCase{"f16", 0, 0}, SharedCase{"tq3", 0, 0}, SharedCase{"tq3", 4, 40}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

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
