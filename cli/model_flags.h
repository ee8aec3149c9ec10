// The in-process model's flags, shared by generate, serve, tui, prove and batch, and the LocalModelOptions they make;
// and the choice between that model and a remote one (tui, prove, batch).
#pragma once

#include <CLI/CLI.hpp>

#include <atomic>
#include <memory>
#include <string>

#include "base/status.h"
#include "inference/kv_calibration.h"
#include "inference/local_model.h"
#include "lm/language_model.h"

namespace lr::cli {

struct LocalModelFlags {
  std::string model;  // GGUF file; empty: the default model
  std::string ctk = "f16";
  std::string ctv = "f16";
  int ctx = 4096;
  int kv_budget_mib = 1024;
  int kv_sinks = 0;                      // f16 copies of the first positions (KvCacheOptions::sink_tokens)
  int kv_window = 0;                     // second copies of the most recent positions (KvCacheOptions::window_tokens)
  std::string kv_window_format = "f16";  // their format (KvCacheOptions::window_format)
  int threads = 0;                       // 0: OpenMP's default
  std::string cache_dir = inference::DefaultCacheDir();  // --cache-dir: stored KV calibrations
  std::string device = "auto";                           // --device (cli/device.h)
};

// --ctk, --ctv, --kv-sinks, --kv-window, --kv-window-format, -c/--ctx, --kv-budget, -t/--threads, --cache-dir and
// --device, with the defaults *f holds.
void AddLocalModelFlags(CLI::App* sub, LocalModelFlags* f);

// The options for LocalModel::Open, with the default model when f.model is empty (kNotFound saying where it looked).
// -t also sets this process's OpenMP threads, for work a command runs outside the model's engine. --device is decided
// here (and said on stderr): kUnavailable / kResourceExhausted for a --device cuda that cannot be.
Result<inference::LocalModelOptions> MakeLocalModelOptions(const LocalModelFlags& f);

// A local GGUF model (-m) or a remote OpenAI-compatible one (--remote URL --model-id ID).
struct ModelChoiceFlags {
  LocalModelFlags local;
  std::string remote;    // --remote (hidden alias --url): base URL; empty: the local model
  std::string model_id;  // --model-id: the model id for --remote
};

// -m/--model, --remote (hidden alias --url), --model-id and the local model's flags (AddLocalModelFlags).
void AddModelChoiceFlags(CLI::App* sub, ModelChoiceFlags* f);

// Opens the model the flags name. Loading a local model stops with kCancelled soon after `cancel` is set (may be null).
Result<std::unique_ptr<LanguageModel>> OpenModel(const ModelChoiceFlags& f, const std::atomic<bool>* cancel);

}  // namespace lr::cli
