// The agent loop (`--style agent`): a tool-calling model completes theorems inside a Lean project, as Leanstral
// works, with the tools of agent/tools.h.
//
// A repository task names a project, a file and the theorems to complete (or every theorem whose proof has a
// `sorry`). The model gets a system prompt, the tool definitions (LanguageModel's tools: the OpenAI tools API
// remotely, [AVAILABLE_TOOLS]/[TOOL_CALLS]/[TOOL_RESULTS] in the Mistral chat format locally) and the task, then
// works in turns: each reply may hold several tool calls, which run in order; each result (cut to a byte budget,
// with a note saying so) goes back as a tool message. A malformed call (unknown tool, arguments that are not JSON or
// break the schema) is answered with a tool error the model can read. A reply without tool calls means the model
// believes it is done.
//
// Acceptance: after every turn that edited the working copy, and whenever the model says it is done, each target's
// proof is read from the working copy and judged as the prover judges a candidate (agent/guard.h): the text checks
// (RefuseProofText, CheckSplice: the statement unchanged), then Lean on the ORIGINAL file up to the theorem with
// only the accepted proofs spliced in, plus `#print axioms` (JudgeLeanReport). Anything else the agent changed (a
// helper lemma, another file) is not part of the result. The loop ends when every target is accepted, or a budget
// runs out (tool calls, completion tokens, seconds, Lean checks, turns), or the model stops three times without
// an accepted target more. Nothing is written to disk here: the outcome holds the final file text and its diff.
#pragma once

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "agent/guard.h"
#include "agent/lean_checker.h"
#include "agent/tools.h"
#include "lm/language_model.h"

namespace lr::agent {

struct RepositoryTask {
  std::string file;                   // the Lean file, relative to the ToolBox's project root (or absolute inside)
  std::vector<std::string> theorems;  // names (plain or namespaced); empty: every theorem whose proof has a sorry
  std::string instructions;           // extra text for the model; may be empty
  // The file's text to start from (an editor's unsaved buffer); empty: the file on disk.
  std::string text = {};
};

// Live progress, for a watcher such as the TUI; called on the loop's thread, in order. Defaults do nothing.
class AgentObserver {
 public:
  virtual ~AgentObserver() = default;
  virtual void OnGenerating(int turn) {}
  virtual void OnPiece(std::string_view piece) {}
  virtual void OnToolCall(int turn, const std::string& name, const std::string& arguments) {}
  virtual void OnToolResult(int turn, const std::string& name, bool is_error, const std::string& result) {}
  // A target's proof (the text after its `:=`) was judged.
  virtual void OnJudged(const std::string& theorem, const std::string& proof, const Verdict& verdict) {}
};

struct AgentOptions {
  SamplingParams sampling;     // per request
  int max_tool_calls = 200;    // budget over the whole run; 0 = none
  int max_turns = 60;          // model requests; 0 = none
  long max_tokens = 0;         // completion tokens; 0 = none
  double max_seconds = 0;      // wall clock; 0 = none
  int max_checks = 0;          // Lean checks (tools' and the judge's); 0 = none
  size_t result_bytes = 8000;  // a tool result longer than this is cut, with a note
  GuardOptions guard;
  double check_timeout_seconds = 300;
  const std::atomic<bool>* cancel = nullptr;  // set to stop: RunAgent returns kCancelled
  AgentObserver* observer = nullptr;
};

struct AgentOutcome {
  bool proved = false;                // every target accepted
  std::vector<std::string> targets;   // full names
  std::vector<std::string> accepted;  // full names, in the order they were accepted
  std::string final_text;             // the original file with the accepted proofs spliced in
  std::string diff;                   // unified diff of final_text against the original file ("" when none)
  std::vector<std::string> trace;     // JSONL lines: one per tool call and per judgement
  std::string stop_reason;            // "proved", "tool-call budget", "turn budget", "token budget", "time budget",
                                      // "check budget", "model stopped"
  std::string last_refusal;           // why the last judged candidate was refused, for reports
  int turns = 0;
  int tool_calls = 0;
  int tool_errors = 0;
  int checks = 0;  // Lean checks: the tools' and the judge's
  long tokens = 0;
  long prompt_tokens = 0;
  long prompt_tokens_computed = 0;
  double seconds = 0;
};

// Runs one agent on `task` in `tools`' project. The ToolBox's working copy is reset first (each run starts from
// the files on disk, and task.text when given). Errors: kInvalidArgument (no such file, no such theorem, no theorem
// with a sorry), the model's errors, a failed Lean check of the judge (kUnavailable, kTimeout), kCancelled.
Result<AgentOutcome> RunAgent(const RepositoryTask& task, LanguageModel& model, ToolBox& tools, LeanChecker& checker,
                              const AgentOptions& options);

// A tool result cut to `budget` bytes (at a UTF-8 boundary) with a note saying how much was left out.
std::string TruncateResult(const std::string& text, size_t budget);

}  // namespace lr::agent
