// Flags and setup shared by `leanrotor prove` and `leanrotor batch`: the model (-m local GGUF or --remote URL), the
// prover's search (k, turns, budgets, prompt style), the guard, and the Lean server pool.
#pragma once

#include <CLI/CLI.hpp>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "agent/agent_loop.h"
#include "agent/prover.h"
#include "cli/model_flags.h"
#include "lm/language_model.h"
#include "lsp/server_pool.h"

namespace lr::cli {

struct ProverFlags {
  LocalModelFlags local;     // -m and the in-process model's flags
  std::string remote;        // --remote: OpenAI-compatible base URL
  std::string remote_model;  // --model-id: the model id for --remote
  std::string style = "chat";
  int k = 4;
  int turns = 2;
  float temperature = 1.0f;
  float top_p = 0.95f;
  int max_tokens = 1024;  // per reply
  uint64_t seed = 0;
  long token_budget = 0;
  double time_budget = 0;
  int check_budget = 0;
  int max_tool_calls = 200;  // --style agent
  double check_timeout = 300;
  bool allow_constructs = false;
  int lean_servers = 2;
  std::string lean_command;  // overrides `lake serve` / `lean --server` (space-separated)
  double lean_memory_gib = 0;   // RLIMIT_AS of each Lean process; 0: none
  int64_t lean_cpu_seconds = 0;  // RLIMIT_CPU of each Lean process; 0: none
};

void AddProverFlags(CLI::App* sub, ProverFlags* flags);
// The Lean server pool's flags alone (--lean-servers, --lean-command, --lean-memory, --lean-cpu), for commands
// without a model (`leanrotor mcp`).
void AddLeanFlags(CLI::App* sub, ProverFlags* flags);

Result<agent::ProverOptions> MakeProverOptions(const ProverFlags& flags);
// The agent loop's options (--style agent): the same budgets and guard, plus --max-tool-calls.
agent::AgentOptions MakeAgentOptions(const ProverFlags& flags, const agent::ProverOptions& prover);

// The local model (LocalModel over -m or the default GGUF) or the remote one (RemoteModel over --remote).
Result<std::unique_ptr<LanguageModel>> OpenModel(const ProverFlags& flags);

// The server command for each project root (empty: lone files). kNotFound, with how to install Lean (elan), when
// the flags name no command and Lean is not on PATH.
Status CheckLeanAvailable(const ProverFlags& flags, const std::vector<std::string>& project_roots);

lsp::PoolOptions MakePoolOptions(const ProverFlags& flags);

// The nearest directory at or above `dir` holding a lakefile (lakefile.lean or lakefile.toml), or "".
std::string FindLakeRoot(std::filesystem::path dir);

// SIGINT sets the returned flag (the run stops cleanly, keeping what it finished); a second SIGINT exits at once.
// Call before the first Lean server starts, so that the pool's handler defers to this one.
const std::atomic<bool>* InstallInterruptFlag();

}  // namespace lr::cli
