// Headless evaluation runs: a JSONL task set in, one JSONL result line per task out, a summary and a Markdown report.
//
// Task lines come in two shapes:
//   {"name", "header", "formal_statement", "informal_prefix"?}   miniF2F / DeepSeek-Prover data sets (other fields
//                                                                 such as "split" and "goal" are ignored)
//   {"name", "project", "file", "theorem"}                        a theorem in a file of a Lake project (FLTEval-like);
//                                                                 project is relative to the task file's folder
//   {"name", "project", "file", "theorems": [...] | "all sorries", "instructions"?}
//                                                                 a repository task: the agent loop (agent_loop.h)
//                                                                 completes the theorems inside the project
// Repository tasks, and every project task under --style agent, run the agent loop: k agents one after another (the
// shared prompt prefix is cached by the backend), each from the files on disk. Their result line adds the final
// diff and the path of the tool-call trace (JSONL, <out>.traces/<name>.jsonl, one line per tool call and judgement,
// with the agent's index); nothing is written into the project.
// Each result line is appended (base/file.h AppendLine) the moment its task ends, so a crash or Ctrl-C loses at most
// the tasks in flight (an interrupt abandons them: they are not written, and --resume runs them again); `resume`
// skips the tasks whose results are already there. Every task runs all k candidate
// chains to their end (ProverOptions::run_all_candidates) so that the unbiased pass@1..k can be computed.
#pragma once

#include <atomic>
#include <cstdio>
#include <string>
#include <vector>

#include "agent/agent_loop.h"
#include "agent/lean_checker.h"
#include "agent/prover.h"
#include "agent/task.h"
#include "lm/language_model.h"

namespace lr::agent {

struct BatchTask {
  ProofTask task;            // for repository tasks only its name is set
  std::string project_root;  // project tasks: the Lake project; empty otherwise
  std::string path;          // project tasks: the file's path
  bool repository = false;   // a repository task: `theorems` (empty: every theorem with a sorry), `instructions`
  std::vector<std::string> theorems;
  std::string instructions;
};

// Reads a task file. A task's name is its "name" field; a name seen before gets "@LINE" appended (ProofNet repeats
// names), so that names key results uniquely and stably across runs. Errors name the file, the 1-based line and the
// field: kNotFound (no such file), kInvalidArgument (bad JSON, a missing or mistyped field, no theorem in
// formal_statement, a theorem not in its file).
Result<std::vector<BatchTask>> LoadTasks(const std::string& path);

// One result line.
struct TaskResult {
  std::string name;
  bool proved = false;
  std::string proof;  // the accepted proof (text after `:=`), empty when none
  int candidates = 0;
  int solved = 0;
  int checks = 0;
  int turns = 0;
  long tokens = 0;
  double seconds = 0;
  int first_proof_check = 0;
  int worker_crashes = 0;  // candidates refused because Lean's file worker crashed on them (not infrastructure)
  std::string stop_reason;
  std::string error;  // a task-specific failure (e.g. the prompt does not fit the context); not proved
  std::string diff;   // agent tasks: the unified diff of the first accepted result ("" when none)
  std::string trace;  // agent tasks: the tool-call trace file
};

std::string ResultToJson(const TaskResult& result);
// `where` ("results.jsonl:7") names the line in errors (kCorrupt).
Result<TaskResult> ResultFromJson(std::string_view line, std::string_view where);

// Reads a results file; a missing file is an empty list.
Result<std::vector<TaskResult>> LoadResults(const std::string& path);

// Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k), as a product (no overflow).
double PassAtK(int n, int c, int k);

struct BatchOptions {
  ProverOptions prover;  // run_all_candidates is forced on
  int jobs = 1;          // tasks proved at once (the model and the checker are called from `jobs` threads)
  bool resume = false;   // skip tasks with a result in `out_path`; without it, an existing non-empty file is an error
  std::string out_path;
  std::string report_path;                    // Markdown report; empty: none
  const std::atomic<bool>* cancel = nullptr;  // set to stop: in-flight tasks are abandoned, not written
  // Agent tasks (repository tasks, or project tasks with prover.style kAgent): the servers the tools use, the
  // loop's budgets (sampling comes from `prover`) and the tools' options.
  lsp::ServerPool* pool = nullptr;
  AgentOptions agent;
  ToolsOptions tools;
};

struct BatchSummary {
  int tasks = 0;     // in the task file
  int finished = 0;  // with a result line (this run and earlier ones)
  int skipped = 0;   // found finished by resume
  int proved = 0;
  int errors = 0;               // task-specific failures recorded with an "error" field
  int worker_crashes = 0;       // candidates of finished tasks that crashed Lean's file worker
  std::vector<double> pass_at;  // pass_at[i] = mean pass@(i+1) over finished tasks
  bool cancelled = false;
};

// Where a batch run stands, for progress reports.
struct BatchProgress {
  int total = 0;    // tasks in the task file
  int skipped = 0;  // found finished by resume
  int pending = 0;  // to run in this run
  int done = 0;     // finished, this run and earlier ones
  int done_this_run = 0;
  int proved = 0;              // of the finished tasks
  double elapsed_seconds = 0;  // since this run started
};

// What a batch run reports as it goes (the CLI draws its progress from it). Calls come from the run's worker threads,
// one at a time, in the order of the events.
class BatchObserver {
 public:
  virtual ~BatchObserver() = default;
  // Before the first task: the counts, with the run's options and the model's name.
  virtual void OnStart(const BatchProgress& progress, const BatchOptions& options, const std::string& model) {}
  // A task finished and its result line was written.
  virtual void OnTaskDone(const TaskResult& result, const BatchProgress& progress) {}
  // The run ended (finished, failed or cancelled).
  virtual void OnEnd(const BatchProgress& progress) {}
};

// Runs the tasks not yet finished, writes result lines as they end, tells `observer` (may be null), then writes the
// report. Errors: LoadResults's, AppendLine's (kIo), and the first infrastructure failure (kUnavailable, kTimeout
// from Lean or the model): the run stops there and every finished result stays in `out_path`.
Result<BatchSummary> RunBatch(const std::vector<BatchTask>& tasks, LanguageModel& model, LeanChecker& checker,
                              const BatchOptions& options, BatchObserver* observer);

// The summary and per-task tables, pass@k, and solved-vs-check-budget as a text plot, in Markdown.
std::string MarkdownReport(const std::vector<TaskResult>& results, int tasks, int k, const std::string& model_name);

}  // namespace lr::agent
