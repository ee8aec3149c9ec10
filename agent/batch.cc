#include "agent/batch.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "agent/working_copy.h"
#include "base/file.h"

namespace lr::agent {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

bool IsBlank(std::string_view s) { return s.find_first_not_of(" \t\r") == std::string_view::npos; }

// The string field `key` of `j`; absent is an error when `required`, else "".
Result<std::string> StringField(const json& j, const char* key, const std::string& where, bool required) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (!required) return std::string();
    return InvalidArgument(where + ": missing field \"" + key + "\"");
  }
  if (!it->is_string()) return InvalidArgument(where + ": field \"" + key + "\" must be a string");
  return it->get<std::string>();
}

// The project and file fields of a task: the project root (relative to the task file's folder), the file's path
// in it, and the file's text.
struct ProjectFile {
  std::string root;
  std::string path;
  std::string text;
};

Result<ProjectFile> ReadProjectFile(const json& j, const std::string& task_file, const std::string& where) {
  LR_ASSIGN_OR_RETURN(std::string project, StringField(j, "project", where, true));
  LR_ASSIGN_OR_RETURN(std::string file, StringField(j, "file", where, true));
  std::filesystem::path root(project);
  if (root.is_relative()) root = std::filesystem::path(task_file).parent_path() / root;
  ProjectFile out{root.string(), (root / file).string(), ""};
  Result<std::string> source = ReadFile(out.path);
  if (!source.ok()) return InvalidArgument(where + ": field \"file\": " + source.status().message());
  out.text = std::move(*source);
  return out;
}

Result<BatchTask> ProjectTask(const json& j, const std::string& task_file, const std::string& where) {
  LR_ASSIGN_OR_RETURN(ProjectFile file, ReadProjectFile(j, task_file, where));
  LR_ASSIGN_OR_RETURN(std::string theorem, StringField(j, "theorem", where, true));
  for (ProofTask& task : TasksFromSource(file.text)) {
    if (task.name != theorem && task.full_name != theorem) continue;
    BatchTask t;
    t.task = std::move(task);
    t.project_root = file.root;
    t.path = file.path;
    return t;
  }
  return InvalidArgument(where + ": field \"theorem\": no theorem or lemma named " + theorem + " in " + file.path);
}

// {"project", "file", "theorems": [...] | "all sorries", "instructions"?}: checked against the file now, so that a
// typo fails at load time.
Result<BatchTask> RepositoryTaskFromJson(const json& j, const std::string& task_file, const std::string& where) {
  LR_ASSIGN_OR_RETURN(ProjectFile file, ReadProjectFile(j, task_file, where));
  LR_ASSIGN_OR_RETURN(std::string instructions, StringField(j, "instructions", where, false));
  BatchTask t;
  t.repository = true;
  t.project_root = file.root;
  t.path = file.path;
  t.instructions = instructions;
  const std::string& source_path = file.path;
  std::vector<ProofTask> in_file = TasksFromSource(file.text);
  const json& theorems = j["theorems"];
  if (theorems.is_string() && theorems.get<std::string>() == "all sorries") {
    bool any = false;
    for (const ProofTask& p : in_file) any = any || HasSorry(p);
    if (!any) return InvalidArgument(where + ": field \"theorems\": no theorem with a sorry in " + source_path);
    return t;
  }
  if (!theorems.is_array() || theorems.empty())
    return InvalidArgument(where + ": field \"theorems\" must be a non-empty array of names or \"all sorries\"");
  for (const json& name : theorems) {
    if (!name.is_string()) return InvalidArgument(where + ": field \"theorems\" must hold strings");
    const std::string n = name.get<std::string>();
    bool found = false;
    for (const ProofTask& p : in_file) found = found || p.name == n || p.full_name == n;
    if (!found)
      return InvalidArgument(where + ": field \"theorems\": no theorem or lemma named " + n + " in " + source_path);
    t.theorems.push_back(n);
  }
  return t;
}

