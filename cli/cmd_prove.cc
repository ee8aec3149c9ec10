// `leanrotor prove FILE.lean`: fills the file's `sorry`s with proofs the model finds and Lean accepts.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "agent/prover.h"
#include "agent/tools.h"
#include "agent/working_copy.h"
#include "base/file.h"
#include "base/interrupt.h"
#include "cli/command.h"
#include "cli/prover_flags.h"
#include "lsp/lean_text.h"

namespace lr::cli {
namespace {

struct ProveFlags {
  std::string file;
  std::string theorem;
  std::string out;
  ProverFlags prover;
};

struct Row {
  std::string name;
  bool proved = false;
  int checks = 0;
  int turns = 0;
  long tokens = 0;
  double seconds = 0;
  std::string note;
};

constexpr char kInterruptNote[] =
    "\ninterrupted: stopping, keeping the theorems proved so far (interrupt again to quit at once)\n";

// The next theorem to work on in `text`: the first with a sorry whose name is not in `done` (and is `only`, if set).
const agent::ProofTask* NextTarget(const std::vector<agent::ProofTask>& tasks, const std::vector<std::string>& done,
                                   const std::string& only) {
  for (const agent::ProofTask& t : tasks) {
    if (!only.empty() && t.name != only && t.full_name != only) continue;
    if (!agent::HasSorry(t)) continue;
    if (std::find(done.begin(), done.end(), t.full_name) != done.end()) continue;
    return &t;
  }
  return nullptr;
}

void PrintTable(const std::vector<Row>& rows) {
  size_t width = 7;
  for (const Row& r : rows) width = std::max(width, r.name.size());
  std::printf("\n%-*s  %-6s  %8s  %5s  %7s  %8s\n", static_cast<int>(width), "theorem", "proved", "attempts", "turns",
              "tokens", "seconds");
  for (const Row& r : rows)
    std::printf("%-*s  %-6s  %8d  %5d  %7ld  %8.1f%s%s\n", static_cast<int>(width), r.name.c_str(),
                r.proved ? "yes" : "no", r.checks, r.turns, r.tokens, r.seconds, r.note.empty() ? "" : "  ",
                r.note.c_str());
}

// --style agent: the agent loop in the project around the file (its Lake root, or the file's folder), for every
// theorem with a sorry (or --theorem); the accepted proofs are written back atomically.
int RunProveAgent(const ProveFlags& f, LanguageModel& model, lsp::ServerPool& pool,
                  const agent::ProverOptions& prover) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path file = fs::absolute(f.file, ec);
  std::string root = FindLakeRoot(file.parent_path());
  if (root.empty()) root = file.parent_path().string();
  Result<std::unique_ptr<agent::WorkingCopy>> copy = agent::WorkingCopy::Open(root);
  if (!copy.ok()) {
    std::fprintf(stderr, "leanrotor prove: %s\n", copy.status().ToString().c_str());
    return 2;
  }
  agent::ToolBox tools(pool, **copy, agent::ToolsOptions());
  agent::PoolChecker checker(pool);
  agent::AgentOptions options = MakeAgentOptions(f.prover, prover);
  options.cancel = prover.cancel;
  agent::RepositoryTask task{file.string(), {}, ""};
  if (!f.theorem.empty()) task.theorems = {f.theorem};
  std::printf("agent on %s (project %s, model %s) ...\n", f.file.c_str(), (*copy)->root().c_str(),
              model.Name().c_str());
  std::fflush(stdout);
  Result<agent::AgentOutcome> outcome = agent::RunAgent(task, model, tools, checker, options);
  if (!outcome.ok()) {
    std::fprintf(stderr, "leanrotor prove: %s\n", outcome.status().ToString().c_str());
    return Interrupted() ? InterruptExitCode() : 2;
  }
  const agent::AgentOutcome& o = *outcome;
  std::printf(
      "%zu/%zu theorems proved; %d turns, %d tool calls (%d errors), %d Lean checks, %ld tokens, %.1f s; "
      "stop: %s\n",
      o.accepted.size(), o.targets.size(), o.turns, o.tool_calls, o.tool_errors, o.checks, o.tokens, o.seconds,
      o.stop_reason.c_str());
  if (!o.proved && !o.last_refusal.empty()) std::printf("last refusal: %s\n", o.last_refusal.c_str());
  if (!o.accepted.empty()) {
    const std::string out = f.out.empty() ? f.file : f.out;
    if (Status s = WriteFileAtomic(out, o.final_text); !s.ok()) {
      std::fprintf(stderr, "leanrotor prove: %s\n", s.ToString().c_str());
      return 2;
    }
    std::printf("%swrote %s\n", o.diff.c_str(), out.c_str());
  }
  return o.proved ? 0 : 1;
}

int RunProve(const ProveFlags& f) {
  Result<std::string> source = ReadFile(f.file);
  if (!source.ok()) {
    std::fprintf(stderr, "leanrotor prove: %s\n", source.status().ToString().c_str());
    return 2;
  }
  std::string text = *source;
  std::vector<std::string> done;
  if (NextTarget(agent::TasksFromSource(text), done, f.theorem) == nullptr) {
    if (!f.theorem.empty())
      std::fprintf(stderr, "leanrotor prove: %s: no theorem or lemma named %s with a `sorry`\n", f.file.c_str(),
                   f.theorem.c_str());
    else
      std::printf("%s: no theorem or lemma with a `sorry`; nothing to do\n", f.file.c_str());
    return f.theorem.empty() ? 0 : 2;
  }
  if (Status s = CheckLeanAvailable(f.prover.lean, {""}); !s.ok()) {
    std::fprintf(stderr, "leanrotor prove: %s\n", s.message().c_str());
    return 2;
  }
  Result<agent::ProverOptions> options = MakeProverOptions(f.prover);
  if (!options.ok()) {
    std::fprintf(stderr, "leanrotor prove: %s\n", options.status().ToString().c_str());
    return 2;
  }
  const std::atomic<bool>* interrupted = InstallInterruptHandler(kInterruptNote);
  options->cancel = interrupted;
  Result<std::unique_ptr<LanguageModel>> model = OpenModel(f.prover.model, interrupted);
  if (!model.ok()) {
    std::fprintf(stderr, "leanrotor prove: %s\n", model.status().ToString().c_str());
    return Interrupted() ? InterruptExitCode() : 2;
  }
  lsp::ServerPool pool(MakePoolOptions(f.prover.lean, static_cast<size_t>(f.prover.lean_servers)));
  if (options->style == agent::PromptStyle::kAgent) return RunProveAgent(f, **model, pool, *options);
  agent::PoolChecker checker(pool);

  std::vector<Row> rows;
  int exit_code = 0;
  bool changed = false;
  for (;;) {
    std::vector<agent::ProofTask> tasks = agent::TasksFromSource(text);
    const agent::ProofTask* target = NextTarget(tasks, done, f.theorem);
    if (target == nullptr) break;
    done.push_back(target->full_name);
    std::printf("proving %s (k=%d, turns=%d, model %s) ...\n", target->full_name.c_str(), options->k, options->turns,
                (*model)->Name().c_str());
    std::fflush(stdout);
    Result<agent::ProofOutcome> outcome = agent::Prove(*target, **model, checker, *options);
    Row row;
    row.name = target->full_name;
    if (!outcome.ok()) {
      row.note = outcome.status().ToString();
      rows.push_back(row);
      std::fprintf(stderr, "leanrotor prove: %s\n", outcome.status().ToString().c_str());
      exit_code = 2;
      break;
    }
    row.proved = outcome->proved;
    row.checks = outcome->checks;
    row.turns = outcome->turns;
    row.tokens = outcome->tokens;
    row.seconds = outcome->seconds;
    if (!outcome->proved) {
      row.note = outcome->stop_reason;
      if (!outcome->attempts.empty()) row.note += "; last: " + outcome->attempts.back().verdict.reason.substr(0, 100);
      exit_code = 1;
    } else {
      // Splice the proof in place of the old one; later theorems see it in their preamble.
      const size_t begin = target->preamble.size();
      const size_t end = begin + target->statement.size() + target->proof.size();
      text = text.substr(0, begin) + agent::TheoremText(*target, outcome->proof) + text.substr(end);
      changed = true;
    }
    rows.push_back(row);
  }
  if (Interrupted()) exit_code = InterruptExitCode();
  PrintTable(rows);
  if (changed) {  // what was proved before an interrupt too
    const std::string out = f.out.empty() ? f.file : f.out;
    if (Status s = WriteFileAtomic(out, text); !s.ok()) {
      std::fprintf(stderr, "leanrotor prove: %s\n", s.ToString().c_str());
      return 2;
    }
    std::printf("wrote %s\n", out.c_str());
  }
  return exit_code;
}

}  // namespace

void AddProveCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<ProveFlags>();
  CLI::App* sub = app.add_subcommand("prove", "fill the `sorry`s of a Lean file with proofs Lean accepts");
  sub->add_option("file", flags->file, "the Lean file")->required();
  sub->add_option("--theorem", flags->theorem, "only this theorem (name or namespaced name)");
  sub->add_option("-o,--out", flags->out, "write the result here instead of over FILE");
  AddProverFlags(sub, &flags->prover);
  sub->footer(
      "Exit status: 0 when every targeted theorem was proved, 1 when some were not, 2 when the run could not "
      "be done (bad input, no Lean, no model, a Lean server failure), 130 when interrupted (143 for SIGTERM; "
      "the theorems proved by then are written).");
  commands.Add(sub, [flags] { return RunProve(*flags); });
}

}  // namespace lr::cli
