// `leanrotor batch TASKS.jsonl --out RESULTS.jsonl`: a headless evaluation run (see agent/batch.h).
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>

#include "agent/batch.h"
#include "base/interrupt.h"
#include "cli/command.h"
#include "cli/prover_flags.h"

namespace lr::cli {
namespace {

struct BatchFlags {
  std::string tasks;
  std::string out;
  std::string report;
  int jobs = 1;
  bool resume = false;
  ProverFlags prover;
};

std::string DefaultReportPath(const std::string& out) {
  const std::string ext = ".jsonl";
  if (out.size() > ext.size() && out.compare(out.size() - ext.size(), ext.size(), ext) == 0)
    return out.substr(0, out.size() - ext.size()) + ".md";
  return out + ".md";
}

std::string FormatSeconds(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600)
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600, static_cast<int>(s) / 60 % 60);
  return buf;
}

std::string TaskLine(const agent::TaskResult& r, int index, int total) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "[%*d/%d] %-32s %-8s checks %3d  turns %2d  tokens %7ld  %6.1f s%s%s",
                static_cast<int>(std::to_string(total).size()), index, total, r.name.c_str(),
                r.proved ? "proved" : (r.error.empty() ? "failed" : "error"), r.checks, r.turns, r.tokens, r.seconds,
                r.error.empty() ? "" : "  ", r.error.c_str());
  return buf;
}

std::string ProgressBar(int done, int total, int proved, double elapsed, int done_this_run, int left) {
  constexpr int kWidth = 30;
  int filled = total > 0 ? done * kWidth / total : kWidth;
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::string eta = done_this_run > 0 ? FormatSeconds(elapsed / done_this_run * left) : "?";
  char buf[160];
  std::snprintf(buf, sizeof buf, "[%s] %d/%d  proved %d  elapsed %s  ETA %s", bar.c_str(), done, total, proved,
                FormatSeconds(elapsed).c_str(), eta.c_str());
  return buf;
}

// Progress on the console: one line per finished task; on a terminal also a progress bar with an ETA, redrawn
// below the task lines.
class ConsoleProgress : public agent::BatchObserver {
 public:
  ConsoleProgress(std::FILE* out, bool bar) : out_(out), bar_(bar) {}

  void OnStart(const agent::BatchProgress& p, const agent::BatchOptions& options, const std::string& model) override {
    std::fprintf(out_, "batch: %d tasks, %d finished earlier, %d to run (k=%d, turns=%d, jobs=%d, model %s)\n", p.total,
                 p.skipped, p.pending, options.prover.k, options.prover.turns, options.jobs, model.c_str());
    std::fflush(out_);
  }
  void OnTaskDone(const agent::TaskResult& r, const agent::BatchProgress& p) override {
    if (bar_) std::fputs("\r\033[K", out_);
    std::fprintf(out_, "%s\n", TaskLine(r, p.done, p.total).c_str());
    if (bar_)
      std::fputs(ProgressBar(p.done, p.total, p.proved, p.elapsed_seconds, p.done_this_run, p.total - p.done).c_str(),
                 out_);
    std::fflush(out_);
  }
  void OnEnd(const agent::BatchProgress&) override {
    if (bar_) std::fputs("\n", out_);
  }

 private:
  std::FILE* out_;
  bool bar_;
};

