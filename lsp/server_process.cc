#include "lsp/server_process.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <boost/process.hpp>
#include <boost/process/extend.hpp>

#include "base/interrupt.h"

namespace bp = boost::process;

namespace lr::lsp {

const char kInstallLeanHint[] =
    "Lean 4 is not installed (neither `lake` nor `lean` is on PATH). Install it with elan, Lean's toolchain "
    "manager:\n  curl https://raw.githubusercontent.com/leanprover/elan/master/elan-init.sh -sSf | sh\n"
    "then open a new shell (or add ~/.elan/bin to PATH).";

namespace {

// Process groups of live servers. Fixed slots of atomics, because the signal handler reads them.
constexpr int kMaxGroups = 256;
std::atomic<int> g_groups[kMaxGroups];
struct sigaction g_previous[3];
constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};

void KillAllGroups() {
  for (auto& g : g_groups) {
    int pgid = g.load();
    if (pgid > 0) ::kill(-pgid, SIGKILL);
  }
}

void OnFatalSignal(int sig) {
  for (int i = 0; i < 3; ++i) {
    if (kSignals[i] != sig) continue;
    const struct sigaction& prev = g_previous[i];
    if (!(prev.sa_flags & SA_SIGINFO) && prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
      prev.sa_handler(sig);  // the application handles interrupts (base/interrupt.h): it cancels the checks
      return;
    }
  }
  KillAllGroups();
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void InstallCleanupOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    ::signal(SIGPIPE, SIG_IGN);  // a write to a dead server is an EPIPE error, not the end of leanrotor
    for (int i = 0; i < 3; ++i) {
      ::sigaction(kSignals[i], nullptr, &g_previous[i]);
      if (!(g_previous[i].sa_flags & SA_SIGINFO) && g_previous[i].sa_handler == SIG_IGN) continue;  // stays ignored
      if (InterruptHandlerOwns(kSignals[i])) continue;  // base/interrupt.h handles it and runs our exit hook
      struct sigaction sa {};
      sa.sa_handler = OnFatalSignal;
      sigemptyset(&sa.sa_mask);
      ::sigaction(kSignals[i], &sa, nullptr);
    }
    AddInterruptExitHook(KillAllGroups);
    std::atexit(KillAllGroups);
  });
}

void RegisterGroup(int pgid) {
  for (auto& g : g_groups) {
    int expected = 0;
    if (g.compare_exchange_strong(expected, pgid)) return;
  }
  // More than kMaxGroups live servers: this one is still killed by Kill(), only not by the signal path.
}

void UnregisterGroup(int pgid) {
  for (auto& g : g_groups) {
    int expected = pgid;
    if (g.compare_exchange_strong(expected, 0)) return;
  }
}

// Boost.Process creates pipes without O_CLOEXEC: spawning one at a time, and marking our ends close-on-exec before
// the next spawn, keeps each server's pipes out of the others.
std::mutex g_spawn_mu;

int TakeFd(int fd, bool nonblocking) {
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  if (nonblocking) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

}  // namespace

std::optional<std::string> FindOnPath(const std::string& program) {
  boost::filesystem::path p = bp::search_path(program);
  if (p.empty()) return std::nullopt;
  return p.string();
}

Result<std::vector<std::string>> DefaultLeanCommand(const std::string& project_root) {
  namespace fs = std::filesystem;
  std::error_code ec;
  bool lake_project = !project_root.empty() && (fs::exists(fs::path(project_root) / "lakefile.lean", ec) ||
                                                fs::exists(fs::path(project_root) / "lakefile.toml", ec));
  if (lake_project) {
    if (!FindOnPath("lake")) return NotFound(std::string("`lake` is not on PATH. ") + kInstallLeanHint);
    return std::vector<std::string>{"lake", "serve"};
  }
  if (!FindOnPath("lean")) return NotFound(std::string("`lean` is not on PATH. ") + kInstallLeanHint);
  return std::vector<std::string>{"lean", "--server"};
}

