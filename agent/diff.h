// Line diffs: the longest common subsequence of lines, as a list of kept/removed/added lines (the terminal UI's
// diff view) and as a unified diff with context (agent results, batch result lines).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lr::agent {

// One line of a line diff: ' ' in both, '-' only in the old text, '+' only in the new one.
struct DiffLine {
  char op;
  std::string text;
};

// Line diff of `before` and `after`: common prefix and suffix kept, the middle by longest common subsequence (removed
// lines before added ones at each change); a middle too large for the quadratic table (over 16 M line pairs) is one
// replacement. A trailing newline does not make an empty last line.
std::vector<DiffLine> DiffLines(std::string_view before, std::string_view after);

// A unified diff of two texts with 3 lines of context, under the names `a_name` and `b_name`; empty when equal.
std::string UnifiedDiff(const std::string& a, const std::string& b, const std::string& a_name,
                        const std::string& b_name);

}  // namespace lr::agent
