// One theorem to prove, and the text Lean checks for a candidate proof of it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace lr::agent {

struct ProofTask {
  std::string name;       // the declaration's name as written ("amc12a_2019_p21")
  std::string full_name;  // with namespaces, for `#print axioms`
  // Everything Lean must see before the theorem: imports, options, opens, earlier declarations, a doc comment.
  std::string preamble;
  std::string statement;  // the theorem from its first byte through the `:=` that starts the proof
  std::string proof;      // the proof as found (" by\n  sorry", or a broken proof to repair); never empty
  std::string informal;   // an informal statement for the prompt, may be empty
};

// A task from a theorem (or def) statement that ends with `:=` or `:= by` (the miniF2F / DeepSeek-Prover shape).
// `where` names the source in errors ("tasks.jsonl:12"). Errors: kInvalidArgument when `formal_statement` holds no
// theorem with a `:=`.
Result<ProofTask> TaskFromStatement(std::string_view header, std::string_view informal,
                                    std::string_view formal_statement, std::string_view where);

// One task per `theorem`/`lemma` of a Lean file, in order (examples have no name to check axioms of; a `def`'s
// value is not a proof: both are skipped). The preamble of each is the file up to it.
std::vector<ProofTask> TasksFromSource(std::string_view text);

// True when the task's proof holds the token `sorry` outside comments and strings.
bool HasSorry(const ProofTask& task);

// The file Lean checks: preamble, statement, `proof`, and `#print axioms` for the theorem on the last line.
std::string CheckedText(const ProofTask& task, std::string_view proof);

// 0-based line in CheckedText() where the statement starts, and where the `#print axioms` line is.
int StatementLine(const ProofTask& task);
int AxiomsLine(const ProofTask& task, std::string_view proof);

// The statement's text with `proof` spliced in, for writing back into a file.
std::string TheoremText(const ProofTask& task, std::string_view proof);

}  // namespace lr::agent
