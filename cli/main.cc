#include <cstdio>
#include <string>

#include "cli/command.h"

#ifndef LEANROTOR_VERSION
#define LEANROTOR_VERSION "unknown"
#endif

int main(int argc, char** argv) {
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
