// The Lean server flags every command that runs Lean takes (check, tui, prove, batch), and the pool options they make.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "base/status.h"
#include "lsp/server_pool.h"

namespace lr::cli {

struct LeanFlags {
  std::string command;      // --lean-cmd, split at spaces; empty: `lake serve` in a project, `lean --server` otherwise
  double memory_gib = 0;    // --lean-memory: RLIMIT_AS of each Lean process; 0: none
  int64_t cpu_seconds = 0;  // --lean-cpu: RLIMIT_CPU of each Lean process; 0: none
};

// --lean-cmd (hidden alias --lean-command), --lean-memory, --lean-cpu.
void AddLeanFlags(CLI::App* sub, LeanFlags* f);

// OK when --lean-cmd names a program that can be run, or when Lean's default command is found for every project
// root (empty: lone files); kNotFound otherwise, with how to install Lean (elan).
Status CheckLeanAvailable(const LeanFlags& f, const std::vector<std::string>& project_roots);

lsp::PoolOptions MakePoolOptions(const LeanFlags& f, size_t max_servers);

// The nearest directory at or above `dir` holding a lakefile (lakefile.lean or lakefile.toml), or "".
std::string FindLakeRoot(std::filesystem::path dir);

}  // namespace lr::cli
