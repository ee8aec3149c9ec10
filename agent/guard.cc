#include "agent/guard.h"

#include <cctype>

#include "lsp/lean_text.h"

namespace lr::agent {
namespace {

struct RefusedToken {
  std::string_view token;
  std::string_view why;
};

// Never a proof, whatever the options.
constexpr RefusedToken kIncomplete[] = {
    {"sorry", "the proof uses `sorry`"},
    {"admit", "the proof uses `admit`"},
    {"sorryAx", "the proof uses `sorryAx`"},
};

// Refused by default: trusted-compiler evidence, code that runs at elaboration time, new axioms, syntax that can
// change what the theorem or a tactic means, and declarations smuggled after the proof.
constexpr RefusedToken kRefused[] = {
    {"axiom", "declares an axiom"},
    {"native_decide", "uses `native_decide` (trusts the compiler)"},
    {"unsafe", "uses `unsafe`"},
    {"implemented_by", "uses `implemented_by`"},
    {"extern", "uses `extern`"},
    {"run_cmd", "runs code at elaboration time (`run_cmd`)"},
    {"run_tac", "runs code at elaboration time (`run_tac`)"},
    {"run_elab", "runs code at elaboration time (`run_elab`)"},
    {"run_meta", "runs code at elaboration time (`run_meta`)"},
    {"notation", "defines notation"},
    {"infix", "defines notation (`infix`)"},
    {"infixl", "defines notation (`infixl`)"},
    {"infixr", "defines notation (`infixr`)"},
    {"prefix", "defines notation (`prefix`)"},
    {"postfix", "defines notation (`postfix`)"},
    {"macro", "defines a macro"},
    {"macro_rules", "redefines syntax (`macro_rules`)"},
    {"syntax", "defines syntax"},
    {"elab", "defines an elaborator"},
    {"elab_rules", "defines an elaborator (`elab_rules`)"},
    {"theorem", "declares another theorem"},
    {"lemma", "declares another lemma"},
    {"def", "declares a definition"},
    {"example", "declares an example"},
    {"instance", "declares an instance"},
    {"abbrev", "declares an abbreviation"},
    {"opaque", "declares an opaque constant"},
    {"structure", "declares a structure"},
    {"inductive", "declares an inductive type"},
    {"class", "declares a class"},
    {"mutual", "opens a mutual block"},
    {"namespace", "opens a namespace"},
    {"section", "opens a section"},
    {"end", "closes a section or namespace"},
    {"import", "imports a module"},
    {"variable", "declares variables"},
    {"universe", "declares universes"},
};

bool IsLower(char c) { return c >= 'a' && c <= 'z'; }

// The first `#command` token (`#eval`, `#exit`, `#print`, ...) in `masked`, or empty.
std::string_view HashCommand(std::string_view masked) {
  for (size_t pos = masked.find('#'); pos != std::string_view::npos; pos = masked.find('#', pos + 1)) {
    if (pos + 1 >= masked.size() || !IsLower(masked[pos + 1])) continue;
    size_t end = pos + 1;
    while (end < masked.size() && (IsLower(masked[end]) || masked[end] == '_')) ++end;
    return masked.substr(pos, end - pos);
  }
  return {};
}

// True if some `set_option` in `masked` sets a `debug.*` option.
bool SetsDebugOption(std::string_view masked) {
  constexpr std::string_view kSetOption = "set_option";
  for (size_t pos = masked.find(kSetOption); pos != std::string_view::npos; pos = masked.find(kSetOption, pos + 1)) {
    size_t i = pos + kSetOption.size();
    while (i < masked.size() && std::isspace(static_cast<unsigned char>(masked[i]))) ++i;
    if (masked.compare(i, 6, "debug.") == 0) return true;
  }
  return false;
}

}  // namespace

Verdict RefuseProofText(std::string_view proof, const GuardOptions& options) {
  const std::string masked = lsp::MaskCommentsAndStrings(proof);
  if (lsp::NormalizeWhitespace(masked).empty()) return Verdict::Refuse("the proof is empty");
  for (const RefusedToken& r : kIncomplete)
    if (lsp::ContainsToken(masked, r.token)) return Verdict::Refuse(std::string(r.why));
  if (!options.refuse_constructs) return Verdict::Accept();
  for (const RefusedToken& r : kRefused)
    if (lsp::ContainsToken(masked, r.token))
      return Verdict::Refuse("refused construct: the proof " + std::string(r.why));
  if (std::string_view cmd = HashCommand(masked); !cmd.empty())
    return Verdict::Refuse("refused construct: the proof contains the command `" + std::string(cmd) + "`");
  if (SetsDebugOption(masked)) return Verdict::Refuse("refused construct: the proof sets a `debug.*` option");
  return Verdict::Accept();
}

Verdict CheckSplice(const ProofTask& task, std::string_view proof) {
  const std::string text = CheckedText(task, proof);
  int after_preamble = 0;
  const lsp::Declaration* found = nullptr;
  std::vector<lsp::Declaration> decls = lsp::FindDeclarations(text);
  for (const lsp::Declaration& d : decls) {
    if (d.begin < task.preamble.size()) continue;
    ++after_preamble;
    if (d.begin == task.preamble.size()) found = &d;
  }
  if (found == nullptr || found->full_name != task.full_name)
    return Verdict::Refuse("the candidate does not keep the theorem `" + task.full_name + "` where it was");
  if (!lsp::SameStatement(found->Header(text), task.statement))
    return Verdict::Refuse("the candidate changes the statement of `" + task.full_name + "`");
  if (after_preamble != 1) return Verdict::Refuse("the candidate adds declarations after the theorem");
  return Verdict::Accept();
}

Verdict JudgeLeanReport(const LeanReport& report, const ProofTask& task, std::string_view proof,
                        const GuardOptions& options) {
  if (!report.worker_crash.empty()) return Verdict::Refuse(report.worker_crash);
  const int first_line = StatementLine(task);
  const int axioms_line = AxiomsLine(task, proof);
  std::string errors;
  bool has_report = false;
  std::vector<std::string> axioms;
  for (const LeanMessage& m : report.messages) {
    if (m.line < first_line) continue;
    if (m.severity == 1) {
      errors += (errors.empty() ? "" : "; ") + m.text;
    } else if (m.text.find("declaration uses 'sorry'") != std::string::npos) {
      return Verdict::Refuse("Lean reports that the proof uses `sorry`");
    } else if (m.line == axioms_line && ParseAxiomsReport(m.text, task.full_name, &axioms)) {
      has_report = true;
    }
  }
  if (!errors.empty()) return Verdict::Refuse("Lean reports errors: " + errors);
  if (!has_report) return Verdict::Refuse("Lean gave no `#print axioms " + task.full_name + "` report");
  for (const std::string& a : axioms) {
    bool allowed = false;
    for (const std::string& ok : options.allowed_axioms) allowed = allowed || a == ok;
    if (!allowed) return Verdict::Refuse("the proof depends on the axiom `" + a + "`");
  }
  return Verdict::Accept();
}

bool ParseAxiomsReport(std::string_view message, std::string_view full_name, std::vector<std::string>* axioms) {
  std::string quoted(1, '\'');
  quoted.append(full_name).push_back('\'');
  if (message.substr(0, quoted.size()) != quoted) return false;
  std::string_view rest = message.substr(quoted.size());
  axioms->clear();
  if (rest.find("does not depend on any axioms") != std::string_view::npos) return true;
  constexpr std::string_view kDepends = " depends on axioms: [";
  if (rest.substr(0, kDepends.size()) != kDepends) return false;
  size_t close = rest.find(']');
  if (close == std::string_view::npos) return false;
  std::string_view list = rest.substr(kDepends.size(), close - kDepends.size());
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    if (comma == std::string_view::npos) comma = list.size();
    std::string name = lsp::NormalizeWhitespace(list.substr(start, comma - start));
    if (!name.empty()) axioms->push_back(name);
    start = comma + 1;
  }
  return true;
}

}  // namespace lr::agent
