// The files of one project as an agent sees and changes them: edits stay in memory until they are applied.
//
// Every path an agent names is resolved by Resolve(): relative paths are taken from the project root, symlinks are
// followed, and the result must lie inside the (canonical) root; `..` that climbs out, an absolute path elsewhere or a
// symlink that points out is kInvalidArgument, naming the path. Reads see the agent's edits; nothing here writes to
// disk: what reaches the user's files is decided by the caller (the agent loop splices only guard-accepted proofs
// into the original file, and the command writes that atomically).
//
// Thread-safe: several tool calls may read and edit at once; each Write replaces a whole file's text.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/status.h"

namespace lr::agent {

class WorkingCopy {
 public:
  // kInvalidArgument when `project_root` is not an existing directory.
  static Result<std::unique_ptr<WorkingCopy>> Open(const std::string& project_root);
  explicit WorkingCopy(std::string canonical_root) : root_(std::move(canonical_root)) {}

  const std::string& root() const { return root_; }

  // The canonical absolute path of `path` inside the root (the file need not exist).
  Result<std::string> Resolve(const std::string& path) const;
  // `absolute` relative to the root ("Demo/Basic.lean"), for messages and results.
  std::string Relative(const std::string& absolute) const;

  // The file's text with the agent's edits; kNotFound when it exists in neither.
  Result<std::string> Read(const std::string& absolute) const;
  // Replaces the file's text in the working copy (the file need not exist on disk).
  void Write(const std::string& absolute, std::string text);

  // Files whose working text differs from the disk, sorted.
  std::vector<std::string> Changed() const;
  // Forgets every edit.
  void Reset();

 private:
  std::string root_;
  mutable std::mutex mu_;
  std::map<std::string, std::string> edits_;  // absolute path -> text; guarded by mu_
};

}  // namespace lr::agent
