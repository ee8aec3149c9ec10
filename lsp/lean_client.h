// One Lean language server, spoken to as Lean speaks LSP, and what a check of a document returns.
//
// A LeanClient owns one server process (lsp/server_process.h) and its JSON-RPC connection (lsp/jsonrpc.h). It sends
// initialize/initialized, opens and edits documents (didOpen with dependencyBuildMode, full or ranged didChange,
// didClose), keeps the diagnostics Lean publishes per document version (appending when Lean marks a batch
// `isIncremental`), and asks for goals ($/lean/plainGoal, $/lean/plainTermGoal) and hover text.
//
// The barrier rule: a document version counts as checked only when Lean has answered
// `textDocument/waitForDiagnostics` for that version. `$/lean/fileProgress` with an empty list is shown as progress
// but never taken as completion: on recent servers it can arrive before the last diagnostics. Diagnostics published
// for another version are never reported for this one.
//
// Infrastructure failures are Statuses, never results: the server died or broke its protocol (kUnavailable,
// kInternal, kCorrupt), a deadline passed (kTimeout), the caller's cancel flag was set (kCancelled), Lean's file
// worker crashed (kUnavailable, LSP error -32902 or -32901, or a fatalError fileProgress; worker_crashed() says so).
// A CheckResult means Lean elaborated the text to the end. A client whose request timed out or was cancelled is
// not healthy() any more (its server may still be busy with the abandoned request).
//
// Positions: Lean counts columns in UTF-16 code units; everything here is also given in UTF-8 bytes (what C++ string
// offsets are), converted with lsp/utf16.h.
//
// A LeanClient is used by one thread at a time (the pool hands a server to one check at a time); its reader thread
// is internal.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "lsp/server_process.h"

namespace lr::lsp {

// A place in a document: 0-based line, and a 0-based column. Whether the column counts UTF-8 bytes or UTF-16 code
// units is said by the field that holds it.
struct Position {
  int line = 0;
  int character = 0;
  bool operator==(const Position&) const = default;
};

struct Range {
  Position start;
  Position end;
  bool operator==(const Range&) const = default;
};

enum class Severity { kError = 1, kWarning = 2, kInformation = 3, kHint = 4 };

// "error", "warning", "info" or "hint", as Lean's command line and lean-lsp-mcp name them.
const char* SeverityName(Severity severity);

// Lean's own diagnostic tags (`leanTags`).
enum class LeanTag { kUnsolvedGoals = 1, kGoalsAccomplished = 2 };

struct Diagnostic {
  Severity severity = Severity::kError;
  Range range;        // columns in UTF-8 bytes of the line
  Range range_utf16;  // as Lean sent it (UTF-16 code units)
  Range full_range;   // Lean's `fullRange` (UTF-8 columns); equal to `range` when Lean sent none
  std::string message;
  std::string source;          // e.g. "Lean 4"; may be empty
  std::vector<int> lean_tags;  // LeanTag values
  bool is_silent = false;      // Lean's `isSilent`: not shown to users
};

// Why a goal was asked for at a place.
enum class GoalSite { kSorry, kError, kRequested };

// Lean's goals at one place. `goals` holds one pretty-printed goal per entry ("x : Nat\n⊢ x + 0 = x"); empty when
// Lean says no goals remain. `term_goal` is set when there is no tactic goal there but a term goal (plainTermGoal).
struct Goal {
  GoalSite site = GoalSite::kRequested;
  Position position;  // UTF-8 column
  std::vector<std::string> goals;
  std::optional<std::string> term_goal;
  bool in_tactic_block = false;  // false when Lean answered null to plainGoal
};

struct CheckResult {
  std::vector<Diagnostic> diagnostics;  // for exactly the version checked, in Lean's order
  std::vector<Goal> goals;              // at each `sorry` token, then at each error's start
  int64_t elapsed_ms = 0;               // from didOpen/didChange to the waitForDiagnostics answer
  bool complete = false;                // Lean answered waitForDiagnostics (always true in a returned result)
  // Set only by the pool (lsp/server_pool.h): Lean's file worker crashed on this text on two servers while the
  // second checked the text's import header fine. That is a property of the text (deep recursion, a stack overflow
  // in elaboration), a verdict like an error; the diagnostics and goals are then empty.
  std::string worker_crash;

