#include "lsp/server_process.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <cstdlib>
#include <string>
#include <thread>

namespace lr::lsp {
namespace {

std::string ReadAll(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, n);
  return out;
}

// True when `pid` no longer exists (or is a zombie that someone else must reap).
bool Gone(int pid) {
  for (int i = 0; i < 400; ++i) {
    if (::kill(pid, 0) != 0) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    int status;
    ::waitpid(pid, &status, WNOHANG);  // reaps it when it was re-parented to us (we are a subreaper)
  }
  return false;
}

TEST(ServerProcess, AppliesLimitsWorkingDirectoryAndEnvironment) {
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "ulimit -v; ulimit -t; pwd; echo $LR_TEST_VAR"};
  spec.working_dir = "/tmp";
  spec.env = {{"LR_TEST_VAR", "hello"}};
  spec.memory_limit_bytes = int64_t{2} << 30;
  spec.cpu_limit_seconds = 7;
  auto p = ServerProcess::Spawn(spec);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  std::string out = ReadAll((*p)->stdout_fd());
  EXPECT_EQ(out, "2097152\n7\n/tmp\nhello\n");  // ulimit -v prints KiB
  for (int i = 0; i < 200 && (*p)->Running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ((*p)->ExitDescription(), "exited with status 0");
}

TEST(ServerProcess, MissingProgramIsNotFound) {
  ProcessSpec spec;
  spec.argv = {"leanrotor-no-such-program"};
  auto p = ServerProcess::Spawn(spec);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
  EXPECT_NE(p.status().message().find("leanrotor-no-such-program"), std::string::npos);
}

TEST(ServerProcess, KillEndsTheWholeGroup) {
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  ProcessSpec spec;
  spec.argv = {"sh", "-c", "sleep 100 & echo $!; wait"};
  auto p = ServerProcess::Spawn(spec);
  ASSERT_TRUE(p.ok());
  std::string line;
  char c;
  while (::read((*p)->stdout_fd(), &c, 1) == 1 && c != '\n') line += c;
  int grandchild = std::atoi(line.c_str());
  ASSERT_GT(grandchild, 0);
  int leader = (*p)->pid();
  EXPECT_TRUE((*p)->Running());
  EXPECT_GT((*p)->GroupResidentBytes(), 0);
  (*p)->Kill();
  EXPECT_FALSE((*p)->Running());
  EXPECT_NE((*p)->ExitDescription().find("signal 9"), std::string::npos);
  EXPECT_TRUE(Gone(leader));
  EXPECT_TRUE(Gone(grandchild));
}

TEST(ServerProcess, NoServerOutlivesAnInterruptedClient) {
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int report[2];
  ASSERT_EQ(::pipe(report), 0);
  pid_t client = ::fork();
  ASSERT_GE(client, 0);
  if (client == 0) {  // plays leanrotor: starts a server, reports its pid, waits to be interrupted
    ::close(report[0]);
    ProcessSpec spec;
    spec.argv = {"sleep", "100"};
    auto p = ServerProcess::Spawn(spec);
    if (!p.ok()) std::_Exit(10);
    std::string pid = std::to_string((*p)->pid()) + "\n";
    (void)!::write(report[1], pid.data(), pid.size());
    for (;;) ::pause();
  }
  ::close(report[1]);
  std::string line;
  char c;
  while (::read(report[0], &c, 1) == 1 && c != '\n') line += c;  // the client keeps its end open
  ::close(report[0]);
  int server = std::atoi(line.c_str());
  ASSERT_GT(server, 0);
  ASSERT_EQ(::kill(server, 0), 0);
  ::kill(client, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(client, &status, 0), client);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  EXPECT_TRUE(Gone(server));
}

TEST(ServerProcess, DefaultCommandNamesTheMissingTool) {
  const char* old = std::getenv("PATH");
  std::string saved = old ? old : "";
  ::setenv("PATH", "/nonexistent", 1);
  auto lone = DefaultLeanCommand("");
  auto project = DefaultLeanCommand(LR_SOURCE_DIR "/tests/lsp/testdata/lake_project");
  ::setenv("PATH", saved.c_str(), 1);
  ASSERT_FALSE(lone.ok());
  EXPECT_EQ(lone.status().code(), StatusCode::kNotFound);
  EXPECT_NE(lone.status().message().find("`lean`"), std::string::npos);
  EXPECT_NE(lone.status().message().find("elan-init.sh"), std::string::npos);
  ASSERT_FALSE(project.ok());
  EXPECT_NE(project.status().message().find("`lake`"), std::string::npos);
}

}  // namespace
}  // namespace lr::lsp