Result<BatchTask> TaskFromLine(std::string_view line, const std::string& task_file, const std::string& where) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument(where + ": expected one JSON object per line");
  LR_ASSIGN_OR_RETURN(std::string name, StringField(j, "name", where, true));
  BatchTask t;
  if (j.contains("formal_statement")) {
    LR_ASSIGN_OR_RETURN(std::string header, StringField(j, "header", where, true));
    LR_ASSIGN_OR_RETURN(std::string informal, StringField(j, "informal_prefix", where, false));
    LR_ASSIGN_OR_RETURN(std::string statement, StringField(j, "formal_statement", where, true));
    LR_ASSIGN_OR_RETURN(t.task, TaskFromStatement(header, informal, statement, where));
  } else if (j.contains("project") && j.contains("theorems")) {
    LR_ASSIGN_OR_RETURN(t, RepositoryTaskFromJson(j, task_file, where));
  } else if (j.contains("project")) {
    LR_ASSIGN_OR_RETURN(t, ProjectTask(j, task_file, where));
  } else {
    return InvalidArgument(where +
                           ": expected the fields \"header\" and \"formal_statement\", or \"project\", "
                           "\"file\" and \"theorem\" (or \"theorems\")");
  }
  t.task.name = name;  // results are keyed by the task's name
  return t;
}

TaskResult ResultOf(const std::string& name, const ProofOutcome& o) {
  TaskResult r;
  r.name = name;
  r.proved = o.proved;
  r.proof = o.proof;
  r.candidates = o.candidates;
  r.solved = o.solved;
  r.checks = o.checks;
  r.turns = o.turns;
  r.tokens = o.tokens;
  r.seconds = o.seconds;
  r.first_proof_check = o.first_proof_check;
  r.worker_crashes = o.worker_crashes;
  r.stop_reason = o.stop_reason;
  return r;
}

// Runs k agents on an agent task, one after another, each from the files on disk; writes their trace.
Result<TaskResult> RunAgentTask(const BatchTask& t, LanguageModel& model, LeanChecker& checker,
                                const BatchOptions& options, const std::atomic<bool>* cancel) {
  if (options.pool == nullptr) return InvalidArgument("agent tasks need a Lean server pool (BatchOptions::pool)");
  LR_ASSIGN_OR_RETURN(std::unique_ptr<WorkingCopy> copy, WorkingCopy::Open(t.project_root));
  ToolBox tools(*options.pool, *copy, options.tools);
  RepositoryTask task{t.path, t.theorems, t.instructions};
  if (!t.repository) task.theorems = {t.task.full_name.empty() ? t.task.name : t.task.full_name};
  TaskResult r;
  r.name = t.task.name;
  std::string trace;
  const int k = std::max(1, options.prover.k);
  for (int i = 0; i < k; ++i) {
    AgentOptions a = options.agent;
    a.sampling = options.prover.sampling;
    a.sampling.seed = options.prover.sampling.seed + static_cast<uint64_t>(i);
    a.guard = options.prover.guard;
    a.check_timeout_seconds = options.prover.check_timeout_seconds;
    a.cancel = cancel;
    LR_ASSIGN_OR_RETURN(AgentOutcome o, RunAgent(task, model, tools, checker, a));
    ++r.candidates;
    r.checks += o.checks;
    r.turns += o.turns;
    r.tokens += o.tokens;
    r.seconds += o.seconds;
    for (const std::string& line : o.trace) trace += "{\"agent\":" + std::to_string(i) + "," + line.substr(1) + "\n";
    if (o.proved) {
      ++r.solved;
      if (!r.proved) {
        r.proved = true;
        r.diff = o.diff;
        r.first_proof_check = r.checks;
        r.stop_reason = o.stop_reason;
      }
    } else if (!r.proved) {
      r.stop_reason = o.stop_reason + (o.last_refusal.empty() ? "" : "; last refusal: " + o.last_refusal);
    }
  }
  std::string safe = r.name;
  for (char& c : safe)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.') c = '_';
  r.trace = options.out_path + ".traces/" + safe + ".jsonl";
  std::error_code ec;
  std::filesystem::create_directories(options.out_path + ".traces", ec);
  LR_RETURN_IF_ERROR(WriteFileAtomic(r.trace, trace));
  return r;
}

