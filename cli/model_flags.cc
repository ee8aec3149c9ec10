#include "cli/model_flags.h"

#include <omp.h>

#include <filesystem>
#include <string>

#include "cli/device.h"
#include "kvquant/kvquant.h"
#include "net/remote_model.h"

namespace lr::cli {
namespace {

// Every KV format's name, space-separated, for the help text.
std::string FormatNames() {
  std::string names;
  for (const kvquant::FormatInfo& f : kvquant::ListFormats()) names += (names.empty() ? "" : " ") + std::string(f.name);
  return names;
}

}  // namespace

void AddLocalModelFlags(CLI::App* sub, LocalModelFlags* f) {
  sub->add_option("--ctk", f->ctk, "KV cache format for keys (" + FormatNames() + ")")->capture_default_str();
  sub->add_option("--ctv", f->ctv, "KV cache format for values")->capture_default_str();
  sub->add_option("--kv-sinks", f->kv_sinks, "keep the first N positions as f16 rows too (compressed formats)")
      ->capture_default_str()
      ->check(CLI::Range(0, 32));
  sub->add_option("--kv-window", f->kv_window,
                  "attend to the last N positions from window rows too (compressed formats; docs/RESULTS.md)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--kv-window-format", f->kv_window_format, "format of the window rows (f16, q8_0, ...)")
      ->capture_default_str();
  sub->add_option("-c,--ctx", f->ctx, "longest sequence (prompt + reply tokens) of one request")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-budget", f->kv_budget_mib, "KV cache pool in MiB (sequences and cached prefixes)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("-t,--threads", f->threads, "CPU threads (default: OpenMP's, all cores)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--cache-dir", f->cache_dir,
                  "where KV calibrations are stored once computed (default: $LEANROTOR_CACHE_DIR, "
                  "$XDG_CACHE_HOME/leanrotor or ~/.cache/leanrotor)")
      ->capture_default_str();
  AddDeviceFlag(sub, &f->device);
}

Result<inference::LocalModelOptions> MakeLocalModelOptions(const LocalModelFlags& f) {
  inference::LocalModelOptions o;
  o.path = f.model;
  if (o.path.empty()) {
    LR_ASSIGN_OR_RETURN(o.path, inference::FindDefaultModel());
  }
  o.kv.k_format = f.ctk;
  o.kv.v_format = f.ctv;
  o.kv.sink_tokens = f.kv_sinks;
  o.kv.window_tokens = f.kv_window;
  o.kv.window_format = f.kv_window_format;
  o.n_ctx = f.ctx;
  o.kv_budget_mib = f.kv_budget_mib;
  if (f.threads > 0) omp_set_num_threads(f.threads);
  o.threads = f.threads;
  o.cache_dir = f.cache_dir;
  std::error_code ec;
  const size_t file_bytes = std::filesystem::file_size(o.path, ec);
  // A compressed cache picks the CPU unless --device cuda says otherwise (the device's compressed rows are checked
  // against the CPU's encoder when a cache opens, and it keeps no sink or window rows).
  const bool compressed = f.ctk != "f16" || f.ctv != "f16";
  LR_ASSIGN_OR_RETURN(o.device, ChooseDevice(compressed && f.device == "auto" ? "cpu" : f.device, ec ? 0 : file_bytes,
                                             static_cast<size_t>(f.kv_budget_mib) << 20));
  return o;
}

void AddModelChoiceFlags(CLI::App* sub, ModelChoiceFlags* f) {
  auto* model = sub->add_option("-m,--model", f->local.model,
                                "GGUF model file for the in-process runner (default: "
                                "models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  auto* remote =
      sub->add_option("--remote", f->remote, "OpenAI-compatible endpoint instead, e.g. https://api.mistral.ai/v1");
  auto* url = sub->add_option("--url", f->remote)->group("");  // another spelling, not listed
  model->excludes(remote);
  model->excludes(url);
  sub->add_option("--model-id", f->model_id, "model id for --remote, e.g. labs-leanstral-2603");
  AddLocalModelFlags(sub, &f->local);
}

Result<std::unique_ptr<LanguageModel>> OpenModel(const ModelChoiceFlags& f, const std::atomic<bool>* cancel) {
  if (!f.remote.empty()) {
    if (f.model_id.empty()) return InvalidArgument("--remote needs --model-id (e.g. labs-leanstral-2603)");
    net::RemoteOptions options;
    options.base_url = f.remote;
    options.model = f.model_id;
    LR_ASSIGN_OR_RETURN(std::unique_ptr<net::RemoteModel> remote, net::RemoteModel::Create(options));
    return std::unique_ptr<LanguageModel>(std::move(remote));
  }
  LR_ASSIGN_OR_RETURN(inference::LocalModelOptions options, MakeLocalModelOptions(f.local));
  options.cancel = cancel;
  LR_ASSIGN_OR_RETURN(std::unique_ptr<inference::LocalModel> local, inference::LocalModel::Open(options));
  return std::unique_ptr<LanguageModel>(std::move(local));
}

}  // namespace lr::cli
