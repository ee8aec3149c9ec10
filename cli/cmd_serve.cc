// `leanrotor serve`: the in-process runner behind an OpenAI-compatible HTTP server (inference/serve.h).
#include <omp.h>
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "inference/local_model.h"
#include "inference/serve.h"

namespace lr::cli {
namespace {

struct ServeFlags {
  std::string model;
  std::string model_id;
  std::string host = "127.0.0.1";
  int port = 8080;
  int queue = 16;
  int ctx = 4096;
  int kv_budget_mib = 1024;
  std::string ctk = "f16";
  std::string ctv = "f16";
  int threads = 0;
};

int RunServe(ServeFlags f) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  if (f.model.empty()) {
    Result<std::string> path = inference::FindDefaultModel();
    if (!path.ok()) {
      std::fprintf(stderr, "leanrotor serve: %s\n", path.status().ToString().c_str());
      return 2;
    }
    f.model = *path;
  }
  inference::LocalModelOptions lo;
  lo.path = f.model;
  lo.n_ctx = f.ctx;
  lo.kv_budget_mib = f.kv_budget_mib;
  lo.kv.k_format = f.ctk;
  lo.kv.v_format = f.ctv;
  Result<std::unique_ptr<inference::LocalModel>> model = inference::LocalModel::Open(lo);
  if (!model.ok()) {
    std::fprintf(stderr, "leanrotor serve: %s\n", model.status().ToString().c_str());
    return model.status().code() == StatusCode::kNotFound ? 2 : 1;
  }

  // SIGINT/SIGTERM are taken by sigwait below, not by a handler: block them before any server thread exists.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  inference::ServeOptions so;
  so.host = f.host;
  so.port = f.port;
  so.max_running = 1;  // LocalModel runs one request at a time; its n choices are decoded as one batch
  so.max_queued = f.queue;
  so.model_id = f.model_id;
  inference::Server server(**model, so);
  Status started = server.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "leanrotor serve: %s\n", started.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "leanrotor serve: %s on http://%s:%d/v1 (queue %d; Ctrl-C stops)\n",
               (*model)->Name().c_str(), f.host.c_str(), server.port(), f.queue);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  std::fprintf(stderr, "leanrotor serve: stopping\n");
  server.Stop();
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<ServeFlags>();
  CLI::App* sub = app.add_subcommand("serve", "serve the in-process model over an OpenAI-compatible HTTP API");
  sub->add_option("-m,--model", flags->model, "GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("--model-id", flags->model_id, "model id reported to clients (default: the GGUF's name)");
  sub->add_option("--host", flags->host, "address to listen on")->capture_default_str();
  sub->add_option("--port", flags->port, "port to listen on (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  sub->add_option("--queue", flags->queue, "requests that may wait for the model before new ones get 503")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  sub->add_option("-c,--ctx", flags->ctx, "longest sequence (prompt + completion) per request")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--kv-budget", flags->kv_budget_mib, "KV cache pool in MiB (sequences and cached prefixes)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--ctk", flags->ctk, "K cache format")->capture_default_str();
  sub->add_option("--ctv", flags->ctv, "V cache format")->capture_default_str();
  sub->add_option("-t,--threads", flags->threads, "CPU threads (default: OpenMP's)");
  commands.Add(sub, [flags] { return RunServe(*flags); });
}

}  // namespace lr::cli
