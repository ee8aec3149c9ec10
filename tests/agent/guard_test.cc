#include "agent/guard.h"

#include <gtest/gtest.h>

namespace lr::agent {
namespace {

ProofTask Task() {
  Result<ProofTask> task = TaskFromStatement("import Mathlib\n\nopen Nat\n\n", "/-- Two is two. -/\n",
                                             "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n", "test");
  EXPECT_TRUE(task.ok()) << task.status().ToString();
  return *task;
}

struct Cheat {
  const char* label;
  const char* proof;
};

// Candidate proofs that must never be accepted, each refused by the text check before Lean sees it.
const Cheat kCheats[] = {
    {"sorry", " by\n  sorry"},
    {"admit", " by\n  admit"},
    {"sorryAx", " sorryAx _ false"},
    {"native_decide", " by\n  subst h\n  native_decide"},
    {"new axiom after the proof", " by\n  exact cheat\n\naxiom cheat : False"},
    {"#eval", " by\n  simp [h]\n#eval IO.println \"hi\""},
    {"#exit", " by\n  simp [h]\n#exit"},
    {"run_cmd", " by\n  simp [h]\nrun_cmd Lean.logInfo \"x\""},
    {"set_option debug", " by\n  set_option debug.skipKernelTC true in\n  simp [h]"},
    {"unsafe", " by\n  exact unsafe (cast lcProof ())"},
    {"implemented_by", " by\n  simp [h]\n@[implemented_by foo] def bar : Nat := 1"},
    {"extern", " by\n  simp [h]\n@[extern \"c_fn\"] opaque f : Nat"},
    {"local notation", " by\n  simp [h]\nlocal notation \"ℕ\" => Unit"},
    {"infix", " by\n  simp [h]\ninfix:50 \" = \" => fun _ _ => True"},
    {"macro redefining a tactic", " by\n  simp [h]\nmacro \"simp\" : tactic => `(tactic| trivial)"},
    {"macro_rules", " by\n  simp [h]\nmacro_rules | `(tactic| rfl) => `(tactic| trivial)"},
    {"syntax", " by\n  simp [h]\nsyntax \"cheat\" : tactic"},
    {"elab", " by\n  simp [h]\nelab \"cheat\" : tactic => pure ()"},
    {"second theorem", " by\n  simp [h]\ntheorem two_eq' : True := trivial"},
    {"close the namespace", " by\n  simp [h]\nend"},
};

TEST(RefuseProofText, RefusesEveryCheat) {
  GuardOptions options;
  for (const Cheat& c : kCheats) {
    Verdict v = RefuseProofText(c.proof, options);
    EXPECT_FALSE(v.accepted) << c.label;
    EXPECT_FALSE(v.reason.empty()) << c.label;
  }
}

TEST(RefuseProofText, AcceptsOrdinaryProofs) {
  GuardOptions options;
  EXPECT_TRUE(RefuseProofText(" by\n  subst h\n  -- no sorry needed\n  rfl", options).accepted);
  EXPECT_TRUE(RefuseProofText(" by\n  simp [h, Nat.add_zero] at *\n  exact h_axiom", options).accepted);
  EXPECT_TRUE(RefuseProofText(" by\n  have : #[1].size = 1 := rfl\n  omega", options).accepted);
  EXPECT_TRUE(RefuseProofText(" by\n  set_option maxRecDepth 1000 in\n  omega", options).accepted);
  EXPECT_FALSE(RefuseProofText("   \n ", options).accepted);
}

TEST(RefuseProofText, SorryIsRefusedEvenWithConstructChecksOff) {
  GuardOptions options;
  options.refuse_constructs = false;
  EXPECT_FALSE(RefuseProofText(" by\n  sorry", options).accepted);
  EXPECT_TRUE(RefuseProofText(" by\n  native_decide", options).accepted);
}

TEST(CheckSplice, RefusesADeclarationAfterTheProofEvenWithoutConstructChecks) {
  ProofTask task = Task();
  EXPECT_TRUE(CheckSplice(task, " by\n  subst h\n  rfl").accepted);
  Verdict v = CheckSplice(task, " by\n  simp [h]\n\ntheorem other : True := trivial");
  EXPECT_FALSE(v.accepted);
  EXPECT_NE(v.reason.find("adds declarations"), std::string::npos) << v.reason;
}

LeanReport Report(std::vector<LeanMessage> messages) {
  LeanReport r;
  r.messages = std::move(messages);
  return r;
}

TEST(JudgeLeanReport, AcceptsOnlyACleanReportWithAllowedAxioms) {
  ProofTask task = Task();
  const std::string proof = " by\n  subst h\n  rfl";
  const int stmt = StatementLine(task);
  const int axioms = AxiomsLine(task, proof);
  GuardOptions options;

  auto axioms_msg = [&](const std::string& text) { return LeanMessage{axioms, 3, text}; };
  EXPECT_TRUE(
      JudgeLeanReport(Report({axioms_msg("'two_eq' depends on axioms: [propext]")}), task, proof, options).accepted);
  EXPECT_TRUE(
      JudgeLeanReport(Report({axioms_msg("'two_eq' does not depend on any axioms")}), task, proof, options).accepted);
  // An error in the preamble (before the statement) is not the candidate's.
  EXPECT_TRUE(JudgeLeanReport(Report({{0, 1, "unknown package 'Mathlib'"},
                                      axioms_msg("'two_eq' depends on axioms: [propext, Quot.sound]")}),
                              task, proof, options)
                  .accepted);

  Verdict error =
      JudgeLeanReport(Report({{stmt + 1, 1, "unsolved goals"}, axioms_msg("'two_eq' depends on axioms: [propext]")}),
                      task, proof, options);
  EXPECT_FALSE(error.accepted);
  EXPECT_NE(error.reason.find("unsolved goals"), std::string::npos);

  EXPECT_FALSE(JudgeLeanReport(
                   Report({{stmt, 2, "declaration uses 'sorry'"}, axioms_msg("'two_eq' depends on axioms: [sorryAx]")}),
                   task, proof, options)
                   .accepted);
  Verdict native = JudgeLeanReport(Report({axioms_msg("'two_eq' depends on axioms: [propext, Lean.ofReduceBool]")}),
                                   task, proof, options);
  EXPECT_FALSE(native.accepted);
  EXPECT_NE(native.reason.find("Lean.ofReduceBool"), std::string::npos);
  // No axioms report (or one for another name) is no proof.
  EXPECT_FALSE(JudgeLeanReport(Report({}), task, proof, options).accepted);
  EXPECT_FALSE(
      JudgeLeanReport(Report({axioms_msg("'other' does not depend on any axioms")}), task, proof, options).accepted);
}

TEST(ParseAxiomsReport, ReadsLeansMessages) {
  std::vector<std::string> axioms;
  ASSERT_TRUE(
      ParseAxiomsReport("'Foo.bar' depends on axioms: [propext,\n Classical.choice, Quot.sound]", "Foo.bar", &axioms));
  EXPECT_EQ(axioms, (std::vector<std::string>{"propext", "Classical.choice", "Quot.sound"}));
  ASSERT_TRUE(ParseAxiomsReport("'Foo.bar' does not depend on any axioms", "Foo.bar", &axioms));
  EXPECT_TRUE(axioms.empty());
  EXPECT_FALSE(ParseAxiomsReport("'Foo.baz' does not depend on any axioms", "Foo.bar", &axioms));
  EXPECT_FALSE(ParseAxiomsReport("unknown constant 'Foo.bar'", "Foo.bar", &axioms));
}

TEST(TaskFromStatement, SplitsPreambleStatementAndProof) {
  ProofTask task = Task();
  EXPECT_EQ(task.name, "two_eq");
  EXPECT_EQ(task.statement, "theorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 :=");
  EXPECT_EQ(task.preamble, "import Mathlib\n\nopen Nat\n\n/-- Two is two. -/\n");
  EXPECT_EQ(task.proof, " by\n  sorry");
  EXPECT_EQ(StatementLine(task), 5);
  const std::string text = CheckedText(task, " by\n  rfl");
  EXPECT_NE(text.find("#print axioms two_eq\n"), std::string::npos);
  EXPECT_FALSE(TaskFromStatement("", "", "abbrev x : Nat := 1", "tasks.jsonl:3").ok());
}

}  // namespace
}  // namespace lr::agent
