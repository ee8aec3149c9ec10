#include "agent/prompt.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace lr::agent {
namespace {

ProofTask Task() {
  Result<ProofTask> task =
      TaskFromStatement("import Mathlib\n\n", "", "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n", "test");
  EXPECT_TRUE(task.ok());
  return *task;
}

TEST(FirstPrompt, ChatAsksForTheTheoremInALeanBlock) {
  std::vector<ChatMessage> m = FirstPrompt(Task(), PromptStyle::kChat);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].role, "system");
  EXPECT_EQ(m[1].role, "user");
  EXPECT_NE(
      m[1].content.find("```lean\nimport Mathlib\n\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  sorry"),
      std::string::npos);
}

TEST(FirstPrompt, CompletionEndsAtTheProofStart) {
  std::vector<ChatMessage> m = FirstPrompt(Task(), PromptStyle::kCompletion);
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
  Extracted e = ExtractProof("```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  omega\n",
                             PromptStyle::kChat, Task());
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

Choice Reply(std::string text, std::vector<ToolCall> calls = {}) {
  Choice c;
  c.text = std::move(text);
  c.tool_calls = std::move(calls);
  return c;
}

TEST(ToolsStyle, OffersCheckProofAndReadsTheCallsCode) {
  EXPECT_EQ(ParsePromptStyle("tools").value(), PromptStyle::kTools);
  const ProofTask task = Task();
  std::vector<ChatMessage> m = FirstPrompt(task, PromptStyle::kTools);
  ASSERT_EQ(m.size(), 2u);
  EXPECT_NE(m[0].content.find("check_proof"), std::string::npos);
  const ToolSpec tool = CheckProofTool();
  EXPECT_EQ(tool.name, "check_proof");
  EXPECT_TRUE(nlohmann::json::parse(tool.parameters_json_schema)["required"] == nlohmann::json({"code"}));

  const std::string code =
      nlohmann::json({{"code", "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  omega"}}).dump();
  Extracted e = ExtractProof(Reply("Let me check.", {{"call_1", "check_proof", code}}), PromptStyle::kTools, task);
  ASSERT_TRUE(e.found) << e.problem;
  EXPECT_EQ(e.proof, " by\n  omega");
  // A changed statement in the call is refused like one in a ```lean block.
  const std::string changed = nlohmann::json({{"code", "theorem two_eq (n : ℕ) (h : n = 2) : True := trivial"}}).dump();
  EXPECT_FALSE(ExtractProof(Reply("", {{"c", "check_proof", changed}}), PromptStyle::kTools, task).found);
  // Arguments that are not {"code": string} are a problem, named.
  e = ExtractProof(Reply("", {{"c", "check_proof", "{\"proof\": 1}"}}), PromptStyle::kTools, task);
  EXPECT_FALSE(e.found);
  EXPECT_NE(e.problem.find("code"), std::string::npos) << e.problem;
  // Without a call the text is read as in the chat style; calls are ignored outside the tools style.
  e = ExtractProof(Reply("```lean\nomega\n```"), PromptStyle::kTools, task);
  ASSERT_TRUE(e.found);
  EXPECT_EQ(e.proof, " by\n  omega");
  EXPECT_FALSE(ExtractProof(Reply("", {{"c", "check_proof", code}}), PromptStyle::kChat, task).found);
}

TEST(AppendRepairTurn, ToolsAnswersTheCallWithLeansFeedback) {
  ProofTask task = Task();
  std::vector<ChatMessage> m = FirstPrompt(task, PromptStyle::kTools);
  const ToolCall call{"call_7", "check_proof", R"({"code": "theorem two_eq ..."})"};
  AppendRepairTurn(&m, PromptStyle::kTools, task, Reply("Checking.", {call}),
                   {"line 2: unknown tactic\n", "⊢ n + 0 = 2"});
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[2].role, "assistant");
  ASSERT_EQ(m[2].tool_calls.size(), 1u);
  EXPECT_EQ(m[2].tool_calls[0].id, "call_7");
  EXPECT_EQ(m[3].role, "tool");
  EXPECT_EQ(m[3].tool_call_id, "call_7");
  EXPECT_NE(m[3].content.find("line 2: unknown tactic"), std::string::npos);
  EXPECT_NE(m[3].content.find("⊢ n + 0 = 2"), std::string::npos);
}

TEST(AppendRepairTurn, ChatAddsTheReplyAndLeansFeedback) {
  ProofTask task = Task();
  std::vector<ChatMessage> m = FirstPrompt(task, PromptStyle::kChat);
  AppendRepairTurn(&m, PromptStyle::kChat, task, Reply("```lean\nbad\n```"),
                   {"line 2: unknown tactic\n", "⊢ n + 0 = 2"});
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[2].role, "assistant");
  EXPECT_EQ(m[2].content, "```lean\nbad\n```");
  EXPECT_NE(m[3].content.find("line 2: unknown tactic"), std::string::npos);
  EXPECT_NE(m[3].content.find("⊢ n + 0 = 2"), std::string::npos);
}

TEST(AppendRepairTurn, CompletionExtendsTheCode) {
  ProofTask task = Task();
  std::vector<ChatMessage> m = FirstPrompt(task, PromptStyle::kCompletion);
  const std::string first = m[0].content;
  AppendRepairTurn(&m, PromptStyle::kCompletion, task, Reply("  bad\n```"), {"line 2: unknown tactic\n", ""});
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
