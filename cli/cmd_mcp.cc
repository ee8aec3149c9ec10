// `leanrotor mcp [--project DIR]`: the agent's Lean and repository tools as a Model Context Protocol server on
// stdin/stdout (agent/mcp_server.h), for Claude Code, Mistral Vibe, Cursor or any MCP client. Logs go to stderr;
// stdout carries only protocol messages.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include "agent/mcp_server.h"
#include "agent/tools.h"
#include "agent/working_copy.h"
#include "cli/command.h"
#include "cli/lean_flags.h"

#ifndef LEANROTOR_VERSION
#define LEANROTOR_VERSION "unknown"
#endif

namespace lr::cli {
namespace {

struct McpFlags {
  std::string project;
  int workers = 16;
  double check_timeout = 300;
  std::string build_command = "lake build";
  std::vector<std::string> search_roots;
  int lean_servers = 2;
  LeanFlags lean;
};

int RunMcp(const McpFlags& f) {
  std::string root = f.project.empty() ? FindLakeRoot(std::filesystem::current_path()) : f.project;
  if (root.empty()) root = std::filesystem::current_path().string();
  auto copy = agent::WorkingCopy::Open(root);
  if (!copy.ok()) {
    std::fprintf(stderr, "leanrotor mcp: --project: %s\n", copy.status().message().c_str());
    return 2;
  }
  if (Status s = CheckLeanAvailable(f.lean, {(*copy)->root()}); !s.ok()) {
    std::fprintf(stderr, "leanrotor mcp: %s\n", s.message().c_str());
    return 2;
  }
  agent::ToolsOptions options;
  options.lean_timeout_seconds = f.check_timeout;
  std::istringstream words(f.build_command);
  options.build_command.clear();
  for (std::string w; words >> w;) options.build_command.push_back(w);
  if (options.build_command.empty()) {
    std::fprintf(stderr, "leanrotor mcp: --build-command is empty\n");
    return 2;
  }
  options.search_roots = f.search_roots;
  lsp::ServerPool pool(MakePoolOptions(f.lean, static_cast<size_t>(f.lean_servers)));
  agent::ToolBox tools(pool, **copy, options);
  agent::McpOptions mcp;
  mcp.workers = f.workers;
  mcp.server_version = LEANROTOR_VERSION;
  std::fprintf(stderr, "leanrotor mcp: serving %zu tools for %s on stdio\n", tools.Definitions().size(),
               (*copy)->root().c_str());
  Status s = agent::ServeMcp(tools, mcp, STDIN_FILENO, STDOUT_FILENO);
  if (!s.ok()) {
    std::fprintf(stderr, "leanrotor mcp: %s\n", s.ToString().c_str());
    return 2;
  }
  return 0;
}

}  // namespace

void AddMcpCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<McpFlags>();
  CLI::App* sub =
      app.add_subcommand("mcp", "serve the Lean and repository tools over the Model Context Protocol (stdio)");
  sub->add_option(
      "--project", flags->project,
      "the Lean project every path is resolved in (default: the Lake project around the current directory)");
  sub->add_option("--workers", flags->workers, "tool calls run at once")->check(CLI::Range(1, 256));
  sub->add_option("--check-timeout", flags->check_timeout, "seconds allowed for one Lean check");
  sub->add_option("--build-command", flags->build_command, "what lean_build runs in the project root")
      ->capture_default_str();
  sub->add_option("--search-root", flags->search_roots,
                  "extra source tree for lean_local_search (default: the toolchain's sources)");
  sub->add_option("--lean-servers", flags->lean_servers, "Lean server processes at most")->check(CLI::Range(1, 64));
  AddLeanFlags(sub, &flags->lean);
  sub->footer(
      "Edits made with edit_file/write_file stay in the server's working copy: Lean sees them, the files on "
      "disk do not change.");
  commands.Add(sub, [flags] { return RunMcp(*flags); });
}

}  // namespace lr::cli
