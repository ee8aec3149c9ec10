// `leanrotor tui [FILE.lean]`: the interactive proving session (tui/app.h).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "agent/tools.h"
#include "agent/working_copy.h"
#include "base/interrupt.h"
#include "cli/command.h"
#include "cli/lean_flags.h"
#include "cli/model_flags.h"
#include "tui/app.h"

namespace lr::cli {
namespace {

struct TuiFlags {
  std::string file;
  ModelChoiceFlags model;
  int k = 4;
  int turns = 2;
  std::string style = "chat";
  SamplingParams sampling;
  std::string project;
  LeanFlags lean;
};

// Opens the model named by the flags, or by /model and /kv later: a GGUF file run in-process, or, with --remote, a
// model id on an OpenAI-compatible server. `kv` is "K" or "K,V" (kvquant format names); empty keeps the current
// formats.
tui::ModelOpener MakeOpener(std::shared_ptr<TuiFlags> flags) {
  return [flags](const std::string& model, const std::string& kv,
                 const std::atomic<bool>* cancel) -> Result<tui::ModelHandle> {
    const bool remote = !flags->model.remote.empty();
    if (!model.empty()) (remote ? flags->model.model_id : flags->model.local.model) = model;
    if (!kv.empty()) {
      const size_t comma = kv.find(',');
      flags->model.local.ctk = kv.substr(0, comma);
      flags->model.local.ctv = comma == std::string::npos ? flags->model.local.ctk : kv.substr(comma + 1);
    }
    tui::ModelHandle handle;
    if (remote) {
      LR_ASSIGN_OR_RETURN(handle.model, OpenModel(flags->model, cancel));
      return handle;
    }
    LR_ASSIGN_OR_RETURN(inference::LocalModelOptions options, MakeLocalModelOptions(flags->model.local));
    options.cancel = cancel;
    LR_ASSIGN_OR_RETURN(std::unique_ptr<inference::LocalModel> local, inference::LocalModel::Open(options));
    // Shared: pages several sequences use now, plus cached prefix pages a next request can start from.
    handle.kv_usage = [lm = local.get()](double* bytes, double* shared) {
      const inference::KvStats st = lm->kv_stats();
      const int pages = st.pages_private + st.pages_shared + st.pages_cached;
      *bytes = static_cast<double>(st.bytes_in_use());
      *shared = pages == 0 ? 0.0 : static_cast<double>(st.pages_shared + st.pages_cached) / pages;
    };
    handle.model = std::move(local);
    handle.kv_formats = "K " + flags->model.local.ctk + " / V " + flags->model.local.ctv;
    return handle;
  };
}

// A PoolChecker that owns its pool.
class PoolOwner : public agent::LeanChecker {
 public:
  explicit PoolOwner(lsp::PoolOptions options) : pool_(std::move(options)), checker_(pool_) {}
  Result<agent::LeanReport> Check(const agent::CheckRequest& request) override { return checker_.Check(request); }
  lsp::ServerPool& pool() { return pool_; }

