// How subcommands plug into the `leanrotor` executable.
//
// Each subcommand lives in its own cli/cmd_*.cc and exposes one Add*Command(CLI::App&, CommandSet&) that declares its
// flags on a CLI11 subcommand and registers the function that runs it. main() parses, then runs the one selected.
// A command's function returns the process exit code; errors are printed by the command itself, naming what is wrong.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <utility>
#include <vector>

namespace lr::cli {

class CommandSet {
 public:
  void Add(CLI::App* sub, std::function<int()> run) { commands_.push_back({sub, std::move(run)}); }

  // Runs the parsed subcommand; returns its exit code, or -1 when none was given.
  int RunSelected() const {
    for (const auto& c : commands_)
      if (c.sub->parsed()) return c.run();
    return -1;
  }

 private:
  struct Entry {
    CLI::App* sub;
    std::function<int()> run;
  };
  std::vector<Entry> commands_;
};

// Subcommands, in the order `leanrotor --help` lists them. Add one line here and one in main.cc per command.
void AddTokenizeCommand(CLI::App& app, CommandSet& commands);
void AddKvEvalCommand(CLI::App& app, CommandSet& commands);
void AddGenerateCommand(CLI::App& app, CommandSet& commands);
void AddPerplexityCommand(CLI::App& app, CommandSet& commands);
void AddBenchCommand(CLI::App& app, CommandSet& commands);
void AddTuiCommand(CLI::App& app, CommandSet& commands);
void AddProveCommand(CLI::App& app, CommandSet& commands);
void AddBatchCommand(CLI::App& app, CommandSet& commands);
void AddServeCommand(CLI::App& app, CommandSet& commands);
void AddCheckCommand(CLI::App& app, CommandSet& commands);
void AddMcpCommand(CLI::App& app, CommandSet& commands);

}  // namespace lr::cli
