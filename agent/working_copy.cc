#include "agent/working_copy.h"

#include <filesystem>

#include "base/file.h"

namespace lr::agent {
namespace fs = std::filesystem;
namespace {

bool Inside(const std::string& path, const std::string& root) {
  return path == root ||
         (path.size() > root.size() && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/');
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

void WorkingCopy::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  edits_.clear();
}

}  // namespace lr::agent
