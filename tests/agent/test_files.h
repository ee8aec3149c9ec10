// Files for the agent's tests: a fresh scratch folder per test, and a written file's lines.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "base/file.h"

namespace lr::agent::testing {

// An empty folder under the system's temp folder, named after the test binary's `prefix`, `name` and this process.
inline std::string TempDir(const std::string& prefix, const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / (prefix + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// The lines of a text file (empty if it cannot be read); a last line without its newline fails the test.
inline std::vector<std::string> FileLines(const std::string& path) {
  Result<std::string> text = ReadFile(path);
  std::vector<std::string> lines;
  if (!text.ok()) return lines;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    EXPECT_NE(end, std::string::npos) << "a line without its newline in " << path;
    if (end == std::string::npos) end = text->size();
    lines.push_back(text->substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

}  // namespace lr::agent::testing
