#include "cli/prover_flags.h"

namespace lr::cli {

void AddProverFlags(CLI::App* sub, ProverFlags* f) {
  AddModelChoiceFlags(sub, &f->model);
  sub->add_option("--style", f->style,
                  "prompt style: chat (instruction models), completion (base prover models), "
                  "tools (tool-calling models: proofs sent to Lean through a check_proof tool) "
                  "or agent (tool-calling models working in the project with the Lean and file "
                  "tools, as Leanstral does)")
      ->check(CLI::IsMember({"chat", "completion", "tools", "agent"}));
  sub->add_option("--max-tool-calls", f->max_tool_calls,
                  "--style agent: stop an agent after this many tool calls "
                  "(0: none)")
      ->capture_default_str();
  sub->add_option("-k", f->k, "candidates sampled from one shared prompt")->check(CLI::Range(1, 1024));
  sub->add_option("--turns", f->turns, "repair turns per candidate, fed Lean's errors and goals")
      ->check(CLI::Range(0, 64));
  sub->add_option("--temp", f->temperature, "sampling temperature (0: greedy)")->capture_default_str();
  sub->add_option("--temperature", f->temperature)->group("");  // another spelling, not listed
  sub->add_option("--top-p", f->top_p, "nucleus sampling (1: off)");
  sub->add_option("--max-tokens", f->max_tokens, "tokens per reply");
  sub->add_option("--seed", f->seed, "sampling seed");
  sub->add_option("--token-budget", f->token_budget, "stop a theorem after this many generated tokens (0: none)");
  sub->add_option("--time-budget", f->time_budget, "stop a theorem after this many seconds (0: none)");
  sub->add_option("--check-budget", f->check_budget, "stop a theorem after this many judged candidates (0: none)");
  sub->add_option("--check-timeout", f->check_timeout,
                  "seconds for one Lean check, its retry on a fresh server included")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_flag("--allow-refused-constructs", f->allow_constructs,
                "do not refuse axiom/native_decide/#eval/macros/... before Lean (sorry and axioms are still checked)");
  sub->add_option("--lean-servers", f->lean_servers, "Lean server processes at most")->check(CLI::Range(1, 64));
  AddLeanFlags(sub, &f->lean);
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

agent::AgentOptions MakeAgentOptions(const ProverFlags& f, const agent::ProverOptions& prover) {
  agent::AgentOptions o;
  o.sampling = prover.sampling;
  o.max_tool_calls = f.max_tool_calls;
  o.max_tokens = prover.max_tokens;
  o.max_seconds = prover.max_seconds;
  o.max_checks = prover.max_checks;
  o.guard = prover.guard;
  o.check_timeout_seconds = prover.check_timeout_seconds;
  return o;
}

}  // namespace lr::cli
