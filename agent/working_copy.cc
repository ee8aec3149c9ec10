#include "agent/working_copy.h"

#include <algorithm>
#include <filesystem>

#include "base/file.h"

namespace lr::agent {
namespace fs = std::filesystem;
namespace {

std::vector<std::string> SplitLines(const std::string& text) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < text.size()) {
    size_t nl = text.find('\n', i);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(i, nl - i));
    i = nl + 1;
  }
  return out;
}

bool Inside(const std::string& path, const std::string& root) {
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

}  // namespace

Result<std::unique_ptr<WorkingCopy>> WorkingCopy::Open(const std::string& project_root) {
  std::error_code ec;
  fs::path root = fs::canonical(project_root, ec);
  if (ec || !fs::is_directory(root, ec))
    return InvalidArgument("project root '" + project_root + "' is not an existing directory");
  return std::make_unique<WorkingCopy>(root.string());
}

Result<std::string> WorkingCopy::Resolve(const std::string& path) const {
  if (path.empty()) return InvalidArgument("empty path (expected a file inside the project " + root_ + ")");
  if (path.find('\0') != std::string::npos) return InvalidArgument("path holds a NUL byte");
  fs::path p(path);
  if (p.is_relative()) p = fs::path(root_) / p;
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(p, ec);  // follows every symlink of the existing prefix
  if (ec) return InvalidArgument("path '" + path + "' cannot be resolved: " + ec.message());
  std::string out = resolved.lexically_normal().string();
  while (out.size() > 1 && out.back() == '/') out.pop_back();
  if (!Inside(out, root_))
    return InvalidArgument("path '" + path + "' resolves to " + out + ", outside the project root " + root_ +
                           " (refused)");
  return out;
}

std::string WorkingCopy::Relative(const std::string& absolute) const {
  if (absolute == root_) return ".";
  if (Inside(absolute, root_)) return absolute.substr(root_.size() + 1);
  return absolute;
}

Result<std::string> WorkingCopy::Read(const std::string& absolute) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = edits_.find(absolute);
    if (it != edits_.end()) return it->second;
  }
  std::error_code ec;
  if (fs::is_directory(absolute, ec)) return InvalidArgument(Relative(absolute) + " is a directory, not a file");
  if (!fs::exists(absolute, ec)) return NotFound("no file " + Relative(absolute) + " in the project");
  return ReadFile(absolute);
}

void WorkingCopy::Write(const std::string& absolute, std::string text) {
  std::lock_guard<std::mutex> lock(mu_);
  edits_[absolute] = std::move(text);
}

std::vector<std::string> WorkingCopy::Changed() const {
  std::map<std::string, std::string> edits;
  {
    std::lock_guard<std::mutex> lock(mu_);
    edits = edits_;
  }
  std::vector<std::string> out;
  for (const auto& [path, text] : edits) {
    auto disk = ReadFile(path);
    if (!disk.ok() || *disk != text) out.push_back(path);
  }
  return out;
}

std::string WorkingCopy::Diff() const {
  std::string out;
  for (const std::string& path : Changed()) {
    auto disk = ReadFile(path);
    auto now = Read(path);
    std::string rel = Relative(path);
    out += UnifiedDiff(disk.ok() ? *disk : "", now.ok() ? *now : "", disk.ok() ? "a/" + rel : "/dev/null",
                       "b/" + rel);
  }
  return out;
}

Status WorkingCopy::Apply() const {
  for (const std::string& path : Changed()) {
    LR_ASSIGN_OR_RETURN(std::string text, Read(path));
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
    LR_RETURN_IF_ERROR(WriteFileAtomic(path, text).WithContext("applying the edit of " + Relative(path)));
  }
  return Status::Ok();
}

void WorkingCopy::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  edits_.clear();
}

std::string UnifiedDiff(const std::string& a, const std::string& b, const std::string& a_name,
                        const std::string& b_name) {
  if (a == b) return "";
  std::vector<std::string> x = SplitLines(a), y = SplitLines(b);
  // Common prefix and suffix first, so that the quadratic table covers only the changed middle.
  size_t pre = 0;
  while (pre < x.size() && pre < y.size() && x[pre] == y[pre]) ++pre;
  size_t suf = 0;
  while (suf < x.size() - pre && suf < y.size() - pre && x[x.size() - 1 - suf] == y[y.size() - 1 - suf]) ++suf;
  const size_t n = x.size() - pre - suf, m = y.size() - pre - suf;
  // ops: ' ' keep, '-' delete from a, '+' insert from b, over the whole files.
  std::string ops(pre, ' ');
  if (n * m <= size_t{16} << 20) {
    std::vector<std::vector<int>> lcs(n + 1, std::vector<int>(m + 1, 0));
    for (size_t i = n; i-- > 0;)
      for (size_t j = m; j-- > 0;)
        lcs[i][j] = x[pre + i] == y[pre + j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    size_t i = 0, j = 0;
    while (i < n || j < m) {
      if (i < n && j < m && x[pre + i] == y[pre + j]) ops += ' ', ++i, ++j;
      else if (i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1])) ops += '-', ++i;
      else ops += '+', ++j;
    }
  } else {  // too large for the table: the middle as one replacement
    ops += std::string(n, '-') + std::string(m, '+');
  }
  ops += std::string(suf, ' ');

  std::string out = "--- " + a_name + "\n+++ " + b_name + "\n";
  constexpr size_t kContext = 3;
  size_t k = 0;
  while (k < ops.size()) {
    size_t change = ops.find_first_not_of(' ', k);
    if (change == std::string::npos) break;
    size_t start = change >= kContext ? change - kContext : 0;
    // Extend the hunk while the next change is within 2 * context lines of the last one.
    size_t end = change;
    for (;;) {
      while (end < ops.size() && ops[end] != ' ') ++end;
      size_t next = ops.find_first_not_of(' ', end);
      if (next == std::string::npos || next - end > 2 * kContext) break;
      end = next;
    }
    end = std::min(ops.size(), end + kContext);
    size_t ai = 0, bi = 0;  // line numbers (0-based) at `start`
    for (size_t t = 0; t < start; ++t) {
      if (ops[t] != '+') ++ai;
      if (ops[t] != '-') ++bi;
    }
    size_t a_len = 0, b_len = 0;
    std::string body;
    size_t ax = ai, by = bi;
    for (size_t t = start; t < end; ++t) {
      if (ops[t] == ' ') body += " " + x[ax++] + "\n", ++by, ++a_len, ++b_len;
      else if (ops[t] == '-') body += "-" + x[ax++] + "\n", ++a_len;
      else body += "+" + y[by++] + "\n", ++b_len;
    }
    out += "@@ -" + std::to_string(a_len ? ai + 1 : ai) + "," + std::to_string(a_len) + " +" +
           std::to_string(b_len ? bi + 1 : bi) + "," + std::to_string(b_len) + " @@\n" + body;
    k = end;
  }
  return out;
}

}  // namespace lr::agent
