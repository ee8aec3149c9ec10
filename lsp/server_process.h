// The Lean server as an operating-system process.
//
// A ServerProcess runs a command (resolved on PATH) with its stdin/stdout/stderr on pipes, in its own working
// directory and environment, in its own process group, with an address-space limit (RLIMIT_AS) and a CPU-time limit
// (RLIMIT_CPU) set in the child before exec. The limits and the group cover every process the server starts (Lean's
// per-file workers), so Kill() ends the whole tree.
//
// No server outlives leanrotor: every live process group is recorded, and a normal exit (atexit), a second interrupt
// (base/interrupt.h's exit hook) and SIGINT, SIGTERM or SIGHUP without an interrupt handler (the signal then ends the
// process) kill them all before leanrotor goes. With base/interrupt.h's handler installed, a first interrupt kills
// nothing here: the checks are cancelled and stop their own servers. A signal ignored when the first server starts
// stays ignored. Children are always reaped (waitpid), so none is left a zombie. A server also sees end-of-file on
// its stdin when leanrotor dies any other way.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"

namespace lr::lsp {

struct ProcessSpec {
  std::vector<std::string> argv;                         // argv[0] is looked up on PATH unless it contains '/'
  std::string working_dir;                               // empty: the current directory
  std::vector<std::pair<std::string, std::string>> env;  // set on top of leanrotor's own environment
  int64_t memory_limit_bytes = 0;                        // RLIMIT_AS per process; 0: none
  int64_t cpu_limit_seconds = 0;                         // RLIMIT_CPU per process; 0: none
};

// The server command for a check: `lake serve` in a Lake project root (one holding lakefile.lean or lakefile.toml),
// `lean --server` otherwise. kNotFound, with how to install Lean 4, when the tool is not on PATH.
Result<std::vector<std::string>> DefaultLeanCommand(const std::string& project_root);

// How to install Lean 4 (elan), for error messages.
extern const char kInstallLeanHint[];

// The full path of `program` on PATH, or nullopt.
std::optional<std::string> FindOnPath(const std::string& program);

class ServerProcess {
 public:
  // Starts the process. kNotFound when the program is not on PATH, kIo when it cannot be spawned.
  static Result<std::unique_ptr<ServerProcess>> Spawn(const ProcessSpec& spec);
  ~ServerProcess();  // Kill(), then closes the pipes

  int pid() const { return pid_; }
  int stdin_fd() const { return stdin_fd_; }    // owned; non-blocking
  int stdout_fd() const { return stdout_fd_; }  // owned
  int stderr_fd() const { return stderr_fd_; }  // owned

  // True while the process has not exited (reaps it when it has).
  bool Running();
  // Waits up to `timeout` for the process to exit on its own; true when it has.
  bool WaitForExit(std::chrono::milliseconds timeout);
  // Kills the process group with SIGKILL and reaps the leader. Idempotent. The pipes stay open (a reader sees
  // end-of-file) until the ServerProcess is destroyed.
  void Kill();
  // Closes stdin and waits up to `grace` for the process to exit on its own, then Kill(). Call it only when nothing
  // else uses the pipes any more.
  void Stop(std::chrono::milliseconds grace);
  // The exit status as text ("exited with status 3", "killed by signal 9 (memory or CPU limit?)"), or "running".
  std::string ExitDescription();
  // Resident memory of every process in the group, in bytes (from /proc).
  int64_t GroupResidentBytes() const;

 private:
  ServerProcess() = default;
  void Reap(bool block);

  int pid_ = -1;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  bool reaped_ = false;
  bool killed_ = false;
  int wait_status_ = 0;
};

}  // namespace lr::lsp
