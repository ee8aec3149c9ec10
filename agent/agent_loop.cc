#include "agent/agent_loop.h"

#include <algorithm>
#include <chrono>
#include <map>

#include <nlohmann/json.hpp>

#include "agent/diff.h"
#include "agent/task.h"
#include "agent/working_copy.h"

namespace lr::agent {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int kMaxIdleStops = 3;  // replies without tool calls and without a newly accepted target

constexpr std::string_view kSystem =
    "You are an expert Lean 4 and Mathlib engineer working inside a Lean project. You complete proofs by calling "
    "tools: lean_goal shows the proof state at a line (use it often), lean_local_search checks that a lemma exists "
    "before you use it, lean_multi_attempt tries several tactics at once, lean_diagnostic_messages shows Lean's "
    "errors, read_file shows the file with line numbers and edit_file replaces a unique snippet. Lines and columns "
    "are 1-based. Keep every theorem statement exactly as it is and replace only the proofs; never use sorry, admit, "
    "axiom, native_decide or #eval. Work until Lean reports no errors and no sorry for the target theorems, then "
    "answer without a tool call.";

const ProofTask* FindTask(const std::vector<ProofTask>& tasks, const std::string& name) {
  for (const ProofTask& t : tasks)
    if (t.full_name == name || t.name == name) return &t;
  return nullptr;
}

// `text` with the proof of each accepted theorem (full name -> proof) spliced in, later theorems first so that the
// offsets of earlier ones stay valid.
std::string Splice(const std::string& text, const std::map<std::string, std::string>& proofs) {
  std::vector<ProofTask> tasks = TasksFromSource(text);
  std::string out = text;
  for (auto it = tasks.rbegin(); it != tasks.rend(); ++it) {
    auto p = proofs.find(it->full_name);
    if (p == proofs.end()) continue;
    const size_t begin = it->preamble.size();
    const size_t end = begin + it->statement.size() + it->proof.size();
    out = out.substr(0, begin) + TheoremText(*it, p->second) + out.substr(end);
  }
  return out;
}

std::string CallId(int n) {
  // Mistral's tool-call ids are 9 characters of [a-zA-Z0-9].
  std::string id = "c" + std::to_string(n);
  return id.size() < 9 ? id + std::string(9 - id.size(), '0') : id.substr(0, 9);
}

class Loop {
 public:
  Loop(const RepositoryTask& task, LanguageModel& model, ToolBox& tools, LeanChecker& checker,
       const AgentOptions& options)
      : task_(task), model_(model), tools_(tools), checker_(checker), options_(options), start_(Clock::now()) {}

  Result<AgentOutcome> Run() {
    WorkingCopy& copy = tools_.working_copy();
    copy.Reset();
    LR_ASSIGN_OR_RETURN(path_, copy.Resolve(task_.file));
    if (!task_.text.empty()) copy.Write(path_, task_.text);
    LR_ASSIGN_OR_RETURN(original_, copy.Read(path_));
    std::vector<ProofTask> tasks = TasksFromSource(original_);
    if (task_.theorems.empty()) {
      for (const ProofTask& t : tasks)
        if (HasSorry(t)) out_.targets.push_back(t.full_name);
      if (out_.targets.empty()) return InvalidArgument(copy.Relative(path_) + ": no theorem or lemma with a sorry");
    } else {
      for (const std::string& name : task_.theorems) {
        const ProofTask* t = FindTask(tasks, name);
        if (t == nullptr) return InvalidArgument(copy.Relative(path_) + ": no theorem or lemma named " + name);
        out_.targets.push_back(t->full_name);
      }
    }
    checks_at_start_ = tools_.lean_checks();

    std::vector<ChatMessage> messages = {{"system", std::string(kSystem), {}, ""}, {"user", TaskPrompt(tasks), {}, ""}};
    int idle_stops = 0;
    while (!Finished()) {
      LR_ASSIGN_OR_RETURN(Choice reply, Request(messages));
      ChatMessage assistant{"assistant", reply.text, reply.tool_calls, ""};
      for (size_t i = 0; i < assistant.tool_calls.size(); ++i)
        if (assistant.tool_calls[i].id.empty())
          assistant.tool_calls[i].id = CallId(out_.tool_calls + static_cast<int>(i));
      messages.push_back(assistant);
      if (assistant.tool_calls.empty()) {
        size_t before = out_.accepted.size();
        LR_RETURN_IF_ERROR(Judge());
        if (out_.proved || Finished()) break;
        if (out_.accepted.size() == before && ++idle_stops >= kMaxIdleStops) {
          out_.stop_reason = "model stopped";
          break;
        }
        messages.push_back({"user", NotDoneMessage(), {}, ""});
        continue;
      }
      bool edited = false;
      for (const ToolCall& call : assistant.tool_calls) {
        std::string result = "not run: the tool-call budget is spent";
        if (!Finished()) {
          result = RunTool(call);
          edited = edited || call.name == "edit_file" || call.name == "write_file";
        }
        messages.push_back({"tool", result, {}, call.id});
      }
      if (edited) LR_RETURN_IF_ERROR(Judge());
    }
    if (out_.stop_reason.empty()) out_.stop_reason = out_.proved ? "proved" : "model stopped";
    out_.final_text = Splice(original_, accepted_proofs_);
    std::string rel = tools_.working_copy().Relative(path_);
    out_.diff = UnifiedDiff(original_, out_.final_text, "a/" + rel, "b/" + rel);
    out_.checks = Checks();
    out_.seconds = Seconds();
    return std::move(out_);
  }

