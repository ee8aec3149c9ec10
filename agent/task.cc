#include "agent/task.h"

#include <algorithm>

#include "lsp/lean_text.h"

namespace lr::agent {
namespace {

ProofTask TaskFromDeclaration(std::string_view text, const lsp::Declaration& d) {
  ProofTask task;
  task.name = d.name;
  task.full_name = d.full_name;
  task.preamble = std::string(text.substr(0, d.begin));
  task.statement = std::string(d.Header(text));
  task.proof = std::string(d.Proof(text));
  return task;
}

}  // namespace

Result<ProofTask> TaskFromStatement(std::string_view header, std::string_view informal,
                                    std::string_view formal_statement, std::string_view where) {
  // A statement ending in `:= by` gets a `sorry` so that it parses as a whole declaration.
  std::string text = std::string(header) + std::string(informal) + std::string(formal_statement);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  text += "\n  sorry\n";
  std::vector<lsp::Declaration> decls = lsp::FindDeclarations(text);
  const size_t statement_begin = header.size() + informal.size();
  if (decls.empty() || decls.back().name == "example" || decls.back().begin < statement_begin)
    return InvalidArgument(
        std::string(where) +
        ": field formal_statement: expected a `theorem NAME ... :=` (or `:= by`, or a `def`) declaration");
  ProofTask task = TaskFromDeclaration(text, decls.back());
  task.informal = std::string(informal);
  return task;
}

std::vector<ProofTask> TasksFromSource(std::string_view text) {
  std::vector<ProofTask> tasks;
  for (const lsp::Declaration& d : lsp::FindDeclarations(text))
    if (d.keyword == "theorem" || d.keyword == "lemma") tasks.push_back(TaskFromDeclaration(text, d));
  return tasks;
}

bool HasSorry(const ProofTask& task) { return lsp::ContainsToken(lsp::MaskCommentsAndStrings(task.proof), "sorry"); }

std::string TheoremText(const ProofTask& task, std::string_view proof) { return task.statement + std::string(proof); }

std::string CheckedText(const ProofTask& task, std::string_view proof) {
  std::string text = task.preamble + TheoremText(task, proof);
  text += "\n\n#print axioms " + task.full_name + "\n";
  return text;
}

int StatementLine(const ProofTask& task) { return lsp::LineOfOffset(task.preamble, task.preamble.size()); }

int AxiomsLine(const ProofTask& task, std::string_view proof) {
  std::string text = CheckedText(task, proof);
  return static_cast<int>(std::count(text.begin(), text.end(), '\n')) - 1;
}

}  // namespace lr::agent
