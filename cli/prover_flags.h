// Flags and setup shared by `leanrotor prove` and `leanrotor batch`: the model (-m local GGUF or --remote URL), the
// prover's search (k, turns, budgets, prompt style), the guard, and the Lean server pool.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

#include "agent/agent_loop.h"
#include "agent/prover.h"
#include "cli/lean_flags.h"
#include "cli/model_flags.h"

namespace lr::cli {

struct ProverFlags {
  ModelChoiceFlags model;
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
  LeanFlags lean;
};

void AddProverFlags(CLI::App* sub, ProverFlags* flags);

Result<agent::ProverOptions> MakeProverOptions(const ProverFlags& flags);
// The agent loop's options (--style agent): the same budgets and guard, plus --max-tool-calls.
agent::AgentOptions MakeAgentOptions(const ProverFlags& flags, const agent::ProverOptions& prover);

}  // namespace lr::cli
