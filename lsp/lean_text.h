// Reading Lean 4 source text without a Lean parser: where the theorems are, where their proofs start and end.
//
// The agent needs this before it can talk to Lean: to find the `sorry`s of a file, to splice a candidate proof in
// place of one, to compare a candidate's statement with the original, and to scan untrusted model output for refused
// constructs. All scans run on a masked copy of the text (comments and string literals blanked out, byte offsets and
// newlines kept), so that `-- no sorry here` or "axiom" inside a string never counts.
//
// This is a lexical approximation of Lean's grammar, good for the declarations prover data sets and projects write
// (`theorem`/`lemma`/`example` with modifiers and attributes, inside namespaces and sections). Lean itself remains the
// judge of every proof: nothing here decides acceptance on its own except refusing text.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace lr::lsp {

// `text` with comments (`--`, nested `/- -/`, doc comments) and the contents of string and char literals replaced by
// spaces; newlines are kept, so byte offsets and line numbers are the same as in `text`.
std::string MaskCommentsAndStrings(std::string_view text);

// True if `token` occurs in `masked` as a whole token: the characters around it are not identifier characters
// (letters, digits, `_`, `'`, `!`, `?`, `.`, any non-ASCII byte). `token` may start with `#`.
bool ContainsToken(std::string_view masked, std::string_view token);
// The byte offsets of those occurrences, in order.
std::vector<size_t> TokenOffsets(std::string_view masked, std::string_view token);

// Runs of whitespace collapsed to one space, ends trimmed.
std::string NormalizeWhitespace(std::string_view text);

// 0-based line of byte `offset`.
int LineOfOffset(std::string_view text, size_t offset);

// One `theorem`, `lemma`, `example` or `def` in a file (prover data sets hold a few `def`s whose value is the task,
// e.g. ProofNet's `def exercise_2_1_21 ... : CommGroup G :=`).
struct Declaration {
  std::string keyword;     // "theorem", "lemma", "example" or "def"
  std::string name;        // as written after the keyword; "example" for examples
  std::string full_name;   // with the enclosing namespaces ("Foo.Bar.name"), what `#print axioms` needs
  size_t begin = 0;        // first byte of the declaration (its attributes/modifiers, if any)
  size_t header_end = 0;   // one past the `:=` that ends the statement
  size_t proof_end = 0;    // one past the last non-blank, non-comment byte of the proof
  bool has_sorry = false;  // the proof contains the token `sorry` (outside comments)

  // The statement: from `begin` through `:=`.
  std::string_view Header(std::string_view text) const { return text.substr(begin, header_end - begin); }
  // The proof: everything after `:=` up to `proof_end` (leading whitespace included).
  std::string_view Proof(std::string_view text) const { return text.substr(header_end, proof_end - header_end); }
};

// The declarations of `text` in order. Declarations without a top-level `:=` (equation-style) are skipped.
std::vector<Declaration> FindDeclarations(std::string_view text);

// True if the normalised headers are equal: the statement, attributes and name did not change.
bool SameStatement(std::string_view header_a, std::string_view header_b);

}  // namespace lr::lsp