 private:
  double Seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  int Checks() const { return static_cast<int>(tools_.lean_checks() - checks_at_start_) + judge_checks_; }
  bool IsCancelled() const { return options_.cancel != nullptr && options_.cancel->load(); }

  bool Finished() {
    if (!out_.stop_reason.empty()) return true;
    if (out_.proved)
      out_.stop_reason = "proved";
    else if (options_.max_tool_calls > 0 && out_.tool_calls >= options_.max_tool_calls)
      out_.stop_reason = "tool-call budget";
    else if (options_.max_turns > 0 && out_.turns >= options_.max_turns)
      out_.stop_reason = "turn budget";
    else if (options_.max_tokens > 0 && out_.tokens >= options_.max_tokens)
      out_.stop_reason = "token budget";
    else if (options_.max_seconds > 0 && Seconds() >= options_.max_seconds)
      out_.stop_reason = "time budget";
    else if (options_.max_checks > 0 && Checks() >= options_.max_checks)
      out_.stop_reason = "check budget";
    return !out_.stop_reason.empty();
  }

  std::string TaskPrompt(const std::vector<ProofTask>& tasks) const {
    std::string rel = tools_.working_copy().Relative(path_);
    std::string p = "Project root: " + tools_.working_copy().root() + "\nFile: " + rel +
                    "\n\nComplete the proofs of these theorems in " + rel + ":\n";
    for (const std::string& name : out_.targets) {
      const ProofTask* t = FindTask(tasks, name);
      int line = 1 + static_cast<int>(std::count(t->preamble.begin(), t->preamble.end(), '\n'));
      p += "- " + name + " (line " + std::to_string(line) + ")\n";
    }
    if (!task_.instructions.empty()) p += "\n" + task_.instructions + "\n";
    return p;
  }

  std::string NotDoneMessage() const {
    std::string m = "Not done yet. ";
    for (const std::string& name : out_.targets) {
      if (std::find(out_.accepted.begin(), out_.accepted.end(), name) != out_.accepted.end()) continue;
      auto it = refusals_.find(name);
      m += name + ": " + (it == refusals_.end() ? "still unproved" : it->second) + "\n";
    }
    return m + "Keep working with the tools.";
  }

  Result<Choice> Request(const std::vector<ChatMessage>& messages) {
    if (IsCancelled()) return Cancelled("agent on " + task_.file + " cancelled");
    CompletionRequest request;
    request.messages = messages;
    request.tools = tools_.Specs();
    request.sampling = options_.sampling;
    AgentObserver* observer = options_.observer;
    if (observer != nullptr) observer->OnGenerating(out_.turns);
    auto keep_going = [this, observer](int, std::string_view piece) {
      if (observer != nullptr) observer->OnPiece(piece);
      return !IsCancelled();
    };
    LR_ASSIGN_OR_RETURN(Completion c, model_.Complete(request, keep_going));
    if (IsCancelled()) return Cancelled("agent on " + task_.file + " cancelled");
    if (c.choices.size() != 1)
      return Internal("model " + model_.Name() + " returned " + std::to_string(c.choices.size()) +
                      " choices, expected 1");
    ++out_.turns;
    out_.tokens += c.usage.completion_tokens;
    out_.prompt_tokens += c.usage.prompt_tokens;
    out_.prompt_tokens_computed += c.usage.prompt_tokens_computed;
    return std::move(c.choices[0]);
  }

