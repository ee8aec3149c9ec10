#include "base/interrupt.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

namespace lr {
namespace {

constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
constexpr int kMaxHooks = 8;

std::atomic<bool> g_interrupted{false};
std::atomic<int> g_signal{0};
std::atomic<bool> g_owned[3];
std::atomic<void (*)()> g_hooks[kMaxHooks];
const char* g_note = nullptr;

void OnInterrupt(int sig) {
  int expected = 0;
  if (!g_signal.compare_exchange_strong(expected, sig)) {  // the second one: out now
    for (auto& h : g_hooks)
      if (void (*hook)() = h.load()) hook();
    ::_exit(128 + g_signal.load());
  }
  g_interrupted.store(true);
  if (g_note != nullptr) {
    ssize_t ignored = ::write(STDERR_FILENO, g_note, std::strlen(g_note));
    (void)ignored;
  }
}

}  // namespace

const std::atomic<bool>* InstallInterruptHandler(const char* note) {
  static std::once_flag once;
  std::call_once(once, [note] {
    g_note = note;
    for (int i = 0; i < 3; ++i) {
      struct sigaction old {};
      ::sigaction(kSignals[i], nullptr, &old);
      if (!(old.sa_flags & SA_SIGINFO) && old.sa_handler == SIG_IGN) continue;  // ignored by whoever started us
      struct sigaction sa {};
      sa.sa_handler = OnInterrupt;
      sigemptyset(&sa.sa_mask);
      ::sigaction(kSignals[i], &sa, nullptr);
      g_owned[i].store(true);
    }
  });
  return &g_interrupted;
}

bool Interrupted() { return g_interrupted.load(); }

int InterruptExitCode() {
  const int sig = g_signal.load();
  return sig == 0 ? 0 : 128 + sig;
}

bool AddInterruptExitHook(void (*hook)()) {
  for (auto& h : g_hooks) {
    void (*expected)() = nullptr;
    if (h.compare_exchange_strong(expected, hook) || expected == hook) return true;
  }
  return false;
}

bool InterruptHandlerOwns(int sig) {
  for (int i = 0; i < 3; ++i)
    if (kSignals[i] == sig) return g_owned[i].load();
  return false;
}

}  // namespace lr
