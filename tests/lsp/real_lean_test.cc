// LeanClient and ServerPool against the real Lean 4 server. Every test skips, saying why, when `lean` is not on PATH.
#include <gtest/gtest.h>

#include "lsp/server_pool.h"

namespace lr::lsp {
namespace {

#define SKIP_WITHOUT_LEAN()                                                \
  if (!FindOnPath("lean"))                                                 \
  GTEST_SKIP() << "Lean 4 is not installed here (`lean` is not on PATH); " \
                  "install it with elan to run the real-Lean tests"

CheckRequest Request(const std::string& text) {
  CheckRequest r;
  r.text = text;
  r.timeout = std::chrono::seconds(120);
  return r;
}

TEST(RealLean, ProvedTheoremHasNoErrors) {
  SKIP_WITHOUT_LEAN();
  ServerPool pool(PoolOptions{});
  auto r = pool.Check(Request("theorem two : 1 + 1 = 2 := by\n  decide\n"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->HasErrors());
  EXPECT_FALSE(r->UsesSorry());
}

TEST(RealLean, SorryGivesWarningAndGoal) {
  SKIP_WITHOUT_LEAN();
  ServerPool pool(PoolOptions{});
  auto r = pool.Check(Request("theorem t (n : Nat) : n + 0 = n := by\n  sorry\n"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->UsesSorry());
  ASSERT_FALSE(r->goals.empty());
  ASSERT_EQ(r->goals[0].goals.size(), 1u);
  EXPECT_NE(r->goals[0].goals[0].find("⊢ n + 0 = n"), std::string::npos);
}

TEST(RealLean, ErrorPositionsAreUtf8) {
  SKIP_WITHOUT_LEAN();
  ServerPool pool(PoolOptions{});
  auto r = pool.Check(Request("theorem t (α : Type) (a : α) : a = a := by\n  exact foo\n"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(r->HasErrors());
  bool found = false;
  for (const Diagnostic& d : r->diagnostics)
    if (d.message.find("foo") != std::string::npos) {
      found = true;
      EXPECT_EQ(d.range.start, (Position{1, 8}));
    }
  EXPECT_TRUE(found);
}

TEST(RealLean, MultiAttempt) {
  SKIP_WITHOUT_LEAN();
  ServerPool pool(PoolOptions{});
  auto r = pool.MultiAttempt(Request("theorem t (n : Nat) : n + 0 = n := by\n  sorry\n"), 1, {"rfl", "exact foo"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_TRUE((*r)[0].diagnostics.empty());
  EXPECT_FALSE((*r)[1].diagnostics.empty());
}

}  // namespace
}  // namespace lr::lsp
