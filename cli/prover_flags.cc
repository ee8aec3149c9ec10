#include "cli/prover_flags.h"

#include <filesystem>

#include <unistd.h>

#include <csignal>
#include <sstream>

#include "inference/local_model.h"
#include "net/remote_model.h"
#include "lsp/server_process.h"

namespace lr::cli {
namespace {

std::atomic<bool> g_interrupted{false};

void OnInterrupt(int) {
  if (g_interrupted.exchange(true)) _exit(130);
  constexpr char kMsg[] = "\ninterrupted: finishing the current step and keeping what is done (Ctrl-C again quits)\n";
  ssize_t ignored = ::write(STDERR_FILENO, kMsg, sizeof kMsg - 1);
  (void)ignored;
}

std::vector<std::string> SplitWords(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

void AddProverFlags(CLI::App* sub, ProverFlags* f) {
  auto* model = sub->add_option("-m,--model", f->local.model, "GGUF model file for the in-process runner (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  auto* remote = sub->add_option("--remote", f->remote, "OpenAI-compatible endpoint instead, e.g. https://api.mistral.ai/v1");
  model->excludes(remote);
  sub->add_option("--model-id", f->remote_model, "model id for --remote, e.g. labs-leanstral-2603");
  sub->add_option("--style", f->style, "prompt style: chat (instruction models), completion (base prover models), "
                                       "tools (tool-calling models: proofs sent to Lean through a check_proof tool) "
                                       "or agent (tool-calling models working in the project with the Lean and file "
                                       "tools, as Leanstral does)")
      ->check(CLI::IsMember({"chat", "completion", "tools", "agent"}));
  sub->add_option("--max-tool-calls", f->max_tool_calls, "--style agent: stop an agent after this many tool calls "
                                                         "(0: none)")->capture_default_str();
  sub->add_option("-k", f->k, "candidates sampled from one shared prompt")->check(CLI::Range(1, 1024));
  sub->add_option("--turns", f->turns, "repair turns per candidate, fed Lean's errors and goals")->check(CLI::Range(0, 64));
  sub->add_option("--temperature", f->temperature, "sampling temperature (0: greedy)");
  sub->add_option("--top-p", f->top_p, "nucleus sampling (1: off)");
  sub->add_option("--max-tokens", f->max_tokens, "tokens per reply");
  sub->add_option("--seed", f->seed, "sampling seed");
  sub->add_option("--token-budget", f->token_budget, "stop a theorem after this many generated tokens (0: none)");
  sub->add_option("--time-budget", f->time_budget, "stop a theorem after this many seconds (0: none)");
  sub->add_option("--check-budget", f->check_budget, "stop a theorem after this many judged candidates (0: none)");
  sub->add_option("--check-timeout", f->check_timeout, "seconds allowed for one Lean check");
  sub->add_flag("--allow-refused-constructs", f->allow_constructs,
                "do not refuse axiom/native_decide/#eval/macros/... before Lean (sorry and axioms are still checked)");
  AddLocalModelFlags(sub, &f->local);
  AddLeanFlags(sub, f);
}

void AddLeanFlags(CLI::App* sub, ProverFlags* f) {
  sub->add_option("--lean-servers", f->lean_servers, "Lean server processes at most")->check(CLI::Range(1, 64));
  sub->add_option("--lean-command", f->lean_command, "Lean server command (default: lake serve / lean --server)");
  sub->add_option("--lean-memory", f->lean_memory_gib, "address-space limit of each Lean process, in GiB (0: none)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  sub->add_option("--lean-cpu", f->lean_cpu_seconds, "CPU-time limit of each Lean process, in seconds (0: none)")
      ->check(CLI::NonNegativeNumber);
}

Result<agent::ProverOptions> MakeProverOptions(const ProverFlags& f) {
  agent::ProverOptions o;
  o.k = f.k;
  o.turns = f.turns;
  LR_ASSIGN_OR_RETURN(o.style, agent::ParsePromptStyle(f.style));
  o.sampling.temperature = f.temperature;
  o.sampling.top_p = f.top_p;
  o.sampling.max_tokens = f.max_tokens;
  o.sampling.seed = f.seed;
  o.max_tokens = f.token_budget;
  o.max_seconds = f.time_budget;
  o.max_checks = f.check_budget;
  o.check_timeout_seconds = f.check_timeout;
  o.guard.refuse_constructs = !f.allow_constructs;
  return o;
}

std::string FindLakeRoot(std::filesystem::path dir) {
  for (; !dir.empty(); dir = dir.parent_path()) {
    std::error_code ec;
    if (std::filesystem::exists(dir / "lakefile.lean", ec) || std::filesystem::exists(dir / "lakefile.toml", ec))
      return dir.string();
    if (dir == dir.parent_path()) break;
  }
  return "";
}

agent::AgentOptions MakeAgentOptions(const ProverFlags& f, const agent::ProverOptions& prover) {
  agent::AgentOptions o;
  o.sampling = prover.sampling;
  o.max_tool_calls = f.max_tool_calls;
  o.max_tokens = f.token_budget;
  o.max_seconds = f.time_budget;
  o.max_checks = f.check_budget;
  o.guard = prover.guard;
  o.check_timeout_seconds = f.check_timeout;
  return o;
}

Result<std::unique_ptr<LanguageModel>> OpenModel(const ProverFlags& f) {
  if (!f.remote.empty()) {
    if (f.remote_model.empty()) return InvalidArgument("--remote needs --model-id (e.g. labs-leanstral-2603)");
    net::RemoteOptions options;
    options.base_url = f.remote;
    options.model = f.remote_model;
    LR_ASSIGN_OR_RETURN(std::unique_ptr<net::RemoteModel> remote, net::RemoteModel::Create(options));
    return std::unique_ptr<LanguageModel>(std::move(remote));
  }
  LR_ASSIGN_OR_RETURN(inference::LocalModelOptions options, MakeLocalModelOptions(f.local));
  LR_ASSIGN_OR_RETURN(std::unique_ptr<inference::LocalModel> local, inference::LocalModel::Open(options));
  return std::unique_ptr<LanguageModel>(std::move(local));
}

Status CheckLeanAvailable(const ProverFlags& f, const std::vector<std::string>& project_roots) {
  if (!f.lean_command.empty()) {
    const std::string program = SplitWords(f.lean_command).front();
    if (program.find('/') == std::string::npos && !lsp::FindOnPath(program))
      return NotFound("--lean-command: " + program + " is not on PATH");
    return Status::Ok();
  }
  for (const std::string& root : project_roots) {
    Result<std::vector<std::string>> command = lsp::DefaultLeanCommand(root);
    if (!command.ok()) return command.status();
  }
  return Status::Ok();
}

lsp::PoolOptions MakePoolOptions(const ProverFlags& f) {
  lsp::PoolOptions o;
  o.lean_command = SplitWords(f.lean_command);
  o.max_servers = static_cast<size_t>(f.lean_servers);
  o.server_memory_limit_bytes = static_cast<int64_t>(f.lean_memory_gib * double(int64_t{1} << 30));
  o.server_cpu_limit_seconds = f.lean_cpu_seconds;
  return o;
}

const std::atomic<bool>* InstallInterruptFlag() {
  std::signal(SIGINT, OnInterrupt);
  return &g_interrupted;
}

}  // namespace lr::cli
