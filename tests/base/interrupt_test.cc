// base/interrupt.h in child processes (the handlers are process-wide): real signals, real exit statuses.
#include "base/interrupt.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include <gtest/gtest.h>

namespace lr {
namespace {

int g_hook_fd = -1;
void Hook() {
  const char c = 'h';
  (void)!::write(g_hook_fd, &c, 1);
}

// Runs `body` in a child; returns its exit code (or 128 + the signal that ended it).
template <typename Fn>
int InChild(Fn body) {
  pid_t pid = ::fork();
  if (pid == 0) std::_Exit(body());
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST(Interrupt, FirstSignalSetsTheFlagSecondExitsAfterTheHooks) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  for (int sig : {SIGINT, SIGTERM}) {
    const int code = InChild([&] {
      g_hook_fd = fds[1];
      const std::atomic<bool>* flag = InstallInterruptHandler(nullptr);
      if (!AddInterruptExitHook(Hook)) return 1;
      if (flag->load() || Interrupted() || InterruptExitCode() != 0) return 2;
      ::raise(sig);
      if (!flag->load() || InterruptExitCode() != 128 + sig) return 3;
      ::raise(sig);  // exits here
      return 4;
    });
    EXPECT_EQ(code, 128 + sig);
    char c = 0;
    EXPECT_EQ(::read(fds[0], &c, 1), 1);
    EXPECT_EQ(c, 'h');
  }
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST(Interrupt, AnIgnoredSignalStaysIgnored) {
  const int code = InChild([] {
    ::signal(SIGINT, SIG_IGN);
    InstallInterruptHandler(nullptr);
    if (InterruptHandlerOwns(SIGINT) || !InterruptHandlerOwns(SIGTERM)) return 1;
    ::raise(SIGINT);
    ::raise(SIGINT);
    return Interrupted() ? 2 : 0;
  });
  EXPECT_EQ(code, 0);
}

}  // namespace
}  // namespace lr
