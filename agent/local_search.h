// lean_local_search: declarations by name in Lean source trees, with PCRE2 over the files.
//
// A declaration is a line that starts (after attributes such as `@[simp]` and modifiers such as `private`) with a
// declaration keyword (theorem, lemma, def, abbrev, instance, structure, class, inductive, axiom, opaque) followed
// by a name. A query matches a name that starts with it, or one of whose dot-separated components starts with it
// (`add_comm` finds `Nat.add_comm`). Results rank exact names first, then prefixes, then the rest, each in file
// order. The roots are the project (its `.lake/packages` dependencies included) and the toolchain's sources.
//
// The search reads the files on every call (the page cache keeps them warm) and skips, with a memchr-class scan,
// every file that does not contain the query at all, so only candidate files go through the regex (JIT-compiled).
// bench/tools_bench measures it against ripgrep on the same trees (docs/RESULTS.md).
#pragma once

#include <string>
#include <vector>

#include "base/status.h"

namespace lr::agent {

struct DeclarationHit {
  std::string name;  // as written in the source (namespaces are not prefixed)
  std::string kind;  // the keyword: "theorem", "def", ...
  std::string file;  // absolute path
  int line = 0;      // 1-based
};

// Searches the .lean files under each root (recursively; `.git` skipped; a missing root is skipped). Errors:
// kInvalidArgument for an empty query or one with whitespace.
Result<std::vector<DeclarationHit>> SearchDeclarations(const std::vector<std::string>& roots, const std::string& query,
                                                       size_t limit);

}  // namespace lr::agent
