#include "agent/prompt.h"

#include <gtest/gtest.h>

namespace lr::agent {
namespace {

ProofTask Task() {
  Result<ProofTask> task =
      TaskFromStatement("import Mathlib\n\n", "", "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n", "test");
  EXPECT_TRUE(task.ok());
  return *task;
}

TEST(FirstPrompt, ChatAsksForTheTheoremInALeanBlock) {
  std::vector<inference::ChatMessage> m = FirstPrompt(Task(), PromptStyle::kChat);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[1].role, "user");
  EXPECT_NE(m[1].content.find("```lean\nimport Mathlib\n\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  sorry"),
            std::string::npos);
}

TEST(FirstPrompt, CompletionEndsAtTheProofStart) {
  std::vector<inference::ChatMessage> m = FirstPrompt(Task(), PromptStyle::kCompletion);
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].role, "assistant");
  const std::string suffix = "n + 0 = 2 := by\n";
  ASSERT_GE(m[0].content.size(), suffix.size());
  EXPECT_EQ(m[0].content.substr(m[0].content.size() - suffix.size()), suffix);
}

TEST(ExtractProof, TakesTheTheoremFromTheLastLeanBlock) {
  const std::string reply =
      "Idea:\n```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  omega\n```\n"
      "Better:\n```lean4\nimport Mathlib\n\ntheorem two_eq (n : ℕ) (h : n = 2) :\n    n + 0 = 2 := by\n"
      "  subst h\n  rfl\n```\nDone.";
  Extracted e = ExtractProof(reply, PromptStyle::kChat, Task());
  ASSERT_TRUE(e.found) << e.problem;
  EXPECT_EQ(e.proof, " by\n  subst h\n  rfl");
}

TEST(ExtractProof, BareTacticsBecomeAByBlock) {
  Extracted e = ExtractProof("```lean\nsubst h\nrfl\n```", PromptStyle::kChat, Task());
  ASSERT_TRUE(e.found);
  EXPECT_EQ(e.proof, " by\n  subst h\n  rfl");
  e = ExtractProof("```lean\nby simp [h]\n```", PromptStyle::kChat, Task());
  ASSERT_TRUE(e.found);
  EXPECT_EQ(e.proof, " by simp [h]");
}

TEST(ExtractProof, AcceptsAnUnclosedFinalBlock) {
  Extracted e =
      ExtractProof("```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  omega\n", PromptStyle::kChat, Task());
  ASSERT_TRUE(e.found);
  EXPECT_EQ(e.proof, " by\n  omega");
}

TEST(ExtractProof, RefusesAChangedStatementOrNoBlock) {
  Extracted e = ExtractProof("```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : True := by\n  trivial\n```",
                             PromptStyle::kChat, Task());
  EXPECT_FALSE(e.found);
  EXPECT_NE(e.problem.find("changes the statement"), std::string::npos);
  e = ExtractProof("```lean\ntheorem other : True := trivial\n```", PromptStyle::kChat, Task());
  EXPECT_FALSE(e.found);
  e = ExtractProof("I cannot prove this.", PromptStyle::kChat, Task());
  EXPECT_FALSE(e.found);
  EXPECT_NE(e.problem.find("no ```lean block"), std::string::npos);
  e = ExtractProof("```python\nprint(1)\n```", PromptStyle::kChat, Task());
  EXPECT_FALSE(e.found);
}

TEST(ExtractProof, CompletionRunsToTheClosingFence) {
  Extracted e = ExtractProof("  subst h\n  rfl\n```\n\nSome chatter", PromptStyle::kCompletion, Task());
  ASSERT_TRUE(e.found);
  EXPECT_EQ(e.proof, " by\n  subst h\n  rfl");
  EXPECT_FALSE(ExtractProof("```", PromptStyle::kCompletion, Task()).found);
}

TEST(AppendRepairTurn, ChatAddsTheReplyAndLeansFeedback) {
  ProofTask task = Task();
  std::vector<inference::ChatMessage> m = FirstPrompt(task, PromptStyle::kChat);
  AppendRepairTurn(&m, PromptStyle::kChat, task, "```lean\nbad\n```", {"line 2: unknown tactic\n", "⊢ n + 0 = 2"});
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[2].role, "assistant");
  EXPECT_EQ(m[2].content, "```lean\nbad\n```");
  EXPECT_NE(m[3].content.find("line 2: unknown tactic"), std::string::npos);
  EXPECT_NE(m[3].content.find("⊢ n + 0 = 2"), std::string::npos);
}

TEST(AppendRepairTurn, CompletionExtendsTheCode) {
  ProofTask task = Task();
  std::vector<inference::ChatMessage> m = FirstPrompt(task, PromptStyle::kCompletion);
  const std::string first = m[0].content;
  AppendRepairTurn(&m, PromptStyle::kCompletion, task, "  bad\n```", {"line 2: unknown tactic\n", ""});
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(m[0].content.substr(0, first.size()), first);  // the prefix is kept, so its KV blocks are reused
  EXPECT_NE(m[0].content.find("unknown tactic"), std::string::npos);
  EXPECT_EQ(m[0].content.substr(m[0].content.size() - 4), " by\n");
}

TEST(ParsePromptStyle, NamesTheChoices) {
  EXPECT_TRUE(ParsePromptStyle("chat").ok());
  EXPECT_TRUE(ParsePromptStyle("completion").ok());
  Result<PromptStyle> bad = ParsePromptStyle("raw");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lr::agent