int RunBatchCommand(const BatchFlags& f) {
  Result<std::vector<agent::BatchTask>> tasks = agent::LoadTasks(f.tasks);
  if (!tasks.ok()) {
    std::fprintf(stderr, "leanrotor batch: %s\n", tasks.status().ToString().c_str());
    return 2;
  }
  std::set<std::string> roots;
  for (const agent::BatchTask& t : *tasks) roots.insert(t.project_root);
  if (Status s = CheckLeanAvailable(f.prover.lean, {roots.begin(), roots.end()}); !s.ok()) {
    std::fprintf(stderr, "leanrotor batch: %s\n", s.message().c_str());
    return 2;
  }
  agent::BatchOptions options;
  Result<agent::ProverOptions> prover = MakeProverOptions(f.prover);
  if (!prover.ok()) {
    std::fprintf(stderr, "leanrotor batch: %s\n", prover.status().ToString().c_str());
    return 2;
  }
  options.prover = *prover;
  options.jobs = f.jobs;
  options.resume = f.resume;
  options.out_path = f.out;
  options.report_path = f.report.empty() ? DefaultReportPath(f.out) : f.report;
  options.cancel = InstallInterruptHandler(
      "\ninterrupted: abandoning the tasks in flight, keeping the finished ones (interrupt again to quit at once)\n");

  Result<std::unique_ptr<LanguageModel>> model = OpenModel(f.prover.model, options.cancel);
  if (!model.ok()) {
    std::fprintf(stderr, "leanrotor batch: %s\n", model.status().ToString().c_str());
    return Interrupted() ? InterruptExitCode() : 2;
  }
  lsp::ServerPool pool(MakePoolOptions(f.prover.lean, static_cast<size_t>(std::max(f.prover.lean_servers, f.jobs))));
  agent::PoolChecker checker(pool);
  options.pool = &pool;
  options.agent = MakeAgentOptions(f.prover, *prover);

  ConsoleProgress progress(stdout, ::isatty(STDOUT_FILENO) != 0);
  Result<agent::BatchSummary> summary = agent::RunBatch(*tasks, **model, checker, options, &progress);
  if (!summary.ok()) {
    std::fprintf(stderr, "leanrotor batch: %s\n", summary.status().ToString().c_str());
    return Interrupted() ? InterruptExitCode() : 2;
  }
  const agent::BatchSummary& s = *summary;
  std::printf("\n%s: %d/%d tasks finished, %d proved (%.1f%%)%s\n", f.out.c_str(), s.finished, s.tasks, s.proved,
              s.finished > 0 ? 100.0 * s.proved / s.finished : 0.0, s.errors > 0 ? ", some with errors" : "");
  std::printf("unbiased pass@k over finished tasks:");
  for (size_t i = 0; i < s.pass_at.size(); ++i) std::printf("  pass@%zu %.3f", i + 1, s.pass_at[i]);
  std::printf("\n");
  if (s.worker_crashes > 0)
    std::printf("%d candidate(s) crashed Lean's file worker and were rejected (see the report)\n", s.worker_crashes);
  std::printf("report: %s\n", options.report_path.c_str());
  if (s.cancelled) {
    std::printf("interrupted: run again with --resume to finish the remaining %d tasks\n", s.tasks - s.finished);
    return InterruptExitCode();
  }
  return 0;
}

}  // namespace

void AddBatchCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<BatchFlags>();
  CLI::App* sub = app.add_subcommand("batch", "prove a JSONL task set headlessly; results as JSONL, pass@k, report");
  sub->add_option("tasks", flags->tasks,
                  "task file: {name, header, formal_statement, informal_prefix?}, "
                  "{name, project, file, theorem} or {name, project, file, theorems: [...] | "
                  "\"all sorries\", instructions?} (agent) per line")
      ->required();
  sub->add_option("-o,--out", flags->out, "results file (JSONL, one line per finished task)")->required();
  sub->add_option("--report", flags->report, "Markdown report (default: the results path with .md)");
  sub->add_option("-j,--jobs", flags->jobs,
                  "tasks in flight at once (the in-process model batches their generations into shared steps)")
      ->check(CLI::Range(1, 256));
  sub->add_flag("--resume", flags->resume, "continue an interrupted run: skip tasks already in the results file");
  AddProverFlags(sub, &flags->prover);
  sub->footer(
      "Exit status: 0 when the run finished, 2 when it could not run or stopped on a failure (bad input, no "
      "Lean, no model, a Lean server failure; finished results are kept), 130 when interrupted (143 for "
      "SIGTERM; the tasks in flight are abandoned, --resume runs them).");
  commands.Add(sub, [flags] { return RunBatchCommand(*flags); });
}

}  // namespace lr::cli
