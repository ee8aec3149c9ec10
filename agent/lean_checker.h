// What the prover needs from Lean: check one file's text, get its messages and the goals where it failed.
//
// The production implementation is PoolChecker, over the Lean server pool (lsp/server_pool.h); tests script it.
// These plain structs are what the agent and the terminal UI read; PoolChecker fills them from lsp::CheckResult.
// Infrastructure failures (no server, a crash, a timeout) are non-OK Statuses (kUnavailable, kTimeout), never a
// report: a report means Lean really elaborated the text, or that Lean's file worker crashed on this very text
// repeatably while Lean itself works (`worker_crash`, a property of the text). The pool already retries a failed
// check once on a fresh server, so callers don't. A set cancel flag ends a check with kCancelled.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "base/status.h"
#include "lsp/server_pool.h"

namespace lr::agent {

struct LeanMessage {
  int line = 0;      // 0-based line where the message starts
  int severity = 1;  // 1 error, 2 warning, 3 information, 4 hint (LSP DiagnosticSeverity)
  std::string text;
};

struct LeanGoal {
  int line = 0;       // 0-based line of the sorry or error the goal belongs to
  std::string goals;  // Lean's pretty-printed goals ("x : Nat\n⊢ x + 0 = x"), several separated by blank lines
};

struct LeanReport {
  std::vector<LeanMessage> messages;
  std::vector<LeanGoal> goals;
  double seconds = 0;        // time Lean took for this check
  std::string worker_crash;  // non-empty: Lean's file worker crashed on this text, repeatably (why); no messages
};

struct CheckRequest {
  std::string text;              // the whole file
  std::string project_root;      // Lake project to check in; empty: a standalone file
  std::string path;              // where the file would live (inside project_root for project tasks); may be empty
  double timeout_seconds = 300;  // for the whole check
  const std::atomic<bool>* cancel = nullptr;  // set: the check stops with kCancelled (null: never)
};

class LeanChecker {
 public:
  virtual ~LeanChecker() = default;
  // Safe to call from several threads at once (batch --jobs).
  virtual Result<LeanReport> Check(const CheckRequest& request) = 0;
};

class PoolChecker : public LeanChecker {
 public:
  explicit PoolChecker(lsp::ServerPool& pool) : pool_(pool) {}
  Result<LeanReport> Check(const CheckRequest& request) override;

 private:
  lsp::ServerPool& pool_;
};

// The report of one lsp check: diagnostics as messages (0-based lines), tactic goals (or the term goal) per place.
LeanReport ReportFromCheck(const lsp::CheckResult& result);

}  // namespace lr::agent
