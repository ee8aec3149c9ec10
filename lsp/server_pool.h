// A pool of warm Lean servers, what the agent and `leanrotor check` call.
//
// Servers are keyed by (project root, import header): the `import` lines at the top of the text. Lean re-elaborates
// imports only when they change, so a check whose imports match an idle server's reuses it and pays only for its own
// declarations (`import Mathlib` costs 15 s+ per cold process). One check uses one server at a time.
//
// Policy:
//  - At most `max_servers` processes. When a new key needs a server and the pool is full, the least recently used
//    idle server is stopped; when none is idle, the check waits for one (up to its deadline).
//  - Memory: each process has RLIMIT_AS = `server_memory_limit_bytes` when set; after each check, a server whose
//  process group
//    holds more than `server_resident_cap_bytes` resident is retired, and idle servers are stopped (least recently
//    used first) while the pool's total resident memory exceeds `pool_resident_cap_bytes` (the figures are at most
//    250 ms old: LeanClient::ResidentBytes).
//  - Deadline: CheckRequest::timeout bounds the whole check: starting a server, initialize, the didOpen barrier, the
//    goals, and the retry below all share one deadline.
//  - Failures: when a server dies, hangs (misses the deadline of one request), crashes its worker or breaks the
//    protocol during a check, it is killed, a fresh one is started and the check is retried once (if time is left).
//    If the retry fails too, Check returns kUnavailable (or kTimeout): an infrastructure error, never a failed proof.
//  - A text that crashes Lean's file worker on both servers, while the second then checks the text's import header
//    (known-good text) fine, is not an infrastructure failure: Check returns a CheckResult with `worker_crash` set
//    (a verdict on the text). A crash on the header too is an infrastructure failure.
//  - Cancellation: when the request's cancel flag is set, every wait of the check ends (kCancelled) within about
//    50 ms, its server is killed, and no server is started or restarted for it.
//
// Thread-safe: several threads may call Check at once; each gets its own server.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/status.h"
#include "lsp/lean_client.h"

namespace lr::lsp {

struct PoolOptions {
  // The server command. Empty: DefaultLeanCommand(project_root) (`lake serve` or `lean --server`).
  std::vector<std::string> lean_command;
  std::vector<std::pair<std::string, std::string>> env;  // extra environment for the servers
  size_t max_servers = 2;
  int64_t server_memory_limit_bytes = 0;  // RLIMIT_AS per server process; 0: none (the resident caps still apply)
  int64_t server_resident_cap_bytes = int64_t{6} << 30;  // retire a server above this after a check
  int64_t pool_resident_cap_bytes = int64_t{12} << 30;   // stop idle servers above this in total
  int64_t server_cpu_limit_seconds = 0;                  // RLIMIT_CPU per server process; 0: none
  ClientOptions client;
};

struct CheckRequest {
  std::string project_root;  // Lake project to check in (absolute); empty: a lone file, `lean --server`
  std::string path;          // where the file lives or would live; empty: a scratch name in project_root or /tmp
  std::string text;          // the whole file
  std::chrono::milliseconds timeout{300000};  // for the whole check, retry included
  const std::atomic<bool>* cancel = nullptr;  // set: the check stops with kCancelled (null: never)
};

class ServerPool {
 public:
  explicit ServerPool(PoolOptions options);
  ~ServerPool();  // stops every server
  ServerPool(const ServerPool&) = delete;
  ServerPool& operator=(const ServerPool&) = delete;

  // Checks request.text (see LeanClient::Check), on a server for its project and import header.
  Result<CheckResult> Check(const CheckRequest& request);

  // The goal at `position` (UTF-8 column) in request.text: checks it, then asks Lean there.
  Result<Goal> GoalAt(const CheckRequest& request, Position position);

  // Checks request.text, then runs `query` on the same server while it is held, with the document's URI and the
  // check's result (the document stays open as request.text). A non-OK Status from `query` fails the call; an
  // infrastructure failure (kUnavailable, kTimeout) retries check and query once on a fresh server, like Check.
  using DocumentQuery = std::function<Status(LeanClient& client, const std::string& uri, const CheckResult& checked,
                                             std::chrono::steady_clock::time_point deadline)>;
  Result<CheckResult> CheckThen(const CheckRequest& request, const DocumentQuery& query);

  // Tries each snippet in place of line `line` of request.text (see LeanClient::MultiAttempt).
  Result<std::vector<AttemptResult>> MultiAttempt(const CheckRequest& request, int line,
                                                  const std::vector<std::string>& snippets);

  // Stops every idle server (busy ones finish their check first), so that later checks start fresh servers: what
  // a caller does after rebuilding the project's imports, which a running Lean server does not reload.
  void StopIdle();

  // Servers alive now, and servers started since the pool was made (for logs and tests).
  size_t live_servers() const;
  size_t servers_started() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The import header of a Lean file: its leading `import` lines (after comments and blank lines), joined by '\n'.
std::string ImportHeader(const std::string& text);

}  // namespace lr::lsp