 private:
  lsp::ServerPool pool_;
  agent::PoolChecker checker_;
};

// The Lean side: a checker over the Lean server pool, or none and the reason (Lean is not installed, with how to
// install it) for the status line.
void OpenLean(const TuiFlags& flags, tui::Worker::Options* worker) {
  if (Status s = CheckLeanAvailable(flags.lean, {flags.project}); !s.ok()) {
    worker->lean_state = "not found: " + s.message();
    return;
  }
  auto owner = std::make_unique<PoolOwner>(MakePoolOptions(flags.lean, 2));
  if (worker->prover.style == agent::PromptStyle::kAgent) {
    // The agent's tools work in the project around the file (its Lake root, or its folder).
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::path dir = flags.file.empty() ? fs::current_path(ec) : fs::absolute(flags.file, ec).parent_path();
    std::string root = !flags.project.empty() ? flags.project : FindLakeRoot(dir);
    if (root.empty()) root = dir.string();
    auto copy = agent::WorkingCopy::Open(root);
    if (copy.ok()) {
      struct Tools {
        std::unique_ptr<agent::WorkingCopy> copy;
        std::unique_ptr<agent::ToolBox> tools;
      };
      auto bundle = std::make_shared<Tools>();
      bundle->copy = std::move(*copy);
      bundle->tools = std::make_unique<agent::ToolBox>(owner->pool(), *bundle->copy, agent::ToolsOptions());
      worker->tools = std::shared_ptr<agent::ToolBox>(bundle, bundle->tools.get());
    }
  }
  worker->checker = std::move(owner);
  worker->lean_state = "ready";
}

int RunTui(std::shared_ptr<TuiFlags> flags) {
  Result<agent::PromptStyle> style = agent::ParsePromptStyle(flags->style);
  if (!style.ok()) {
    std::fprintf(stderr, "leanrotor tui: --style: %s\n", style.status().message().c_str());
    return 2;
  }
  if (!flags->model.remote.empty() && flags->model.model_id.empty()) {
    std::fprintf(stderr, "leanrotor tui: --remote needs --model-id (the model name the server knows)\n");
    return 2;
  }
  tui::AppOptions options;
  options.file = flags->file;
  options.settings.k = flags->k;
  options.settings.turns = flags->turns;
  options.worker.open_model = MakeOpener(flags);
  if (flags->model.remote.empty() && flags->model.local.model.empty()) {
    // Without the default model the session still opens; the status line then says where it was looked for.
    Result<std::string> path = inference::FindDefaultModel();
    flags->model.local.model = path.ok() ? *path : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
  }
  options.worker.model = flags->model.remote.empty() ? flags->model.local.model : flags->model.model_id;
  options.worker.project_root = flags->project;
  options.worker.prover.style = *style;
  options.worker.prover.sampling = flags->sampling;
  options.worker.agent.sampling = flags->sampling;
  OpenLean(*flags, &options.worker);
  Status status = tui::RunApp(std::move(options));
  if (!status.ok()) {
    std::fprintf(stderr, "leanrotor tui: %s\n", status.ToString().c_str());
    return status.code() == StatusCode::kUnavailable ? 2 : 1;
  }
  return Interrupted() ? InterruptExitCode() : 0;
}

}  // namespace

void AddTuiCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<TuiFlags>();
  flags->model.local.ctk = "q8_0";
  flags->model.local.ctv = "q8_0";
  flags->sampling.temperature = 0.7f;
  flags->sampling.top_p = 0.95f;
  flags->sampling.max_tokens = 512;
  CLI::App* sub = app.add_subcommand("tui", "Interactive proving session in the terminal (? inside shows the keys)");
  sub->add_option("file", flags->file, "Lean file to open (created on save if it does not exist)");
  AddModelChoiceFlags(sub, &flags->model);
  sub->add_option("-k", flags->k, "Candidates per proof (/k changes it)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  sub->add_option("--turns", flags->turns, "Repair turns per candidate (/turns changes it)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  sub->add_option("--style", flags->style,
                  "Prompt style: chat, completion, tools or agent (a tool-calling model "
                  "working in the project; its tool calls show in the attempt pane)")
      ->capture_default_str();
  sub->add_option("--max-tokens", flags->sampling.max_tokens, "Tokens per reply")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--temp", flags->sampling.temperature, "Temperature (0: greedy)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--temperature", flags->sampling.temperature)->group("");  // another spelling, not listed
  sub->add_option("--seed", flags->sampling.seed, "Sampling seed")->capture_default_str();
  sub->add_option("--project", flags->project, "Lake project root the file belongs to");
  AddLeanFlags(sub, &flags->lean);
  commands.Add(sub, [flags]() { return RunTui(flags); });
}

}  // namespace lr::cli
