// The interactive session's view model: everything `leanrotor tui` shows, and how keys and background results change
// it. No curses and no threads here: the UI thread feeds it key presses (OnKey) and events from the workers
// (OnEvent), takes the side effects it asks for (TakeRequests: prove, cancel, check, open, save, load a model, quit),
// and hands it to the renderer (tui/screen.h) to draw. Unit tests drive it the same way, without a terminal.
//
// One file is open at a time (or an unnamed buffer). The cursor is a line; the theorem under the cursor is the last
// `theorem`/`lemma`/`example` starting at or above it. A proof run belongs to one theorem and shows its k candidates,
// each with its latest turn's state and the model's text streaming in. An accepted candidate's proof can be written
// into the buffer in place of the theorem's current proof; the buffer is saved only on request.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "agent/diff.h"
#include "agent/lean_checker.h"
#include "agent/task.h"
#include "lsp/lean_text.h"

namespace lr::tui {

// A key press, terminal-independent. Printable keys carry their code point in `ch`.
struct Key {
  enum Kind {
    kChar,
    kEnter,
    kEscape,
    kBackspace,
    kTab,
    kBackTab,
    kUp,
    kDown,
    kPageUp,
    kPageDown,
    kHome,
    kEnd,
    kCtrlC,
  };
  Kind kind = kChar;
  char32_t ch = 0;

  static Key Char(char32_t c) { return {kChar, c}; }
  static Key Special(Kind k) { return {k, 0}; }
};

// kFailed: judged and refused (by the guard or Lean). kCancelled and kNotChecked end a candidate that was never
// judged: the run was cancelled, or it ended otherwise (another candidate was accepted first, a budget ran out, Lean
// or the model failed).
enum class AttemptState { kWaiting, kGenerating, kChecking, kAccepted, kFailed, kCancelled, kNotChecked };

// "waiting", "generating", "checking", "accepted", "failed", "cancelled", "not checked".
std::string_view AttemptStateName(AttemptState state);

// One candidate of a proof run, as of its latest turn.
struct AttemptView {
  AttemptState state = AttemptState::kWaiting;
  int turn = 0;        // 0: first reply; n: n-th repair
  std::string stream;  // the model's text for this turn so far
  std::string proof;   // the proof extracted from the last judged reply (empty when none was found)
  std::string reason;  // why the last judged reply was refused, or why it was never judged
  int tokens = 0;      // completion tokens of the judged turns (as the model counted them)
  int streamed = 0;    // pieces streamed in the current, not yet judged turn (one piece is one token)

  // What the attempt shows: every judged turn's tokens plus the current turn's so far.
  int shown_tokens() const { return tokens + streamed; }
};

// A proof run: one theorem, k candidates.
struct RunView {
  int id = 0;  // increases per run; events of older runs are ignored
  bool running = false;
  agent::ProofTask task;  // what is being proved (statement and proof as they were when the run started)
  std::vector<AttemptView> attempts;
  std::string outcome;  // when finished: "proved", "all candidates done", "cancelled", or the error
};

// The bottom line: what is loaded and how it performs.
struct StatusView {
  std::string model;       // the model's name, or why none is loaded
  std::string kv_formats;  // e.g. "K q8_0 / V iso3"; empty when not known (remote models)
  double tokens_per_second = 0;
  double kv_bytes = 0;   // KV cache memory in use; 0 when not known
  double kv_shared = 0;  // fraction of that memory shared between candidates (prefix sharing), 0..1
  std::string lean;      // Lean's state: "ready", "checking", "not found: <how to install>", an error
};

// Side effects the session asks the UI loop for.
struct ProveRequest {
  int run_id = 0;
  agent::ProofTask task;
  int k = 0;
  int turns = 0;
  std::string path;  // the buffer's file and text, for agent runs (which work in the project around the file)
  std::string text;
};
struct CancelRequest {};
struct CheckRequest {  // check the whole buffer with Lean, for diagnostics and goals
  int version = 0;
  std::string text;
  std::string path;
};
struct OpenRequest {
  std::string path;
};
struct SaveRequest {
  std::string path;
  std::string text;
  int version = 0;
};
struct LoadModelRequest {
  std::string model;
  std::string kv;
};  // either may be empty: keep the current one
struct QuitRequest {};
using Request =
    std::variant<ProveRequest, CancelRequest, CheckRequest, OpenRequest, SaveRequest, LoadModelRequest, QuitRequest>;

// Events the workers post (tui/worker.h), applied on the UI thread.
struct PieceEvent {
  int run_id;
  int candidate;
  std::string piece;
};                     // model text for a candidate's current turn
struct AttemptEvent {  // a candidate changed state (generating turn n, checking, judged)
  int run_id;
  int candidate;
  int turn;
  AttemptState state;
  std::string proof;   // when judged
  std::string reason;  // when refused
  int tokens = 0;      // when judged: this turn's completion tokens
};
struct RunFinishedEvent {
  int run_id;
  std::string outcome;
};
struct CheckedEvent {
  int version;
  bool ok;
  agent::LeanReport report;
  std::string error;
};
struct SavedEvent {
  std::string path;
  int version;
  bool ok;
  std::string error;
};
struct OpenedEvent {
  std::string path;
  bool ok;
  std::string text;
  std::string error;
};
struct StatusEvent {
  StatusView status;
};  // replaces the whole status line
struct LeanStateEvent {
  std::string lean;
};  // replaces the Lean part only
struct MessageEvent {
  std::string text;
};  // a one-line note for the user
using Event = std::variant<PieceEvent, AttemptEvent, RunFinishedEvent, CheckedEvent, SavedEvent, OpenedEvent,
                           StatusEvent, LeanStateEvent, MessageEvent>;

// The diff view's lines (agent/diff.h).
using agent::DiffLine;
using agent::DiffLines;

// `text` split at '\n' (a trailing newline does not make an empty last line; empty text is one empty line).
std::vector<std::string> SplitLines(std::string_view text);

class Session {
 public:
  struct Settings {
    int k = 4;
    int turns = 2;
  };
  explicit Session(Settings settings);