// Errors that belong to one task (retrying will not help, the other tasks may still run).
bool IsTaskError(StatusCode code) {
  return code == StatusCode::kInvalidArgument || code == StatusCode::kResourceExhausted;
}

std::vector<double> MeanPassAt(const std::vector<TaskResult>& results, int k) {
  std::vector<double> pass(static_cast<size_t>(k), 0.0);
  if (results.empty()) return pass;
  for (int i = 1; i <= k; ++i) {
    double sum = 0;
    for (const TaskResult& r : results) sum += PassAtK(r.candidates, r.solved, i);
    pass[i - 1] = sum / static_cast<double>(results.size());
  }
  return pass;
}

}  // namespace

Result<std::vector<BatchTask>> LoadTasks(const std::string& path) {
  LR_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  std::vector<BatchTask> tasks;
  std::set<std::string> names;
  std::vector<std::string_view> lines = Lines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (IsBlank(lines[i])) continue;
    const std::string where = path + ":" + std::to_string(i + 1);
    LR_ASSIGN_OR_RETURN(BatchTask t, TaskFromLine(lines[i], path, where));
    if (!names.insert(t.task.name).second) {
      t.task.name.append("@").append(
          std::to_string(i + 1));  // real sets repeat names (ProofNet): the line keeps them apart
      names.insert(t.task.name);
    }
    tasks.push_back(std::move(t));
  }
  if (tasks.empty()) return InvalidArgument(path + ": no tasks (expected one JSON object per line)");
  return tasks;
}

std::string ResultToJson(const TaskResult& r) {
  json j = {{"name", r.name},
            {"proved", r.proved},
            {"proof", r.proof},
            {"candidates", r.candidates},
            {"solved", r.solved},
            {"checks", r.checks},
            {"turns", r.turns},
            {"tokens", r.tokens},
            {"seconds", r.seconds},
            {"first_proof_check", r.first_proof_check},
            {"stop_reason", r.stop_reason}};
  if (r.worker_crashes > 0) j["worker_crashes"] = r.worker_crashes;
  if (!r.error.empty()) j["error"] = r.error;
  if (!r.diff.empty()) j["diff"] = r.diff;
  if (!r.trace.empty()) j["trace"] = r.trace;
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<TaskResult> ResultFromJson(std::string_view line, std::string_view where) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  const std::string w(where);
  if (j.is_discarded() || !j.is_object()) return Corrupt(w + ": expected one JSON object per result line");
  TaskResult r;
  try {
    if (!j.contains("name") || !j.contains("proved")) return Corrupt(w + ": a result needs \"name\" and \"proved\"");
    r.name = j.at("name").get<std::string>();
    r.proved = j.at("proved").get<bool>();
    r.proof = j.value("proof", "");
    r.candidates = j.value("candidates", 0);
    r.solved = j.value("solved", 0);
    r.checks = j.value("checks", 0);
    r.turns = j.value("turns", 0);
    r.tokens = j.value("tokens", 0L);
    r.seconds = j.value("seconds", 0.0);
    r.first_proof_check = j.value("first_proof_check", 0);
    r.stop_reason = j.value("stop_reason", "");
    r.worker_crashes = j.value("worker_crashes", 0);
    r.error = j.value("error", "");
    r.diff = j.value("diff", "");
    r.trace = j.value("trace", "");
  } catch (const json::exception& e) {
    return Corrupt(w + ": a field has the wrong type (" + e.what() + ")");
  }
  return r;
}

Result<std::vector<TaskResult>> LoadResults(const std::string& path) {
  Result<std::string> text = ReadFile(path);
  if (!text.ok() && text.status().code() == StatusCode::kNotFound) return std::vector<TaskResult>();
  if (!text.ok()) return text.status();
  std::vector<TaskResult> results;
  std::vector<std::string_view> lines = Lines(*text);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (IsBlank(lines[i])) continue;
    LR_ASSIGN_OR_RETURN(TaskResult r, ResultFromJson(lines[i], path + ":" + std::to_string(i + 1)));
    results.push_back(std::move(r));
  }
  return results;
}

