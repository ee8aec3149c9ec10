// The proof loop for one theorem.
//
// One attempt, from prompt to acceptance:
//   1. FirstPrompt(task) asks for k candidates in one request (n = k): the backend prefills the shared prompt once.
//   2. Each reply goes through ExtractProof (```lean block, tactics, a check_proof tool call in the tools style, or
//      the completion up to its fence), then the guard's text checks (RefuseProofText, CheckSplice): refused text
//      never reaches Lean.
//   3. CheckedText (preamble + statement + proof + `#print axioms NAME`) goes to the LeanChecker; its report is judged
//      by JudgeLeanReport. Accepted: done (or, for pass@k runs, this candidate is done). A candidate that crashes
//      Lean's file worker repeatably is refused with that reason (and counted), like one with errors.
//   4. Otherwise the candidate's own conversation gets its reply plus Lean's errors and goals (AppendRepairTurn) and
//      is sent again for one reply, up to `turns` times per candidate.
// The loop stops at the first accepted proof (unless every candidate is to be run to its end), when every candidate
// is spent, or when a budget (tokens, seconds, Lean checks) runs out. A failed Lean check (kUnavailable, kTimeout,
// after the pool's own retry) is returned as an error: an infrastructure failure is never reported as a failed proof.
#pragma once

#include <atomic>
#include <string>
#include <string_view>
#include <vector>

#include "agent/guard.h"
#include "agent/lean_checker.h"
#include "agent/prompt.h"
#include "agent/task.h"
#include "lm/language_model.h"

namespace lr::agent {

struct Attempt;

// Live progress of the loop, for a watcher such as the TUI. Called on the thread that runs Prove, in order; the
// defaults do nothing.
class ProverObserver {
 public:
  virtual ~ProverObserver() = default;
  // A model request for candidates [first_candidate, first_candidate + n) starts; turn 0 is the shared first prompt.
  virtual void OnGenerating(int first_candidate, int n, int turn) {}
  // A decoded piece of `candidate`'s reply.
  virtual void OnPiece(int candidate, std::string_view piece) {}
  // `candidate`'s reply passed the text checks and goes to Lean.
  virtual void OnChecking(int candidate, int turn) {}
  // A reply was judged.
  virtual void OnJudged(const Attempt& attempt) {}
};

struct ProverOptions {
  int k = 4;      // candidates sampled from the first prompt
  int turns = 2;  // repair turns per candidate after its first reply
  PromptStyle style = PromptStyle::kChat;
  SamplingParams sampling;  // per request; sampling.max_tokens bounds one reply
  long max_tokens = 0;      // budget: completion tokens over all requests; 0 = none
  double max_seconds = 0;   // budget: wall-clock seconds; 0 = none
  int max_checks = 0;       // budget: candidates judged (guard or Lean); 0 = none
  // false: stop at the first accepted proof (prove). true: run every candidate to its own end, so that the number of
  // candidates that succeed is known (batch pass@k).
  bool run_all_candidates = false;
  GuardOptions guard;
  std::string project_root;  // passed to the checker (Lake project tasks)
  std::string path;
  double check_timeout_seconds = 300;         // one Lean check, the pool's retry included
  const std::atomic<bool>* cancel = nullptr;  // set to stop: Prove returns kCancelled
  ProverObserver* observer = nullptr;         // may be null
};

// One judged candidate.
struct Attempt {
  int candidate = 0;  // 0..k-1
  int turn = 0;       // 0: first reply; 1..turns: repairs
  std::string proof;  // what was extracted (empty when nothing was)
  Verdict verdict;
  int tokens = 0;  // completion tokens of this reply
};

struct ProofOutcome {
  bool proved = false;
  std::string proof;                // the first accepted proof: the text after the statement's `:=`
  int candidates = 0;               // candidate chains started
  int solved = 0;                   // of those, how many ended in an accepted proof
  int checks = 0;                   // candidates judged
  int first_proof_check = 0;        // 1-based index of the check that first accepted a proof; 0 when none did
  int turns = 0;                    // model requests
  long tokens = 0;                  // completion tokens
  long prompt_tokens = 0;           // prompt tokens over all requests
  long prompt_tokens_computed = 0;  // of those, prefilled (not from the prefix cache)
  double seconds = 0;
  double lean_seconds = 0;
  int worker_crashes = 0;   // judged candidates refused because Lean's file worker crashed on them
  std::string stop_reason;  // "proved", "all candidates done", "token budget", "time budget", "check budget"
  std::vector<Attempt> attempts;
};

// Proves `task`. Errors: the model's (kInvalidArgument, kUnavailable, kResourceExhausted, ...), the checker's after
// (kUnavailable, kTimeout), kCancelled (options.cancel reaches the model's stream and the Lean checks in flight).
Result<ProofOutcome> Prove(const ProofTask& task, LanguageModel& model, LeanChecker& checker,
                           const ProverOptions& options);

}  // namespace lr::agent
