// `leanrotor check` end to end: the real executable with the scripted Lean server behind --lean-cmd.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <gtest/gtest.h>
#include <string>

#include <nlohmann/json.hpp>

#include "base/file.h"

namespace {

struct CliRun {
  int exit_code = -1;
  std::string out;
};

// Runs `leanrotor ARGS` through the shell (after `prefix`, e.g. "env PATH=... "), stdout and stderr together.
CliRun Leanrotor(const std::string& args, const std::string& prefix = "") {
  std::string cmd = prefix + LR_LEANROTOR + " " + args + " 2>&1";
  CliRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string WriteLean(const std::string& name, const std::string& text) {
  std::string path = ::testing::TempDir() + "/" + name + "_" + std::to_string(::getpid()) + ".lean";
  EXPECT_TRUE(lr::WriteFileAtomic(path, text).ok());
  return path;
}

std::string Scripted(const std::string& scenario) {
  return std::string("--lean-cmd '") + LR_SCRIPTED_LEAN_SERVER + " --scenario " + scenario + "'";
}

TEST(CheckCommand, CleanFileExitsZero) {
  std::string f = WriteLean("clean", "theorem t : 1 + 1 = 2 := by\n  decide\n");
  CliRun r = Leanrotor("check " + f + " " + Scripted("normal"));
  EXPECT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("0 error(s), 0 warning(s)"), std::string::npos) << r.out;
}

TEST(CheckCommand, SorryPrintsGoalAndExitsOne) {
  std::string f = WriteLean("sorry", "theorem t (n : ℕ) : n + 0 = n := by\n  -- goal: n : ℕ\\n⊢ n + 0 = n\n  sorry\n");
  CliRun r = Leanrotor("check " + f + " " + Scripted("normal"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find(":1:8: warning: declaration uses 'sorry'"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(":3:2: goal at sorry:\n  n : ℕ\n  ⊢ n + 0 = n"), std::string::npos) << r.out;
}

TEST(CheckCommand, JsonOutput) {
  std::string f = WriteLean("json", "theorem t : True := by\n  exact foo -- ERROR: unknown identifier 'foo'\n");
  CliRun r = Leanrotor("check " + f + " --json " + Scripted("normal"));
  EXPECT_EQ(r.exit_code, 1) << r.out;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["has_errors"], true);
  EXPECT_EQ(j["diagnostics"][0]["message"], "unknown identifier 'foo'");
  EXPECT_EQ(j["diagnostics"][0]["start"]["line"], 1);
}

TEST(CheckCommand, BrokenServerExitsTwo) {
  std::string f = WriteLean("broken", "theorem t : True := by\n  trivial\n");
  CliRun r = Leanrotor("check " + f + " " + Scripted("crash_worker"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("not a verdict on the proof"), std::string::npos) << r.out;
  CliRun hang = Leanrotor("check " + f + " --timeout 0.3 " + Scripted("hang"));
  EXPECT_EQ(hang.exit_code, 2) << hang.out;
}

TEST(CheckCommand, MissingLeanExitsTwoWithInstallHint) {
  std::string f = WriteLean("nolean", "theorem t : True := trivial\n");
  CliRun r = Leanrotor("check " + f, "env PATH=/nonexistent ");
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("Lean 4 is not installed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("elan-init.sh"), std::string::npos) << r.out;
}

TEST(CheckCommand, MissingFileExitsTwo) {
  CliRun r = Leanrotor("check /nonexistent/x.lean " + Scripted("normal"));
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("/nonexistent/x.lean"), std::string::npos) << r.out;
}

}  // namespace
