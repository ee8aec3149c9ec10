#include "agent/diff.h"

#include <algorithm>

namespace lr::agent {
namespace {

std::vector<std::string> SplitLines(std::string_view text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t nl = text.find('\n', i);
    if (nl == std::string_view::npos) nl = text.size();
    out.emplace_back(text.substr(i, nl - i));
    i = nl + 1;
  }
  return out;
}

}  // namespace

std::vector<DiffLine> DiffLines(std::string_view before, std::string_view after) {
  std::vector<std::string> x = SplitLines(before), y = SplitLines(after);
  // Common prefix and suffix first, so that the quadratic table covers only the changed middle.
  size_t pre = 0;
  while (pre < x.size() && pre < y.size() && x[pre] == y[pre]) ++pre;
  size_t suf = 0;
  while (suf < x.size() - pre && suf < y.size() - pre && x[x.size() - 1 - suf] == y[y.size() - 1 - suf]) ++suf;
  const size_t n = x.size() - pre - suf, m = y.size() - pre - suf;
  std::vector<DiffLine> out;
  for (size_t k = 0; k < pre; ++k) out.push_back({' ', x[k]});
  if (n * m <= size_t{16} << 20) {
    // lcs[i][j]: length of the longest common subsequence of the middles from i and j on.
    std::vector<std::vector<int>> lcs(n + 1, std::vector<int>(m + 1, 0));
    for (size_t i = n; i-- > 0;)
      for (size_t j = m; j-- > 0;)
        lcs[i][j] = x[pre + i] == y[pre + j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    size_t i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[pre + i] == y[pre + j])
        out.push_back({' ', x[pre + i]}), ++i, ++j;
      else if (i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]))
        out.push_back({'-', x[pre + i++]});
      else
        out.push_back({'+', y[pre + j++]});
    }
  } else {
    for (size_t k = 0; k < n; ++k) out.push_back({'-', x[pre + k]});
    for (size_t k = 0; k < m; ++k) out.push_back({'+', y[pre + k]});
  }
  for (size_t k = x.size() - suf; k < x.size(); ++k) out.push_back({' ', x[k]});
  return out;
}

std::string UnifiedDiff(const std::string& a, const std::string& b, const std::string& a_name,
                        const std::string& b_name) {
  if (a == b) return "";
  const std::vector<DiffLine> lines = DiffLines(a, b);
  std::string out = "--- " + a_name + "\n+++ " + b_name + "\n";
  constexpr size_t kContext = 3;
  auto is_change = [&](size_t t) { return lines[t].op != ' '; };
  size_t k = 0;
  while (k < lines.size()) {
    size_t change = k;
    while (change < lines.size() && !is_change(change)) ++change;
    if (change == lines.size()) break;
    size_t start = std::max(k, change >= kContext ? change - kContext : 0);
    // Extend the hunk while the next change is within 2 * context lines of the last one.
    size_t end = change;
    for (;;) {
      while (end < lines.size() && is_change(end)) ++end;
      size_t next = end;
      while (next < lines.size() && !is_change(next)) ++next;
      if (next == lines.size() || next - end > 2 * kContext) break;
      end = next;
    }
    end = std::min(lines.size(), end + kContext);
    size_t ai = 0, bi = 0;  // lines of a and b before `start`
    for (size_t t = 0; t < start; ++t) {
      if (lines[t].op != '+') ++ai;
      if (lines[t].op != '-') ++bi;
    }
    size_t a_len = 0, b_len = 0;
    std::string body;
    for (size_t t = start; t < end; ++t) {
      body += std::string(1, lines[t].op) + lines[t].text + "\n";
      if (lines[t].op != '+') ++a_len;
      if (lines[t].op != '-') ++b_len;
    }
    out += "@@ -" + std::to_string(a_len ? ai + 1 : ai) + "," + std::to_string(a_len) + " +" +
           std::to_string(b_len ? bi + 1 : bi) + "," + std::to_string(b_len) + " @@\n" + body;
    k = end;
  }
  return out;
}

}  // namespace lr::agent
