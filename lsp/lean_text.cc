#include "lsp/lean_text.h"

#include <algorithm>
#include <cctype>

namespace lr::lsp {
namespace {

bool IsIdentByte(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '_' || c == '\'' || c == '!' || c == '?' || c == '.';
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Blanks [a, b) of `out`, keeping newlines.
void Blank(std::string& out, size_t a, size_t b) {
  for (size_t k = a; k < b && k < out.size(); ++k)
    if (out[k] != '\n') out[k] = ' ';
}

// Length of a char literal starting at `i` ('a', '\n', 'α'), or 0 if there is none.
size_t CharLiteralLength(std::string_view t, size_t i) {
  if (i + 2 >= t.size()) return 0;
  if (t[i + 1] == '\\') {
    size_t close = t.find('\'', i + 2);
    return (close != std::string_view::npos && close - i <= 10) ? close - i + 1 : 0;
  }
  size_t len = 1;  // bytes of the UTF-8 character after the quote
  unsigned char lead = static_cast<unsigned char>(t[i + 1]);
  if (lead >= 0xF0)
    len = 4;
  else if (lead >= 0xE0)
    len = 3;
  else if (lead >= 0xC0)
    len = 2;
  size_t close = i + 1 + len;
  return (close < t.size() && t[close] == '\'') ? close - i + 1 : 0;
}

// The word (identifier-like run) starting at `i`.
std::string_view WordAt(std::string_view t, size_t i) {
  size_t j = i;
  while (j < t.size() && (IsIdentByte(t[j]) || static_cast<unsigned char>(t[j]) >= 0x80)) ++j;
  return t.substr(i, j - i);
}

size_t SkipSpaces(std::string_view t, size_t i) {
  while (i < t.size() && IsSpace(t[i])) ++i;
  return i;
}

// One past the `]` matching the `[` at `i` (ASCII brackets only), or t.size().
size_t SkipBracket(std::string_view t, size_t i) {
  int depth = 0;
  for (; i < t.size(); ++i) {
    if (t[i] == '[') ++depth;
    if (t[i] == ']' && --depth == 0) return i + 1;
  }
  return t.size();
}

bool IsModifier(std::string_view w) {
  return w == "private" || w == "protected" || w == "noncomputable" || w == "nonrec" || w == "partial" ||
         w == "unsafe" || w == "scoped" || w == "local";
}

bool IsDeclarationKeyword(std::string_view w) { return w == "theorem" || w == "lemma" || w == "example" || w == "def"; }

bool IsCommandKeyword(std::string_view w) {
  static constexpr std::string_view kCommands[] = {
      "theorem",    "lemma",       "def",       "example",  "instance",   "axiom",  "abbrev",        "structure",
      "inductive",  "class",       "namespace", "section",  "end",        "open",   "variable",      "universe",
      "set_option", "attribute",   "notation",  "infix",    "infixl",     "infixr", "prefix",        "postfix",
      "macro",      "macro_rules", "syntax",    "elab",     "elab_rules", "import", "noncomputable", "private",
      "protected",  "opaque",      "mutual",    "deriving", "local",      "scoped", "initialize",    "export",
      "omit",       "include",     "unseal",    "seal"};
  return std::find(std::begin(kCommands), std::end(kCommands), w) != std::end(kCommands);
}

// If a theorem/lemma/example/def declaration starts at `i` (after its line's indentation), returns the offset of its
// keyword and sets `keyword`; otherwise npos.
size_t DeclarationKeyword(std::string_view m, size_t i, std::string_view* keyword) {
  while (i < m.size()) {
    if (m.compare(i, 2, "@[") == 0) {
      i = SkipSpaces(m, SkipBracket(m, i + 1));
      continue;
    }
    std::string_view w = WordAt(m, i);
    if (IsModifier(w)) {
      i = SkipSpaces(m, i + w.size());
      continue;
    }
    if (IsDeclarationKeyword(w)) {
      *keyword = w;
      return i;
    }
    return std::string_view::npos;
  }
  return std::string_view::npos;
}

// True if the line starting at `line_start` begins a new top-level command (which ends the previous proof).
bool StartsCommand(std::string_view m, size_t line_start) {
  if (line_start >= m.size()) return false;
  std::string_view kw;
  size_t first = line_start;
  while (first < m.size() && (m[first] == ' ' || m[first] == '\t')) ++first;
  if (first < m.size() && DeclarationKeyword(m, first, &kw) != std::string_view::npos) return true;
  if (IsSpace(m[line_start])) return false;
  if (m[line_start] == '#' || m.compare(line_start, 2, "@[") == 0) return true;
  return IsCommandKeyword(WordAt(m, line_start));
}

std::string JoinNamespaces(const std::vector<std::string>& stack) {
  std::string out;
  for (const std::string& s : stack) {
    if (s.empty()) continue;
    if (!out.empty()) out += '.';
    out += s;
  }
  return out;
}

}  // namespace

std::string MaskCommentsAndStrings(std::string_view t) {
  std::string out(t);
  size_t i = 0;
  const size_t n = t.size();
  while (i < n) {
    char c = t[i];
    if (c == '-' && i + 1 < n && t[i + 1] == '-') {
      size_t j = t.find('\n', i);
      if (j == std::string_view::npos) j = n;
      Blank(out, i, j);
      i = j;
    } else if (c == '/' && i + 1 < n && t[i + 1] == '-') {
      int depth = 1;
      size_t j = i + 2;
      while (j < n && depth > 0) {
        if (t[j] == '/' && j + 1 < n && t[j + 1] == '-') {
          ++depth;
          j += 2;
        } else if (t[j] == '-' && j + 1 < n && t[j + 1] == '/') {
          --depth;
          j += 2;
        } else {
          ++j;
        }
      }
      Blank(out, i, j);
      i = j;
    } else if (c == '"') {
      size_t j = i + 1;
      while (j < n && t[j] != '"') j += (t[j] == '\\') ? 2 : 1;
      j = std::min(j + 1, n);
      Blank(out, i, j);
      i = j;
    } else if (c == '\'' && (i == 0 || !IsIdentByte(t[i - 1])) && i + 2 < n) {
      size_t len = CharLiteralLength(t, i);
      Blank(out, i, i + len);
      i += std::max<size_t>(len, 1);
    } else {
      ++i;
    }
  }
  return out;
}

std::vector<size_t> TokenOffsets(std::string_view masked, std::string_view token) {
  std::vector<size_t> out;
  for (size_t pos = masked.find(token); pos != std::string_view::npos; pos = masked.find(token, pos + 1)) {
    const bool left_ok = pos == 0 || !IsIdentByte(masked[pos - 1]);
    const size_t end = pos + token.size();
    const bool right_ok = end >= masked.size() || !IsIdentByte(masked[end]);
    if (left_ok && right_ok) out.push_back(pos);
  }
  return out;
}

bool ContainsToken(std::string_view masked, std::string_view token) { return !TokenOffsets(masked, token).empty(); }

std::string NormalizeWhitespace(std::string_view text) {
  std::string out;
  bool pending_space = false;
  for (char c : text) {
    if (IsSpace(c)) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += c;
  }
  return out;
}

int LineOfOffset(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  return static_cast<int>(std::count(text.begin(), text.begin() + offset, '\n'));
}

std::vector<Declaration> FindDeclarations(std::string_view text) {
  const std::string masked_storage = MaskCommentsAndStrings(text);
  const std::string_view m = masked_storage;
  std::vector<Declaration> out;
  std::vector<std::string> namespaces;  // "" for a section

  size_t line = 0;
  while (line < m.size()) {
    size_t next_line = m.find('\n', line);
    next_line = (next_line == std::string_view::npos) ? m.size() : next_line + 1;

    std::string_view first_word = WordAt(m, line);
    if (first_word == "namespace") {
      size_t at = SkipSpaces(m, line + first_word.size());
      namespaces.emplace_back(WordAt(m, at));
    } else if (first_word == "section" || first_word == "noncomputable") {
      if (first_word == "section" || WordAt(m, SkipSpaces(m, line + first_word.size())) == "section")
        namespaces.emplace_back();
    } else if (first_word == "end") {
      if (!namespaces.empty()) namespaces.pop_back();
    }

    size_t indent_end = line;
    while (indent_end < m.size() && (m[indent_end] == ' ' || m[indent_end] == '\t')) ++indent_end;
    std::string_view keyword;
    size_t kw = DeclarationKeyword(m, indent_end, &keyword);
    if (kw == std::string_view::npos) {
      line = next_line;
      continue;
    }

    Declaration d;
    d.keyword = std::string(keyword);
    d.begin = indent_end;
    size_t i = SkipSpaces(m, kw + keyword.size());
    if (keyword == "example") {
      d.name = "example";
    } else {
      size_t j = i;
      while (j < m.size() && !IsSpace(m[j]) && m[j] != '(' && m[j] != '{' && m[j] != '[' && m[j] != ':') ++j;
      d.name = std::string(text.substr(i, j - i));
      i = j;
    }
    const std::string prefix = JoinNamespaces(namespaces);
    if (d.name.rfind("_root_.", 0) == 0)
      d.full_name = d.name.substr(7);
    else
      d.full_name = prefix.empty() ? d.name : prefix + "." + d.name;

    // The statement ends at the first `:=` outside brackets; a new command first means there is none.
    int depth = 0;
    size_t assign = std::string_view::npos;
    for (size_t k = i; k < m.size(); ++k) {
      char c = m[k];
      if (c == '\n' && StartsCommand(m, k + 1)) break;
      if (c == '(' || c == '[' || c == '{') ++depth;
      if ((c == ')' || c == ']' || c == '}') && depth > 0) --depth;
      if (depth == 0 && c == ':' && k + 1 < m.size() && m[k + 1] == '=') {
        assign = k;
        break;
      }
    }
    if (assign == std::string_view::npos) {
      line = next_line;
      continue;
    }
    d.header_end = assign + 2;

    size_t stop = m.size();
    for (size_t k = m.find('\n', d.header_end); k != std::string_view::npos; k = m.find('\n', k + 1)) {
      if (StartsCommand(m, k + 1)) {
        stop = k + 1;
        break;
      }
    }
    size_t end = stop;
    while (end > d.header_end && IsSpace(m[end - 1])) --end;
    d.proof_end = end;
    d.has_sorry = ContainsToken(m.substr(d.header_end, end - d.header_end), "sorry");
    out.push_back(std::move(d));

    line = stop;  // the line that starts the next command, or the end of the text
  }
  return out;
}

bool SameStatement(std::string_view header_a, std::string_view header_b) {
  return NormalizeWhitespace(MaskCommentsAndStrings(header_a)) == NormalizeWhitespace(MaskCommentsAndStrings(header_b));
}

}  // namespace lr::lsp
