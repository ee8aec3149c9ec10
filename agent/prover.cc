#include "agent/prover.h"

#include <chrono>
#include <optional>

namespace lr::agent {
namespace {

using Clock = std::chrono::steady_clock;

struct Candidate {
  std::vector<ChatMessage> conversation;
  bool done = false;
};

// What the model is told about a rejected candidate: Lean's messages and goals from the statement on (lines counted
// from the statement's first line, 1-based), or the guard's reason when Lean never saw it.
Feedback FeedbackFor(const Verdict& verdict, const LeanReport* report, const ProofTask& task) {
  Feedback f;
  if (report == nullptr) {
    f.errors = verdict.reason;
    return f;
  }
  const int first_line = StatementLine(task);
  for (const LeanMessage& m : report->messages) {
    if (m.line < first_line || m.severity > 2) continue;
    f.errors += "line " + std::to_string(m.line - first_line + 1) + ": " + m.text + "\n";
  }
  for (const LeanGoal& g : report->goals) {
    if (g.line < first_line) continue;
    f.goals += "-- at line " + std::to_string(g.line - first_line + 1) + "\n" + g.goals + "\n";
  }
  if (f.errors.empty()) f.errors = verdict.reason + "\n";
  return f;
}

class Loop {
 public:
  Loop(const ProofTask& task, LanguageModel& model, LeanChecker& checker, const ProverOptions& options)
      : task_(task), model_(model), checker_(checker), options_(options), start_(Clock::now()) {}

  Result<ProofOutcome> Run() {
    const int k = options_.k;
    std::vector<Candidate> candidates(k);
    const std::vector<ChatMessage> first = FirstPrompt(task_, options_.style);
    LR_ASSIGN_OR_RETURN(Completion completion, Request(first, 0, k, 0));
    out_.candidates = k;
    for (int i = 0; i < k && !Finished(); ++i) {
      candidates[i].conversation = first;
      LR_RETURN_IF_ERROR(Judge(&candidates[i], i, 0, completion.choices[i]));
    }
    for (int turn = 1; turn <= options_.turns && !Finished(); ++turn) {
      for (int i = 0; i < k && !Finished(); ++i) {
        if (candidates[i].done) continue;
        LR_ASSIGN_OR_RETURN(Completion repair, Request(candidates[i].conversation, i, 1, turn));
        ++out_.turns;
        LR_RETURN_IF_ERROR(Judge(&candidates[i], i, turn, repair.choices[0]));
      }
    }
    if (out_.stop_reason.empty()) out_.stop_reason = out_.proved ? "proved" : "all candidates done";
    out_.seconds = Seconds();
    return std::move(out_);
  }

 private:
  double Seconds() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }
  bool IsCancelled() const { return options_.cancel != nullptr && options_.cancel->load(); }

  // True when the loop must stop; sets the reason once.
  bool Finished() {
    if (!out_.stop_reason.empty()) return true;
    if (out_.proved && !options_.run_all_candidates)
      out_.stop_reason = "proved";
    else if (options_.max_tokens > 0 && out_.tokens >= options_.max_tokens)
      out_.stop_reason = "token budget";
    else if (options_.max_seconds > 0 && Seconds() >= options_.max_seconds)
      out_.stop_reason = "time budget";
    else if (options_.max_checks > 0 && out_.checks >= options_.max_checks)
      out_.stop_reason = "check budget";
    return !out_.stop_reason.empty();
  }

