// LocalModel's prefix cache across requests, on the real default model: a repeated prompt and a repair turn
// (prompt + reply + more) prefill only what the cache lacks and decode what a cold model decodes; every sequence is
// released after a request, its indexed pages staying cached; the budget is checked at open.
#include <gtest/gtest.h>

#include "tests/inference/default_model.h"

namespace lr::inference {
namespace {

TEST(LocalModelPrefix, RepeatedPromptAndRepairTurnComputeOnlyWhatIsNew) {
  std::unique_ptr<LocalModel> warm = OpenDefaultModel(), cold = OpenDefaultModel();
  ASSERT_TRUE(warm && cold);
  const std::vector<int32_t> prompt = Encode(
      *warm,
      "theorem add_comm_example (a b : Nat) : a + b = b + a := by\n  -- We prove commutativity of addition on the "
      "natural numbers by induction on b, using the successor lemmas from the standard library. The base case "
      "follows from zero_add and add_zero, and the step from succ_add and add_succ. Each rewrite closes one goal, "
      "and simp could finish the whole proof with the right lemma set, but we spell out every step. Proof:\n");
  ASSERT_GT(prompt.size(), 3u * KvCache::kPageTokens);

  GenerateStats st;
  auto first = warm->Generate(prompt, Greedy(24), 2, nullptr, &st);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(st.prompt_tokens_computed, static_cast<int>(prompt.size()));
  KvStats kv = warm->kv_stats();
  EXPECT_EQ(kv.pages_private + kv.pages_shared, 0);  // sequences released
  EXPECT_GT(kv.pages_cached, 0);

  // The same prompt again: its full pages come from the cache; the same greedy choices come out.
  auto again = warm->Generate(prompt, Greedy(24), 2, nullptr, &st);
  ASSERT_TRUE(again.ok());
  const int full = static_cast<int>(prompt.size()) / KvCache::kPageTokens * KvCache::kPageTokens;
  EXPECT_EQ(st.prompt_tokens_computed, static_cast<int>(prompt.size()) - full);
  ASSERT_EQ(again->size(), first->size());
  for (size_t c = 0; c < first->size(); ++c) EXPECT_EQ((*again)[c].text, (*first)[c].text);

  // A repair turn: prompt + the reply's tokens + feedback. The reply's full pages were indexed too.
  std::vector<int32_t> repair = prompt;
  const std::vector<int32_t> reply = Encode(*warm, (*first)[0].text);
  ASSERT_EQ(static_cast<int>(reply.size()), (*first)[0].completion_tokens);  // greedy text re-encodes the same here
  repair.insert(repair.end(), reply.begin(), reply.end() - 1);  // the last sampled token was never fed back
  const std::vector<int32_t> feedback = Encode(*warm, "\nerror: unsolved goals\n");
  repair.insert(repair.end(), feedback.begin(), feedback.end());
  auto warm_repair = warm->Generate(repair, Greedy(16), 1, nullptr, &st);
  ASSERT_TRUE(warm_repair.ok());
  const int reused = static_cast<int>(repair.size()) - st.prompt_tokens_computed;
  EXPECT_GT(reused, full);
  EXPECT_EQ(reused % KvCache::kPageTokens, 0);

  GenerateStats cold_st;
  auto cold_repair = cold->Generate(repair, Greedy(16), 1, nullptr, &cold_st);
  ASSERT_TRUE(cold_repair.ok());
  EXPECT_EQ(cold_st.prompt_tokens_computed, static_cast<int>(repair.size()));
  EXPECT_EQ((*warm_repair)[0].text, (*cold_repair)[0].text);

  kv = warm->kv_stats();
  EXPECT_EQ(kv.pages_private + kv.pages_shared, 0);
  EXPECT_GT(kv.prefix_hit_tokens, 0);
  EXPECT_LE(kv.pages_peak, kv.pages_total);
}

TEST(LocalModelPrefix, CompleteReportsComputedPromptTokens) {
  std::unique_ptr<LocalModel> lm = OpenDefaultModel();
  ASSERT_TRUE(lm);
  CompletionRequest r;
  r.messages.push_back({"system",
                        "You are a Lean 4 prover. Answer with one Lean proof in a code block, no prose; "
                        "use tactics from Mathlib, prefer simp and omega, and never use sorry.",
                        {},
                        {}});
  r.messages.push_back({"user", "Prove 2 + 2 = 4.", {}, {}});
  r.sampling = Greedy(4);
  auto first = lm->Complete(r, nullptr);
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->usage.prompt_tokens_computed, first->usage.prompt_tokens);
  r.messages[1].content = "Prove 3 + 3 = 6.";
  auto second = lm->Complete(r, nullptr);
  ASSERT_TRUE(second.ok());
  EXPECT_LT(second->usage.prompt_tokens_computed, second->usage.prompt_tokens);
  EXPECT_GT(second->usage.prompt_tokens_computed, 0);
}

TEST(LocalModelPrefix, BudgetMustHoldTheContext) {
  LocalModelOptions o;
  o.path = kDefaultModel;
  o.n_ctx = 4096;
  o.kv_budget_mib = 1;
  Result<std::unique_ptr<LocalModel>> lm = LocalModel::Open(o);
  ASSERT_FALSE(lm.ok());
  EXPECT_EQ(lm.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(lm.status().message().find("--kv-budget"), std::string::npos) << lm.status().ToString();
}

}  // namespace
}  // namespace lr::inference