Result<std::unique_ptr<ServerProcess>> ServerProcess::Spawn(const ProcessSpec& spec) {
  if (spec.argv.empty()) return InvalidArgument("empty Lean server command");
  InstallCleanupOnce();
  std::string exe = spec.argv[0];
  if (exe.find('/') == std::string::npos) {
    auto found = FindOnPath(exe);
    if (!found) return NotFound("Lean server command '" + exe + "' is not on PATH");
    exe = *found;
  }
  if (::access(exe.c_str(), X_OK) != 0)
    return NotFound("Lean server command '" + exe + "' is not an executable file: " + std::strerror(errno));
  std::vector<std::string> args(spec.argv.begin() + 1, spec.argv.end());
  std::string dir = spec.working_dir.empty() ? std::filesystem::current_path().string() : spec.working_dir;

  bp::environment env = boost::this_process::environment();
  for (const auto& [k, v] : spec.env) env[k] = v;

  const rlim_t mem = static_cast<rlim_t>(spec.memory_limit_bytes);
  const rlim_t cpu = static_cast<rlim_t>(spec.cpu_limit_seconds);
  // Runs in the child between fork and exec: async-signal-safe calls only.
  auto setup = [mem, cpu](auto&) {
    ::setpgid(0, 0);
    if (mem > 0) {
      struct rlimit rl {
        mem, mem
      };
      ::setrlimit(RLIMIT_AS, &rl);
    }
    if (cpu > 0) {
      struct rlimit rl {
        cpu, cpu + 5
      };
      ::setrlimit(RLIMIT_CPU, &rl);
    }
    // Nothing but stdin/stdout/stderr survives exec (other servers' pipes would keep their ends open). The flag
    // form leaves Boost's own exec-error pipe working until exec.
    if (::close_range(3, ~0u, CLOSE_RANGE_CLOEXEC) != 0) {
      struct rlimit nofile {};
      ::getrlimit(RLIMIT_NOFILE, &nofile);
      rlim_t top = nofile.rlim_cur == RLIM_INFINITY || nofile.rlim_cur > 65536 ? 65536 : nofile.rlim_cur;
      for (rlim_t fd = 3; fd < top; ++fd) ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
    }
    ::signal(SIGPIPE, SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGHUP, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
  };

  std::unique_ptr<ServerProcess> proc(new ServerProcess());
  std::lock_guard<std::mutex> lock(g_spawn_mu);
  bp::pipe in, out, err;
  std::error_code ec;
  bp::child child(bp::exe = exe, bp::args = args, bp::std_in<in, bp::std_out> out, bp::std_err > err,
                  bp::start_dir = dir, env, bp::extend::on_exec_setup = setup, ec);
  if (ec) return IoError("cannot start Lean server '" + exe + "' in " + dir + ": " + ec.message());
  proc->pid_ = child.id();
  child.detach();                     // reaped by Reap(), not by Boost
  ::setpgid(proc->pid_, proc->pid_);  // also from this side, so the group exists before we may kill it
  RegisterGroup(proc->pid_);
  proc->stdin_fd_ = TakeFd(in.native_sink(), /*nonblocking=*/true);
  in.assign_sink(-1);
  proc->stdout_fd_ = TakeFd(out.native_source(), false);
  out.assign_source(-1);
  proc->stderr_fd_ = TakeFd(err.native_source(), false);
  err.assign_source(-1);
  return proc;
}

ServerProcess::~ServerProcess() {
  Kill();
  for (int* fd : {&stdin_fd_, &stdout_fd_, &stderr_fd_}) {
    if (*fd >= 0) ::close(*fd);
    *fd = -1;
  }
}

void ServerProcess::Reap(bool block) {
  if (pid_ <= 0 || reaped_) return;
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(pid_, &status, block ? 0 : WNOHANG);
    if (r < 0 && errno == EINTR) continue;
    if (r == pid_) {
      reaped_ = true;
      wait_status_ = status;
    } else if (r < 0) {
      reaped_ = true;  // not our child any more (already reaped elsewhere)
    }
    return;
  }
}

bool ServerProcess::Running() {
  Reap(false);
  return pid_ > 0 && !reaped_;
}

void ServerProcess::Kill() {
  if (pid_ > 0 && !killed_) {
    killed_ = true;
    ::kill(-pid_, SIGKILL);  // the whole group: Lean's workers too
    if (!reaped_) ::kill(pid_, SIGKILL);
    Reap(true);
    UnregisterGroup(pid_);
  }
}

void ServerProcess::Stop(std::chrono::milliseconds grace) {
  if (stdin_fd_ >= 0) {
    ::close(stdin_fd_);
    stdin_fd_ = -1;
  }
  WaitForExit(grace);
  Kill();
}

bool ServerProcess::WaitForExit(std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (Running() && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return !Running();
}

std::string ServerProcess::ExitDescription() {
  if (Running()) return "running";
  if (WIFEXITED(wait_status_)) return "exited with status " + std::to_string(WEXITSTATUS(wait_status_));
  if (WIFSIGNALED(wait_status_)) {
    int sig = WTERMSIG(wait_status_);
    std::string d = "killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
    if (sig == SIGXCPU) d += ": CPU time limit reached";
    if (sig == SIGKILL || sig == SIGSEGV || sig == SIGABRT) d += "; out of memory under its limit?";
    return d;
  }
  return "ended";
}

int64_t ServerProcess::GroupResidentBytes() const {
  if (pid_ <= 0) return 0;
  int64_t pages = 0;
  DIR* proc = ::opendir("/proc");
  if (!proc) return 0;
  while (dirent* e = ::readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    size_t close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    // Fields after the command name: state ppid pgrp ... ; rss is field 24 of the whole line.
    std::vector<std::string> fields;
    size_t i = close_paren + 2;
    while (i < stat.size() && fields.size() < 22) {
      size_t sp = stat.find(' ', i);
      if (sp == std::string::npos) sp = stat.size();
      fields.push_back(stat.substr(i, sp - i));
      i = sp + 1;
    }
    if (fields.size() < 22) continue;
    if (std::atoi(fields[2].c_str()) != pid_) continue;  // pgrp
    pages += std::atoll(fields[21].c_str());             // rss
  }
  ::closedir(proc);
  return pages * ::sysconf(_SC_PAGESIZE);
}

}  // namespace lr::lsp