  // Asks for the replies of candidates [first_candidate, first_candidate + n) at `turn`.
  Result<Completion> Request(const std::vector<ChatMessage>& messages, int first_candidate, int n, int turn) {
    if (IsCancelled()) return Cancelled("proof of " + task_.name + " cancelled");
    CompletionRequest request;
    request.messages = messages;
    request.n = n;
    request.sampling = options_.sampling;
    request.continue_final_message = options_.style == PromptStyle::kCompletion;
    request.cancel = options_.cancel;
    if (options_.style == PromptStyle::kTools) request.tools = {CheckProofTool()};
    ProverObserver* observer = options_.observer;
    if (observer != nullptr) observer->OnGenerating(first_candidate, n, turn);
    auto keep_going = [this, observer, first_candidate](int index, std::string_view piece) {
      if (observer != nullptr) observer->OnPiece(first_candidate + index, piece);
      return !IsCancelled();
    };
    LR_ASSIGN_OR_RETURN(Completion c, model_.Complete(request, keep_going));
    if (IsCancelled()) return Cancelled("proof of " + task_.name + " cancelled");
    if (static_cast<int>(c.choices.size()) != n)
      return Internal("model " + model_.Name() + " returned " + std::to_string(c.choices.size()) +
                      " choices, expected " + std::to_string(n));
    out_.tokens += c.usage.completion_tokens;
    out_.prompt_tokens += c.usage.prompt_tokens;
    out_.prompt_tokens_computed += c.usage.prompt_tokens_computed;
    return c;
  }

  Result<LeanReport> Check(const std::string& proof) {
    CheckRequest request{CheckedText(task_, proof), options_.project_root, options_.path,
                         options_.check_timeout_seconds, options_.cancel};
    Result<LeanReport> report = checker_.Check(request);
    if (!report.ok() && IsCancelled()) return Cancelled("proof of " + task_.name + " cancelled");
    if (!report.ok()) return report.status().WithContext("checking a proof of " + task_.name);
    out_.lean_seconds += report->seconds;
    return report;
  }

  Status Judge(Candidate* candidate, int index, int turn, const Choice& choice) {
    Attempt attempt;
    attempt.candidate = index;
    attempt.turn = turn;
    attempt.tokens = choice.completion_tokens;
    Extracted extracted = ExtractProof(choice, options_.style, task_);
    std::optional<LeanReport> report;
    if (!extracted.found) {
      attempt.verdict = Verdict::Refuse(extracted.problem);
    } else {
      attempt.proof = extracted.proof;
      attempt.verdict = RefuseProofText(attempt.proof, options_.guard);
      if (attempt.verdict.accepted) attempt.verdict = CheckSplice(task_, attempt.proof);
      if (attempt.verdict.accepted) {
        if (options_.observer != nullptr) options_.observer->OnChecking(index, turn);
        LR_ASSIGN_OR_RETURN(report, Check(attempt.proof));
        attempt.verdict = JudgeLeanReport(*report, task_, attempt.proof, options_.guard);
        if (!report->worker_crash.empty()) ++out_.worker_crashes;
      }
    }
    ++out_.checks;
    if (attempt.verdict.accepted) {
      candidate->done = true;
      ++out_.solved;
      if (!out_.proved) {
        out_.proved = true;
        out_.first_proof_check = out_.checks;
        out_.proof = attempt.proof;
      }
    } else if (turn < options_.turns) {
      AppendRepairTurn(&candidate->conversation, options_.style, task_, choice,
                       FeedbackFor(attempt.verdict, report ? &*report : nullptr, task_));
    } else {
      candidate->done = true;
    }
    if (options_.observer != nullptr) options_.observer->OnJudged(attempt);
    out_.attempts.push_back(std::move(attempt));
    return Status::Ok();
  }

  const ProofTask& task_;
  LanguageModel& model_;
  LeanChecker& checker_;
  const ProverOptions& options_;
  const Clock::time_point start_;
  ProofOutcome out_;
};

}  // namespace

Result<ProofOutcome> Prove(const ProofTask& task, LanguageModel& model, LeanChecker& checker,
                           const ProverOptions& options) {
  if (options.style == PromptStyle::kAgent)
    return InvalidArgument("prover options: the agent style runs the agent loop (RunAgent), not Prove");
  if (options.k < 1 || options.turns < 0)
    return InvalidArgument("prover options: k must be at least 1 and turns at least 0 (got k=" +
                           std::to_string(options.k) + ", turns=" + std::to_string(options.turns) + ")");
  return Loop(task, model, checker, options).Run();
}

}  // namespace lr::agent
