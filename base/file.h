// Files: whole-file reads and atomic writes.
//
// Nothing a user produced is lost: every result file leanrotor writes goes through WriteFileAtomic (write a
// temporary beside the target, fsync, rename) or AppendLine (one complete line per write, fsync'd), so a crash or a
// Ctrl-C leaves either the old file or the new one, and never half a JSONL line.
#pragma once

#include <string>
#include <string_view>

#include "base/status.h"

namespace lr {

Result<std::string> ReadFile(const std::string& path);

// Replaces `path` with `contents` atomically (same directory temp file + fsync + rename).
Status WriteFileAtomic(const std::string& path, std::string_view contents);

// Appends `line` plus '\n' to `path` (created if missing) with one write(2) on an O_APPEND descriptor, then fsync.
// `line` must not contain '\n'.
Status AppendLine(const std::string& path, std::string_view line);

}  // namespace lr
