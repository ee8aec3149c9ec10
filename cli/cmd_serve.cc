// `leanrotor serve`: the in-process runner behind an OpenAI-compatible HTTP server (net/serve.h).
#include <signal.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "cli/model_flags.h"
#include "net/serve.h"

namespace lr::cli {
namespace {

struct ServeFlags {
  LocalModelFlags local;
  std::string model_id;
  std::string host = "127.0.0.1";
  int port = 8080;
  int parallel = 8;
  int queue = 16;
};

// The engine's and the KV cache's counters, for /metrics.
std::string ModelMetrics(const inference::LocalModel& model) {
  const inference::EngineStats e = model.engine_stats();
  const inference::KvStats kv = model.kv_stats();
  using net::PrometheusMetric;
  return PrometheusMetric("leanrotor_engine_steps_total", "counter", "Forward passes of the in-process model.",
                          static_cast<double>(e.steps)) +
         PrometheusMetric("leanrotor_engine_batched_steps_total", "counter",
                          "Forward passes that carried tokens of two or more requests.",
                          static_cast<double>(e.batched_steps)) +
         PrometheusMetric("leanrotor_engine_peak_requests", "gauge", "Most requests in one forward pass.",
                          e.peak_requests) +
         PrometheusMetric("leanrotor_engine_peak_sequences", "gauge", "Most sequences in one forward pass.",
                          e.peak_sequences) +
         PrometheusMetric("leanrotor_engine_waiting_for_kv", "gauge",
                          "Requests waiting for KV pages that running requests reserved.", e.queued) +
         PrometheusMetric("leanrotor_kv_pages_total", "gauge", "Pages in the KV pool.", kv.pages_total) +
         PrometheusMetric("leanrotor_kv_pages_in_use", "gauge", "KV pages held by sequences.",
                          kv.pages_private + kv.pages_shared) +
         PrometheusMetric("leanrotor_kv_pages_cached", "gauge", "KV pages kept for prefix hits (evictable).",
                          kv.pages_cached) +
         PrometheusMetric("leanrotor_kv_prefix_hit_tokens_total", "counter", "Prompt tokens found in the prefix cache.",
                          static_cast<double>(kv.prefix_hit_tokens));
}

int RunServe(const ServeFlags& f) {
  Result<inference::LocalModelOptions> options = MakeLocalModelOptions(f.local);
  if (!options.ok()) {
    std::fprintf(stderr, "leanrotor serve: %s\n", options.status().ToString().c_str());
    return 2;
  }
  Result<std::unique_ptr<inference::LocalModel>> model = inference::LocalModel::Open(*options);
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

  net::ServeOptions so;
  so.host = f.host;
  so.port = f.port;
  so.max_running = f.parallel;  // batched by the model's engine into shared decode steps
  so.max_queued = f.queue;
  so.model_id = f.model_id;
  so.extra_metrics = [lm = model->get()] { return ModelMetrics(*lm); };
  net::Server server(**model, so);
  Status started = server.Start();
  if (!started.ok()) {
    std::fprintf(stderr, "leanrotor serve: %s\n", started.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "leanrotor serve: %s on http://%s:%d/v1 (%d requests batched, %d queued; Ctrl-C stops)\n",
               (*model)->Name().c_str(), f.host.c_str(), server.port(), f.parallel, f.queue);
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
  sub->add_option("-m,--model", flags->local.model,
                  "GGUF model file (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("--model-id", flags->model_id, "model id reported to clients (default: the GGUF's name)");
  sub->add_option("--host", flags->host, "address to listen on")->capture_default_str();
  sub->add_option("--port", flags->port, "port to listen on (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  sub->add_option("--parallel", flags->parallel, "requests run at once, their tokens batched into shared steps")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  sub->add_option("--queue", flags->queue, "requests that may wait for a turn before new ones get 503")
      ->check(CLI::Range(0, 100000))
      ->capture_default_str();
  AddLocalModelFlags(sub, &flags->local);
  commands.Add(sub, [flags] { return RunServe(*flags); });
}

}  // namespace lr::cli
