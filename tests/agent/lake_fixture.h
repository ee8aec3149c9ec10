// A fresh copy of tests/fixtures/lake_sorries (a Lake project with three sorries) for one test, so that tests may
// change it and run at once.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace lr::agent::testing {

// Copies the fixture to TempDir()/lr_<name>_<pid>/project and returns that project's path; the folder above it is
// the test's own (for files outside the project).
inline std::string CopyLakeFixture(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(::testing::TempDir()) / ("lr_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "project");
  fs::copy(fs::path(LR_SOURCE_DIR) / "tests/fixtures/lake_sorries", dir / "project", fs::copy_options::recursive);
  return (dir / "project").string();
}

}  // namespace lr::agent::testing
