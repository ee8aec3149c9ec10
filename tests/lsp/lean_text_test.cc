#include "lsp/lean_text.h"

#include <gtest/gtest.h>

namespace lr::lsp {
namespace {

TEST(MaskCommentsAndStrings, BlanksCommentsAndStringsKeepingOffsets) {
  const std::string text = "a -- sorry\n/- axiom /- nested -/ x -/ b \"sorry\" 'c' h' d";
  const std::string masked = MaskCommentsAndStrings(text);
  ASSERT_EQ(masked.size(), text.size());
  EXPECT_EQ(masked.find("sorry"), std::string::npos);
  EXPECT_EQ(masked.find("axiom"), std::string::npos);
  EXPECT_EQ(masked.find("nested"), std::string::npos);
  EXPECT_EQ(masked[text.find('\n')], '\n');
  EXPECT_NE(masked.find(" b "), std::string::npos);
  EXPECT_NE(masked.find("h' d"), std::string::npos);  // a prime in a name is not a char literal
}

TEST(ContainsToken, MatchesWholeTokensOnly) {
  EXPECT_TRUE(ContainsToken("  exact sorry", "sorry"));
  EXPECT_TRUE(ContainsToken("(sorry)", "sorry"));
  EXPECT_TRUE(ContainsToken("<;> native_decide", "native_decide"));
  EXPECT_FALSE(ContainsToken("exact h_axiom", "axiom"));
  EXPECT_FALSE(ContainsToken("exact Foo.sorry_lemma", "sorry"));
  EXPECT_FALSE(ContainsToken("sorryfree", "sorry"));
  EXPECT_TRUE(ContainsToken("x\n#eval 1", "#eval"));
}

TEST(NormalizeWhitespace, CollapsesRuns) {
  EXPECT_EQ(NormalizeWhitespace("  theorem  x\n\t(a : Nat) :=\n"), "theorem x (a : Nat) :=");
}

TEST(FindDeclarations, FindsTheoremsProofsAndNamespaces) {
  const std::string text =
      "import Mathlib\n"
      "\n"
      "namespace Foo\n"
      "/-- doc with sorry -/\n"
      "@[simp] theorem add_zero' (n : Nat) (h : n = n := rfl) : n + 0 = n := by\n"
      "  simp\n"
      "\n"
      "-- trailing comment\n"
      "lemma two : 1 + 1 = 2 := by\n"
      "  sorry\n"
      "end Foo\n"
      "\n"
      "private theorem top : True :=\n"
      "  trivial\n"
      "def notATheorem : Nat := 1\n"
      "example : True := sorry\n";
  std::vector<Declaration> decls = FindDeclarations(text);
  ASSERT_EQ(decls.size(), 5u);
  EXPECT_EQ(decls[0].keyword, "theorem");
  EXPECT_EQ(decls[0].name, "add_zero'");
  EXPECT_EQ(decls[0].full_name, "Foo.add_zero'");
  EXPECT_EQ(std::string(decls[0].Header(text)),
            "@[simp] theorem add_zero' (n : Nat) (h : n = n := rfl) : n + 0 = n :=");
  EXPECT_EQ(std::string(decls[0].Proof(text)), " by\n  simp");
  EXPECT_FALSE(decls[0].has_sorry);
  EXPECT_EQ(decls[1].full_name, "Foo.two");
  EXPECT_TRUE(decls[1].has_sorry);
  EXPECT_EQ(std::string(decls[1].Proof(text)), " by\n  sorry");
  EXPECT_EQ(decls[2].full_name, "top");
  EXPECT_EQ(std::string(decls[2].Proof(text)), "\n  trivial");
  EXPECT_EQ(decls[3].keyword, "def");
  EXPECT_EQ(decls[3].name, "notATheorem");
  EXPECT_EQ(decls[4].name, "example");
  EXPECT_TRUE(decls[4].has_sorry);
}

TEST(FindDeclarations, SkipsEquationStyleDeclarations) {
  EXPECT_TRUE(FindDeclarations("theorem f : Nat → Nat\n  | 0 => 0\n  | n + 1 => n\n").empty());
}

TEST(SameStatement, IgnoresWhitespaceAndComments) {
  EXPECT_TRUE(SameStatement("theorem t (a : Nat) :\n  a = a :=", "theorem t (a : Nat) : a = a /- c -/ :="));
  EXPECT_FALSE(SameStatement("theorem t (a : Nat) : a = a :=", "theorem t (a : Nat) : True :="));
}

TEST(LineOfOffset, CountsNewlines) {
  EXPECT_EQ(LineOfOffset("a\nb\nc", 0), 0);
  EXPECT_EQ(LineOfOffset("a\nb\nc", 4), 2);
}

}  // namespace
}  // namespace lr::lsp