  std::string RunTool(const ToolCall& call) {
    if (options_.observer != nullptr) options_.observer->OnToolCall(out_.turns, call.name, call.arguments_json);
    ToolCallContext context;
    context.cancel = options_.cancel;
    auto start = Clock::now();
    ToolOutcome outcome = tools_.Call(call.name, call.arguments_json, context);
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    ++out_.tool_calls;
    out_.tool_errors += outcome.is_error ? 1 : 0;
    std::string shown =
        TruncateResult(outcome.is_error ? "Error: " + outcome.text : outcome.text, options_.result_bytes);
    out_.trace.push_back(Json{
        {"turn", out_.turns},
        {"id", call.id},
        {"tool", call.name},
        {"arguments", call.arguments_json},
        {"is_error", outcome.is_error},
        {"result", shown},
        {"ms", ms}}.dump(-1, ' ', false, Json::error_handler_t::replace));
    if (options_.observer != nullptr) options_.observer->OnToolResult(out_.turns, call.name, outcome.is_error, shown);
    return shown;
  }

  // Judges every target not yet accepted whose proof in the working copy changed since it was last judged.
  Status Judge() {
    auto working = tools_.working_copy().Read(path_);
    if (!working.ok()) return Status::Ok();  // the agent cannot delete the file from the working copy
    std::vector<ProofTask> now = TasksFromSource(*working);
    for (const std::string& name : out_.targets) {
      if (accepted_proofs_.count(name)) continue;
      const ProofTask* current = FindTask(now, name);
      Verdict verdict;
      std::string proof;
      if (current == nullptr) {
        verdict = Verdict::Refuse("the theorem " + name + " is no longer in the file (renamed or removed)");
      } else {
        proof = current->proof;
        if (judged_[name] == proof) continue;
        judged_[name] = proof;
        // The theorem as it stands in the original file with the accepted proofs in: the candidate sees only what
        // the user's file will hold.
        std::vector<ProofTask> base = TasksFromSource(Splice(original_, accepted_proofs_));
        const ProofTask& task = *FindTask(base, name);
        verdict = RefuseProofText(proof, options_.guard);
        if (verdict.accepted) verdict = CheckSplice(task, proof);
        if (verdict.accepted) {
          CheckRequest request{CheckedText(task, proof), tools_.working_copy().root(), path_,
                               options_.check_timeout_seconds};
          ++judge_checks_;
          Result<LeanReport> report = checker_.Check(request);
          if (!report.ok()) return report.status().WithContext("judging the agent's proof of " + name);
          verdict = JudgeLeanReport(*report, task, proof, options_.guard);
        }
      }
      out_.trace.push_back(
          Json{{"turn", out_.turns}, {"judge", name}, {"accepted", verdict.accepted}, {"reason", verdict.reason}}.dump(
              -1, ' ', false, Json::error_handler_t::replace));
      if (options_.observer != nullptr) options_.observer->OnJudged(name, proof, verdict);
      if (verdict.accepted) {
        accepted_proofs_[name] = proof;
        out_.accepted.push_back(name);
        refusals_.erase(name);
      } else {
        refusals_[name] = verdict.reason;
        out_.last_refusal = name + ": " + verdict.reason;
      }
    }
    out_.proved = out_.accepted.size() == out_.targets.size();
    return Status::Ok();
  }

  const RepositoryTask& task_;
  LanguageModel& model_;
  ToolBox& tools_;
  LeanChecker& checker_;
  const AgentOptions& options_;
  const Clock::time_point start_;
  std::string path_;
  std::string original_;
  long checks_at_start_ = 0;
  int judge_checks_ = 0;
  std::map<std::string, std::string> accepted_proofs_;  // full name -> proof
  std::map<std::string, std::string> judged_;           // full name -> the proof last judged
  std::map<std::string, std::string> refusals_;         // full name -> why its last proof was refused
  AgentOutcome out_;
};

}  // namespace

std::string TruncateResult(const std::string& text, size_t budget) {
  if (text.size() <= budget) return text;
  size_t cut = budget;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;  // not inside a character
  return text.substr(0, cut) + "\n[... truncated: " + std::to_string(text.size() - cut) +
         " more bytes not shown; ask for less, e.g. a line range or a smaller limit]";
}

Result<AgentOutcome> RunAgent(const RepositoryTask& task, LanguageModel& model, ToolBox& tools, LeanChecker& checker,
                              const AgentOptions& options) {
  return Loop(task, model, tools, checker, options).Run();
}

}  // namespace lr::agent