double PassAtK(int n, int c, int k) {
  if (n <= 0 || c <= 0) return 0.0;
  k = std::min(k, n);
  if (n - c < k) return 1.0;
  double none = 1.0;  // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
  for (int i = n - c + 1; i <= n; ++i) none *= 1.0 - static_cast<double>(k) / i;
  return 1.0 - none;
}

Result<BatchSummary> RunBatch(const std::vector<BatchTask>& tasks, LanguageModel& model, LeanChecker& checker,
                              const BatchOptions& options, BatchObserver* observer) {
  LR_ASSIGN_OR_RETURN(std::vector<TaskResult> earlier, LoadResults(options.out_path));
  if (!earlier.empty() && !options.resume)
    return InvalidArgument(options.out_path + " already holds " + std::to_string(earlier.size()) +
                           " results: pass --resume to continue that run, or choose another output file");
  std::set<std::string> task_names;
  for (const BatchTask& t : tasks) task_names.insert(t.task.name);
  std::vector<TaskResult> results;
  std::set<std::string> finished;
  for (TaskResult& r : earlier) {
    if (task_names.count(r.name) == 0 || !finished.insert(r.name).second) continue;
    results.push_back(std::move(r));
  }
  std::vector<const BatchTask*> pending;
  for (const BatchTask& t : tasks)
    if (finished.count(t.task.name) == 0) pending.push_back(&t);

  BatchSummary summary;
  summary.tasks = static_cast<int>(tasks.size());
  summary.skipped = static_cast<int>(results.size());
  const int total = summary.tasks;
  int proved = 0;
  for (const TaskResult& r : results) proved += r.proved ? 1 : 0;
  BatchProgress progress;
  progress.total = total;
  progress.skipped = summary.skipped;
  progress.pending = static_cast<int>(pending.size());
  progress.done = summary.skipped;
  progress.proved = proved;
  if (observer != nullptr) observer->OnStart(progress, options, model.Name());

  ProverOptions prover = options.prover;
  prover.run_all_candidates = true;
  prover.cancel = options.cancel;
  const Clock::time_point start = Clock::now();
  std::mutex mu;  // guards everything below, the output file and the observer
  Status failure;
  int done_this_run = 0;
  std::atomic<size_t> next{0};
  auto stopping = [&] { return !failure.ok() || (options.cancel != nullptr && options.cancel->load()); };

  auto worker = [&] {
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (stopping()) return;
      }
      const size_t i = next.fetch_add(1);
      if (i >= pending.size()) return;
      const BatchTask& t = *pending[i];
      ProverOptions p = prover;
      p.project_root = t.project_root;
      p.path = t.path;
      auto run = [&]() -> Result<TaskResult> {
        if (t.repository || p.style == PromptStyle::kAgent) return RunAgentTask(t, model, checker, options, p.cancel);
        LR_ASSIGN_OR_RETURN(ProofOutcome proof, Prove(t.task, model, checker, p));
        return ResultOf(t.task.name, proof);
      };
      Result<TaskResult> outcome = run();

      std::lock_guard<std::mutex> lock(mu);
      TaskResult r;
      if (outcome.ok()) {
        r = std::move(*outcome);
      } else if (IsTaskError(outcome.status().code())) {
        r.name = t.task.name;
        r.error = outcome.status().ToString();
      } else {
        // A task cut short by an interrupt (kCancelled, or whatever failure its cancelled work reported) is
        // abandoned, not written: --resume runs it again.
        const bool interrupted = options.cancel != nullptr && options.cancel->load();
        if (outcome.status().code() != StatusCode::kCancelled && !interrupted && failure.ok())
          failure = outcome.status();
        return;
      }
      if (Status s = AppendLine(options.out_path, ResultToJson(r)); !s.ok()) {
        if (failure.ok()) failure = s;
        return;
      }
      ++done_this_run;
      proved += r.proved ? 1 : 0;
      results.push_back(r);
      progress.done = static_cast<int>(results.size());
      progress.done_this_run = done_this_run;
      progress.proved = proved;
      progress.elapsed_seconds = std::chrono::duration<double>(Clock::now() - start).count();
      if (observer != nullptr) observer->OnTaskDone(r, progress);
    }
  };
  const int jobs = std::max(1, std::min<int>(options.jobs, static_cast<int>(pending.size())));
  std::vector<std::thread> threads;
  for (int j = 1; j < jobs; ++j) threads.emplace_back(worker);
  worker();
  for (std::thread& th : threads) th.join();
  progress.elapsed_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  if (observer != nullptr) observer->OnEnd(progress);

  summary.cancelled = options.cancel != nullptr && options.cancel->load();
  summary.finished = static_cast<int>(results.size());
  summary.proved = proved;
  for (const TaskResult& r : results) {
    summary.errors += r.error.empty() ? 0 : 1;
    summary.worker_crashes += r.worker_crashes;
  }
  summary.pass_at = MeanPassAt(results, options.prover.k);
  if (!options.report_path.empty())
    LR_RETURN_IF_ERROR(
        WriteFileAtomic(options.report_path, MarkdownReport(results, total, options.prover.k, model.Name())));
  if (!failure.ok())
    return failure.WithContext("batch stopped (finished results are kept in " + options.out_path + ")");
  return summary;
}