  // Replaces the buffer (after an OpenRequest succeeded, or at start-up) and asks for a Lean check.
  void Load(std::string path, std::string text);

  void OnKey(Key key);
  void OnEvent(Event event);
  // The side effects asked for since the last call, in order.
  std::vector<Request> TakeRequests();

  // Runs one command line ("/k 8", "/help"): what Enter does in the command line.
  void RunCommand(std::string_view line);

  // --- State, for the renderer and tests ---
  const std::string& path() const { return path_; }  // empty: an unnamed buffer
  const std::string& text() const { return text_; }
  const std::vector<std::string>& lines() const { return lines_; }
  bool dirty() const { return dirty_; }
  int version() const { return version_; }
  int cursor() const { return cursor_; }
  const std::vector<lsp::Declaration>& theorems() const { return theorems_; }
  // Index into theorems() of the theorem under the cursor, -1 when there is none.
  int current_theorem() const;
  // First and last line (0-based, inclusive) of theorem `i`.
  int TheoremFirstLine(int i) const;
  int TheoremLastLine(int i) const;

  // Lean's messages and goals for the theorem under the cursor, from the last check of this buffer version
  // (`report_stale` when the buffer changed since). Lines are the buffer's.
  std::vector<agent::LeanMessage> MessagesAtCursor() const;
  std::vector<agent::LeanGoal> GoalsAtCursor() const;
  bool report_stale() const { return checked_version_ != version_; }
  bool have_report() const { return checked_version_ >= 0; }
  bool checking() const { return checking_; }
  // Why the last check of this buffer gave no report (Lean missing, a server failure); empty when it did.
  const std::string& check_error() const { return check_error_; }

  const RunView& run() const { return run_; }
  int selected_attempt() const { return selected_; }
  bool diff_visible() const { return diff_visible_; }
  // The selected attempt's proof against the theorem's current proof in the buffer.
  std::vector<DiffLine> SelectedDiff() const;
  bool help_visible() const { return help_visible_; }

  bool command_active() const { return command_active_; }
  const std::string& command_line() const { return command_; }
  const std::vector<std::string>& history() const { return history_; }

  const StatusView& status() const { return status_; }
  const std::string& message() const { return message_; }
  int k() const { return settings_.k; }
  int turns() const { return settings_.turns; }

  // The help text: keys and commands, one per line.
  static const std::vector<std::string>& HelpLines();

 private:
  void SetText(std::string text);  // new buffer contents: re-split, re-scan, new version
  void MoveCursor(int line);
  void JumpToSorry(int direction);
  void Prove();
  void Cancel();
  void Accept();
  void Save(std::string path);
  void AskQuit(bool force);
  void SelectAttempt(int index);
  void RequestCheck();
  void OnCommandKey(Key key);
  void Note(std::string text) { message_ = std::move(text); }
  // The theorem of the current run in the buffer now (found by statement), -1 when it is gone.
  int RunTheoremIndex() const;

  void Apply(PieceEvent& e);
  void Apply(AttemptEvent& e);
  void Apply(RunFinishedEvent& e);
  void Apply(CheckedEvent& e);
  void Apply(SavedEvent& e);
  void Apply(OpenedEvent& e);
  void Apply(StatusEvent& e);
  void Apply(LeanStateEvent& e);
  void Apply(MessageEvent& e);

  Settings settings_;
  std::string path_;
  std::string text_;
  std::vector<std::string> lines_;
  std::vector<lsp::Declaration> theorems_;
  bool dirty_ = false;
  int version_ = 0;
  int cursor_ = 0;

  agent::LeanReport report_;
  int checked_version_ = -1;
  bool checking_ = false;
  std::string check_error_;

  RunView run_;
  int run_ids_ = 0;
  int selected_ = 0;
  bool diff_visible_ = false;
  bool help_visible_ = false;

  bool command_active_ = false;
  std::string command_;
  std::vector<std::string> history_;
  int history_pos_ = 0;  // == history_.size() when editing a new line

  StatusView status_;
  std::string message_;
  bool ctrl_c_armed_ = false;  // the last key was Ctrl-C
  std::vector<Request> requests_;
};

}  // namespace lr::tui
