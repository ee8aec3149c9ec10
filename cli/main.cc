#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/command.h"

#ifndef LEANROTOR_VERSION
#define LEANROTOR_VERSION "unknown"
#endif

namespace {

// OpenMP's idle threads (libgomp) spin GOMP_SPINCOUNT times before they sleep, 300000 by default (milliseconds): on
// a machine where another process holds a core, a thread spinning at one of the ~300 barriers of a decode step waits
// for a thread that is not running, up to a scheduler time slice per barrier, while
// sleeping at once (OMP_WAIT_POLICY=passive) pays a wake-up at every barrier on an idle machine. kSpinCount spins
// for microseconds, about as long as a barrier of a balanced step waits, then sleeps (measured: docs/RESULTS.md,
// issue 23).
// libgomp reads its settings when it is loaded, so a process whose user set neither variable sets this one and runs
// itself again.
constexpr const char* kSpinCount = "300";

void SetWaitPolicy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (setenv("GOMP_SPINCOUNT", kSpinCount, 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("GOMP_SPINCOUNT");  // no exec: run on the library's defaults
}

}  // namespace

int main(int argc, char** argv) {
  SetWaitPolicy(argv);
  CLI::App app{"leanrotor: prove Lean 4 theorems with a language model running in-process on a compressed KV cache"};
  app.set_version_flag("-V,--version", std::string("leanrotor ") + LEANROTOR_VERSION);
  app.require_subcommand(0, 1);

  lr::cli::CommandSet commands;

  lr::cli::AddTokenizeCommand(app, commands);
  lr::cli::AddKvEvalCommand(app, commands);
  lr::cli::AddGenerateCommand(app, commands);
  lr::cli::AddPerplexityCommand(app, commands);
  lr::cli::AddBenchCommand(app, commands);
  lr::cli::AddTuiCommand(app, commands);
  lr::cli::AddProveCommand(app, commands);
  lr::cli::AddBatchCommand(app, commands);
  lr::cli::AddServeCommand(app, commands);
  lr::cli::AddCheckCommand(app, commands);
  lr::cli::AddMcpCommand(app, commands);

  CLI11_PARSE(app, argc, argv);
  int rc = commands.RunSelected();
  if (rc < 0) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  }
  return rc;
}