std::string MarkdownReport(const std::vector<TaskResult>& results, int tasks, int k, const std::string& model_name) {
  int proved = 0, max_checks = 0, crashes = 0;
  long tokens = 0, checks = 0;
  double seconds = 0;
  for (const TaskResult& r : results) {
    proved += r.proved ? 1 : 0;
    checks += r.checks;
    max_checks = std::max(max_checks, r.checks);
    tokens += r.tokens;
    seconds += r.seconds;
    crashes += r.worker_crashes;
  }
  const double n = results.empty() ? 1.0 : static_cast<double>(results.size());
  char buf[512];
  std::string md = "# leanrotor batch report\n\n";
  std::snprintf(buf, sizeof buf,
                "| model | tasks | finished | proved | k | mean checks | mean tokens | mean seconds |\n"
                "|---|---|---|---|---|---|---|---|\n"
                "| %s | %d | %zu | %d (%.1f%%) | %d | %.1f | %.0f | %.1f |\n\n",
                model_name.c_str(), tasks, results.size(), proved, 100.0 * proved / n, k, checks / n, tokens / n,
                seconds / n);
  md += buf;
  if (crashes > 0) {
    std::snprintf(buf, sizeof buf,
                  "%d candidate(s) crashed Lean's file worker repeatably and were rejected (column "
                  "\"crashes\" below); Lean itself kept working.\n\n",
                  crashes);
    md += buf;
  }

  md +=
      "## pass@k (unbiased, over finished tasks; a sample is one candidate with its repair turns)\n\n| k | pass@k "
      "|\n|---|---|\n";
  std::vector<double> pass = MeanPassAt(results, k);
  for (int i = 0; i < k; ++i) {
    std::snprintf(buf, sizeof buf, "| %d | %.3f |\n", i + 1, pass[i]);
    md += buf;
  }

  md += "\n## Solved vs budget (Lean checks until the first accepted proof)\n\n```text\nchecks  solved\n";
  for (int b = 1; b <= max_checks; ++b) {
    int solved = 0;
    for (const TaskResult& r : results) solved += (r.first_proof_check >= 1 && r.first_proof_check <= b) ? 1 : 0;
    const int width = tasks > 0 ? solved * 50 / tasks : 0;
    std::snprintf(buf, sizeof buf, "%6d  %s %d\n", b, std::string(static_cast<size_t>(width), '#').c_str(), solved);
    md += buf;
  }
  md +=
      "```\n\n## Tasks\n\n"
      "| task | proved | solved/candidates | checks | crashes | turns | tokens | seconds | stop |\n"
      "|---|---|---|---|---|---|---|---|---|\n";
  for (const TaskResult& r : results) {
    std::snprintf(buf, sizeof buf, "| %s | %s | %d/%d | %d | %d | %d | %ld | %.1f | %s |\n", r.name.c_str(),
                  r.proved ? "yes" : "no", r.solved, r.candidates, r.checks, r.worker_crashes, r.turns, r.tokens,
                  r.seconds, r.error.empty() ? r.stop_reason.c_str() : r.error.c_str());
    md += buf;
  }
  return md;
}

}  // namespace lr::agent