  bool HasErrors() const;
  // True when a warning says "declaration uses 'sorry'" (Lean's text for sorry and admit).
  bool UsesSorry() const;
};

// One snippet of MultiAttempt: the diagnostics that fall on the snippet's lines and the goals after it.
struct AttemptResult {
  std::string snippet;
  std::vector<Diagnostic> diagnostics;
  Goal goal_after;  // goals at the end of the snippet's last line
};

struct ClientOptions {
  // How Lean builds the imports of an opened file: "never", "once" or "always" (Lean's dependencyBuildMode).
  std::string dependency_build_mode = "once";
  std::chrono::milliseconds initialize_timeout{60000};  // at most this for initialize, and never past Start's deadline
};

// Live progress for a UI: Lean's `$/lean/fileProgress` ranges (UTF-8 columns); empty means Lean says it is done
// processing (not that diagnostics are final).
using ProgressCallback = std::function<void(const std::string& uri, int version, const std::vector<Range>& processing)>;

class LeanClient {
 public:
  // Starts the server with `spec` and runs initialize/initialized. kUnavailable when the command cannot be started
  // or dies during initialize, kTimeout when it does not answer by `deadline` (or options.initialize_timeout),
  // kCancelled when `cancel` is set meanwhile. `cancel` (may be null) stays this client's cancel flag (SetCancel).
  static Result<std::unique_ptr<LeanClient>> Start(const ProcessSpec& spec, const ClientOptions& options,
                                                   std::chrono::steady_clock::time_point deadline,
                                                   const std::atomic<bool>* cancel = nullptr);
  // shutdown/exit when healthy (briefly; not while the process is being interrupted, base/interrupt.h), then kills
  // the process group.
  ~LeanClient();

  // Checks `text` as the document `uri` (a file:// URI; the path need not exist): opens it, or replaces its text
  // with a full didChange when it is already open, waits for the barrier, then asks for goals at each sorry and each
  // error. `deadline` bounds the whole call. When the document already holds exactly `text` and its check completed,
  // that result is returned without asking Lean again (elapsed_ms 0): diagnostics past the barrier are final.
  Result<CheckResult> Check(const std::string& uri, const std::string& text,
                            std::chrono::steady_clock::time_point deadline);

  // The goal at `position` (UTF-8 column) of the document last checked as `uri`.
  Result<Goal> GoalAt(const std::string& uri, Position position, std::chrono::steady_clock::time_point deadline);

  // Replaces line `line` of `text` by each snippet in turn (indented like the line it replaces; a snippet may hold
  // several lines), checks each version, and restores nothing: the document ends as the last attempt. Every attempt
  // gets its diagnostics on the snippet's lines and the goals after it.
  Result<std::vector<AttemptResult>> MultiAttempt(const std::string& uri, const std::string& text, int line,
                                                  const std::vector<std::string>& snippets,
                                                  std::chrono::steady_clock::time_point deadline);

  // Lean's hover text (markdown) at `position` (UTF-8 column); empty when there is none.
  Result<std::string> Hover(const std::string& uri, Position position, std::chrono::steady_clock::time_point deadline);

  // Any other request about the document last checked as `uri` (textDocument/completion, textDocument/definition,
  // textDocument/documentSymbol, $/lean/plainTermGoal, ...): params are {"textDocument": {"uri"}}, plus "position"
  // (converted to UTF-16) when `position` (UTF-8 column) is given. Returns Lean's result as sent (positions in it
  // are UTF-16). An error answer is kInternal naming the method; a dead or hung server is kUnavailable / kTimeout.
  Result<nlohmann::json> Query(const std::string& uri, const std::string& method, std::optional<Position> position,
                               std::chrono::steady_clock::time_point deadline);

  // Applies a ranged edit (UTF-8 columns) with didChange and waits for the barrier on the new version.
  Result<CheckResult> Edit(const std::string& uri, Range range, const std::string& new_text,
                           std::chrono::steady_clock::time_point deadline);

  // Sends didClose and forgets the document.
  Status Close(const std::string& uri);

  void SetProgressCallback(ProgressCallback callback);
  // Every wait of this client's requests ends with kCancelled soon after `cancel` is set (null: none). The flag must
  // outlive its use here.
  void SetCancel(const std::atomic<bool>* cancel);
  // True when the last failed check or goal request failed because Lean's file worker crashed or exited (or
  // reported a fatal error) while the server itself kept running.
  bool worker_crashed() const;

  // False once the process exited, the connection broke or a request timed out (a hung server is not reused).
  bool healthy() const;
  // Resident memory of the server's whole process group, in bytes (0 when unknown), measured at most 250 ms ago.
  int64_t ResidentBytes() const;
  // The last lines the server wrote on stderr (for logs and error messages).
  std::string StderrTail() const;
  // Kills the server's process group now.
  void Kill();

  struct Impl;

 private:
  explicit LeanClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// "file:///abs/path" for an absolute path (percent-encoding what URIs require), and back.
std::string PathToUri(const std::string& absolute_path);
Result<std::string> UriToPath(const std::string& uri);

}  // namespace lr::lsp
