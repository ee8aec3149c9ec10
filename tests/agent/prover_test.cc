#include "agent/prover.h"

#include <gtest/gtest.h>

#include "tests/agent/scripted.h"

namespace lr::agent {
namespace {

using testing::Replies;
using testing::ScriptedChecker;
using testing::ScriptedModel;

constexpr char kGood[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  subst h\n  rfl\n```";
constexpr char kBad[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  bad_tactic\n```";
constexpr char kNative[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  native_decide\n```";
constexpr char kSorry[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  sorry\n```";
constexpr char kChanged[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : True := by\n  trivial\n```";

ProofTask Task() {
  Result<ProofTask> task =
      TaskFromStatement("import Mathlib\n\n", "", "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n", "test");
  EXPECT_TRUE(task.ok());
  return *task;
}

ProverOptions Options(int k, int turns) {
  ProverOptions o;
  o.k = k;
  o.turns = turns;
  return o;
}

TEST(Prove, StopsAtTheFirstAcceptedCandidate) {
  ScriptedModel model(Replies{{"two_eq", {kBad, kGood, kGood}}});
  ScriptedChecker lean;
  Result<ProofOutcome> out = Prove(Task(), model, lean, Options(3, 0));
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(out->proved);
  EXPECT_EQ(out->proof, " by\n  subst h\n  rfl");
  EXPECT_EQ(out->checks, 2);
  EXPECT_EQ(out->stop_reason, "proved");
  EXPECT_EQ(model.requests().size(), 1u);
  EXPECT_EQ(model.requests()[0].n, 3);  // k candidates from one shared prompt
  EXPECT_GT(out->tokens, 0);
}

TEST(Prove, CheatsAreRefusedBeforeLeanAndNeverAccepted) {
  ScriptedModel model(Replies{{"two_eq", {kNative, kSorry, kChanged, "no block at all"}}});
  ScriptedChecker lean;
  Result<ProofOutcome> out = Prove(Task(), model, lean, Options(4, 0));
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->proved);
  EXPECT_EQ(out->checks, 4);
  EXPECT_TRUE(lean.texts().empty());
  for (const Attempt& a : out->attempts) EXPECT_FALSE(a.verdict.reason.empty());
}

TEST(Prove, NativeDecideIsCaughtByTheAxiomsCheckWhenTextChecksAreOff) {
  ScriptedModel model(Replies{{"two_eq", {kNative}}});
  ScriptedChecker lean;
  ProverOptions options = Options(1, 0);
  options.guard.refuse_constructs = false;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->proved);
  ASSERT_EQ(lean.texts().size(), 1u);
  EXPECT_NE(out->attempts[0].verdict.reason.find("Lean.ofReduceBool"), std::string::npos);
}

TEST(Prove, ToolsStyleChecksTheCallsCodeAndAnswersTheCall) {
  const std::string bad =
      R"(@check_proof {"code": "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  bad_tactic"})";
  const std::string good =
      R"(@check_proof {"code": "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  subst h\n  rfl"})";
  ScriptedModel model(Replies{{"two_eq", {bad, good}}});
  ScriptedChecker lean;
  ProverOptions options = Options(1, 1);
  options.style = PromptStyle::kTools;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_TRUE(out->proved);
  EXPECT_EQ(out->proof, " by\n  subst h\n  rfl");
  EXPECT_EQ(lean.texts().size(), 2u);
  const std::vector<CompletionRequest> requests = model.requests();
  ASSERT_EQ(requests.size(), 2u);
  ASSERT_EQ(requests[0].tools.size(), 1u);
  EXPECT_EQ(requests[0].tools[0].name, "check_proof");
  // The repair turn answers the model's call with Lean's verdict.
  const ChatMessage& answer = requests[1].messages.back();
  EXPECT_EQ(answer.role, "tool");
  EXPECT_EQ(answer.tool_call_id, "call_0");
  EXPECT_NE(answer.content.find("Lean rejected this proof"), std::string::npos) << answer.content;
}

TEST(Prove, RepairTurnContinuesTheCandidateWithLeansErrorsAndGoals) {
  ScriptedModel model(Replies{{"two_eq", {kBad, kGood}}});
  ScriptedChecker lean;
  Result<ProofOutcome> out = Prove(Task(), model, lean, Options(1, 2));
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->proved);
  EXPECT_EQ(out->turns, 1);
  ASSERT_EQ(out->attempts.size(), 2u);
  EXPECT_EQ(out->attempts[1].turn, 1);
  std::vector<CompletionRequest> requests = model.requests();
  ASSERT_EQ(requests.size(), 2u);
  const auto& repair = requests[1].messages;
  ASSERT_EQ(repair.size(), 4u);
  EXPECT_EQ(repair[2].content, kBad);
  EXPECT_NE(repair[3].content.find("line 2: unknown tactic 'bad_tactic'"), std::string::npos) << repair[3].content;
  EXPECT_NE(repair[3].content.find("⊢ n + 0 = 2"), std::string::npos);
}

TEST(Prove, RunAllCandidatesCountsEverySuccess) {
  ScriptedModel model(Replies{{"two_eq", {kGood, kBad, kGood, kSorry}}});
  ScriptedChecker lean;
  ProverOptions options = Options(4, 0);
  options.run_all_candidates = true;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->proved);
  EXPECT_EQ(out->candidates, 4);
  EXPECT_EQ(out->solved, 2);
  EXPECT_EQ(out->checks, 4);
}

TEST(Prove, StopsWhenTheCheckBudgetIsSpent) {
  ScriptedModel model(Replies{{"two_eq", {kBad, kBad, kGood}}});
  ScriptedChecker lean;
  ProverOptions options = Options(3, 1);
  options.max_checks = 2;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->proved);
  EXPECT_EQ(out->checks, 2);
  EXPECT_EQ(out->stop_reason, "check budget");
}

TEST(Prove, StopsWhenTheTokenBudgetIsSpent) {
  ScriptedModel model(Replies{{"two_eq", {kBad, kGood}}});
  ScriptedChecker lean;
  ProverOptions options = Options(1, 3);
  options.max_tokens = 1;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->proved);
  EXPECT_EQ(out->stop_reason, "token budget");
  EXPECT_EQ(model.requests().size(), 1u);
}

TEST(Prove, ADeadLeanServerIsAnErrorNotAFailedProof) {
  ScriptedModel model(Replies{{"two_eq", {kGood}}});
  ScriptedChecker lean(/*unavailable_calls=*/1);
  Result<ProofOutcome> out = Prove(Task(), model, lean, Options(1, 0));
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(lean.texts().size(), 1u);  // the pool has retried already
  EXPECT_NE(out.status().message().find("two_eq"), std::string::npos);
}

TEST(Prove, CompletionStyleReadsTheContinuation) {
  ScriptedModel model(Replies{{"two_eq", {"  subst h\n  rfl\n```"}}});
  ScriptedChecker lean;
  ProverOptions options = Options(1, 0);
  options.style = PromptStyle::kCompletion;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->proved);
  EXPECT_TRUE(model.requests()[0].continue_final_message);
  ASSERT_EQ(lean.texts().size(), 1u);
  EXPECT_NE(lean.texts()[0].find("n + 0 = 2 := by\n  subst h\n  rfl\n\n#print axioms two_eq\n"), std::string::npos);
}

TEST(Prove, CancelledBeforeStarting) {
  ScriptedModel model(Replies{{"two_eq", {kGood}}});
  ScriptedChecker lean;
  std::atomic<bool> cancel{true};
  ProverOptions options = Options(1, 0);
  options.cancel = &cancel;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kCancelled);
}

class RecordingObserver : public ProverObserver {
 public:
  void OnGenerating(int first, int n, int turn) override {
    events.push_back("gen " + std::to_string(first) + "+" + std::to_string(n) + " t" + std::to_string(turn));
  }
  void OnPiece(int candidate, std::string_view piece) override { ++pieces; }
  void OnChecking(int candidate, int turn) override {
    events.push_back("check " + std::to_string(candidate) + " t" + std::to_string(turn));
  }
  void OnJudged(const Attempt& a) override {
    events.push_back(std::string(a.verdict.accepted ? "ok " : "no ") + std::to_string(a.candidate) + " t" +
                     std::to_string(a.turn));
  }
  std::vector<std::string> events;
  int pieces = 0;
};

TEST(Prove, ObserverSeesEveryStepInOrder) {
  ScriptedModel model(Replies{{"two_eq", {kSorry, kBad, kGood}}});
  ScriptedChecker lean;
  RecordingObserver observer;
  ProverOptions options = Options(2, 1);
  options.observer = &observer;
  Result<ProofOutcome> out = Prove(Task(), model, lean, options);
  ASSERT_TRUE(out.ok());
  EXPECT_TRUE(out->proved);
  const std::vector<std::string> expected = {"gen 0+2 t0", "no 0 t0",    "check 1 t0", "no 1 t0",
                                             "gen 0+1 t1", "check 0 t1", "ok 0 t1"};
  EXPECT_EQ(observer.events, expected);
  EXPECT_EQ(observer.pieces, 3);
}

TEST(Prove, RejectsBadOptions) {
  ScriptedModel model(Replies{});
  ScriptedChecker lean;
  EXPECT_EQ(Prove(Task(), model, lean, Options(0, 0)).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lr::agent
