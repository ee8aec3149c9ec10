// The acceptance guard: what makes a candidate a real proof.
//
// Model output is untrusted code. It is judged twice:
//  - before Lean sees it (RefuseProofText): text that is not a proof (`sorry`, `admit`) or that could cheat or touch
//    the machine (`axiom`, `native_decide`, `#eval`, macros that redefine tactics, ...) is refused without being run;
//    the spliced file must still hold the original statement, unchanged, and nothing else new (CheckSplice);
//  - after Lean checked it (JudgeLeanReport): Lean's file worker did not crash on it, no error anywhere from the
//    theorem on, no "declaration uses 'sorry'", and `#print axioms` (appended to every checked text) names only
//    allowed axioms.
// A candidate is accepted only when both pass.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "agent/lean_checker.h"
#include "agent/task.h"

namespace lr::agent {

struct GuardOptions {
  // Refuse the constructs listed in guard.cc (axiom, native_decide, unsafe, implemented_by, extern, #eval and other
  // `#` commands, run_cmd, set_option debug.*, notation/macro/syntax/elab, new declarations). `sorry`, `admit` and a
  // changed statement are refused whatever this says.
  bool refuse_constructs = true;
  std::vector<std::string> allowed_axioms = {"propext", "Classical.choice", "Quot.sound"};
};

// Why a candidate is not a proof; `accepted` with an empty reason when it is one.
struct Verdict {
  bool accepted = false;
  std::string reason;

  static Verdict Accept() { return {true, ""}; }
  static Verdict Refuse(std::string why) { return {false, std::move(why)}; }
};

// Text check of a candidate proof (what follows the statement's `:=`) before it is sent to Lean.
Verdict RefuseProofText(std::string_view proof, const GuardOptions& options);

// Checks that CheckedText(task, proof) declares the task's theorem exactly once, with the original statement, and
// no other theorem after the preamble (a proof that closes its declaration and starts a new one is refused).
Verdict CheckSplice(const ProofTask& task, std::string_view proof);

// Judges Lean's report on CheckedText(task, proof): messages from the statement's line on count (earlier ones belong
// to the preamble, which the candidate cannot change).
Verdict JudgeLeanReport(const LeanReport& report, const ProofTask& task, std::string_view proof,
                        const GuardOptions& options);

// The axioms `#print axioms NAME` reported, from Lean's info message ("'NAME' depends on axioms: [a, b]" or
// "'NAME' does not depend on any axioms"). Returns false when `message` is not that report for `full_name`.
bool ParseAxiomsReport(std::string_view message, std::string_view full_name, std::vector<std::string>* axioms);

}  // namespace lr::agent
