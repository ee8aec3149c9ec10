// `leanrotor check` end to end: the real executable with the scripted Lean server behind --lean-cmd.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

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

// True when `pid` no longer exists; reaps it when it was re-parented to this test (a subreaper).
bool Gone(int pid) {
  for (int i = 0; i < 400; ++i) {
    int status;
    ::waitpid(pid, &status, WNOHANG);
    if (::kill(pid, 0) != 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

TEST(CheckCommand, TimeoutBoundsTheWholeCheckFromTheHandshakeOn) {
  // The server never answers initialize. The handshake's own cap (60 s) and a retry with a fresh deadline (6 s) were
  // both wrong: --timeout 3 is the whole check.
  std::string f = WriteLean("hung_init", "theorem t : True := by\n  trivial\n");
  const auto start = std::chrono::steady_clock::now();
  CliRun r = Leanrotor("check " + f + " --timeout 3 " + Scripted("hang_initialize"));
  const double seconds = SecondsSince(start);
  EXPECT_EQ(r.exit_code, 2) << r.out;
  EXPECT_NE(r.out.find("initialize"), std::string::npos) << r.out;
  EXPECT_LT(seconds, 5.5) << r.out;
  std::printf("check --timeout 3 against a server that hangs at initialize: %.2f s\n", seconds);
}

TEST(CheckCommand, ATextThatCrashesLeansWorkerIsAVerdictNotAnInfrastructureFailure) {
  std::string f = WriteLean("crash_text", "theorem t : True := by\n  exact DEEP_RECURSION\n");
  CliRun r = Leanrotor("check " + f + " --lean-cmd '" + LR_SCRIPTED_LEAN_SERVER + " --crash-on DEEP_RECURSION'");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("file worker crashed on this text"), std::string::npos) << r.out;
  std::string clean = WriteLean("crash_clean", "theorem t : True := by\n  trivial\n");
  CliRun ok = Leanrotor("check " + clean + " --lean-cmd '" + LR_SCRIPTED_LEAN_SERVER + " --crash-on DEEP_RECURSION'");
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
}

// Starts `leanrotor check FILE --lean-cmd SERVER` with stdout and stderr in `log`; `ignore_sigint` starts it with
// SIGINT ignored, as a shell starts a background job.
pid_t StartCheck(const std::string& file, const std::string& server, const std::string& log, bool ignore_sigint) {
  pid_t cli = ::fork();
  if (cli == 0) {
    if (ignore_sigint) ::signal(SIGINT, SIG_IGN);
    int out = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(out, 1);
    ::dup2(out, 2);
    ::execl(LR_LEANROTOR, LR_LEANROTOR, "check", file.c_str(), "--lean-cmd", server.c_str(), nullptr);
    std::_Exit(127);
  }
  return cli;
}

// Waits for the scripted server to write its pid to `pid_file`; 0 when it never does.
int ServerPid(const std::string& pid_file) {
  for (int i = 0; i < 1000; ++i) {
    auto text = lr::ReadFile(pid_file);
    if (text.ok() && !text->empty()) return std::atoi(text->c_str());
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return 0;
}

TEST(CheckCommand, WithSigintIgnoredTheCheckFinishesNormally) {
  std::string f = WriteLean("ignored", "theorem t : True := by\n  trivial\n");
  std::string pid_file = ::testing::TempDir() + "/ignored_pid_" + std::to_string(::getpid());
  std::string log = ::testing::TempDir() + "/ignored_log_" + std::to_string(::getpid());
  ::unlink(pid_file.c_str());
  pid_t cli = StartCheck(f, std::string(LR_SCRIPTED_LEAN_SERVER) + " --delay-ms 1500 --pid-file " + pid_file, log,
                         /*ignore_sigint=*/true);
  const int server_pid = ServerPid(pid_file);
  ASSERT_GT(server_pid, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_EQ(::kill(cli, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(cli, &status, 0), cli);
  auto read = lr::ReadFile(log);
  std::string out = read.ok() ? *read : "";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << "\n" << out;
  EXPECT_EQ(out.find("out of memory"), std::string::npos) << out;
  EXPECT_EQ(out.find("killed by signal"), std::string::npos) << out;
  EXPECT_NE(out.find("0 error(s)"), std::string::npos) << out;
  // The same server answered: it was not killed by the SIGINT and replaced (each server rewrites the pid file).
  EXPECT_EQ(ServerPid(pid_file), server_pid) << out;
}

TEST(CheckCommand, InterruptedCheckLeavesNoServerBehind) {
  // Servers orphaned by leanrotor are re-parented to this test, so a surviving one is seen, and a killed one reaped.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  std::string f = WriteLean("interrupted", "theorem t : True := by\n  trivial\n");
  for (int sig : {SIGINT, SIGTERM}) {
    std::string pid_file =
        ::testing::TempDir() + "/server_pid_" + std::to_string(::getpid()) + "_" + std::to_string(sig);
    ::unlink(pid_file.c_str());
    std::string server = std::string(LR_SCRIPTED_LEAN_SERVER) + " --scenario hang --pid-file " + pid_file;
    pid_t cli = ::fork();
    ASSERT_GE(cli, 0);
    if (cli == 0) {
      int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::execl(LR_LEANROTOR, LR_LEANROTOR, "check", f.c_str(), "--lean-cmd", server.c_str(), nullptr);
      std::_Exit(127);
    }
    std::string pid_text;
    for (int i = 0; i < 1000 && pid_text.empty(); ++i) {  // the server writes its pid once it runs
      auto text = lr::ReadFile(pid_file);
      if (text.ok())
        pid_text = *text;
      else
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    int server_pid = std::atoi(pid_text.c_str());
    ASSERT_GT(server_pid, 0) << "the scripted server never started";
    ASSERT_EQ(::kill(server_pid, 0), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the check reach the hanging server
    ASSERT_EQ(::kill(cli, sig), 0);
    const auto start = std::chrono::steady_clock::now();
    int status = 0;
    ASSERT_EQ(::waitpid(cli, &status, 0), cli);
    const double seconds = SecondsSince(start);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 128 + sig) << "status " << status;
    EXPECT_LT(seconds, 5.0);
    EXPECT_TRUE(Gone(server_pid)) << "the Lean server outlived leanrotor after signal " << sig;
    std::printf("check: signal %d to exit: %.3f s\n", sig, seconds);
  }
}

TEST(CheckCommand, LimitFlagsReachTheServer) {
  // The "server" writes its limits next to itself and exits: the check fails (exit 2), the limits are on file.
  std::string f = WriteLean("limits", "theorem t : True := trivial\n");
  std::string script = ::testing::TempDir() + "/print_limits_" + std::to_string(::getpid()) + ".sh";
  ASSERT_TRUE(lr::WriteFileAtomic(script, "#!/bin/sh\necho \"as=$(ulimit -v) cpu=$(ulimit -t)\" > \"$0.out\"\n").ok());
  ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
  CliRun r = Leanrotor("check " + f + " --lean-memory 3 --lean-cpu 11 --lean-cmd " + script);
  EXPECT_EQ(r.exit_code, 2) << r.out;
  auto limits = lr::ReadFile(script + ".out");
  ASSERT_TRUE(limits.ok()) << r.out;
  EXPECT_EQ(*limits, "as=" + std::to_string(3 * 1024 * 1024) + " cpu=11\n");
}

}  // namespace
