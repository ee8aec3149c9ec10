// An OpenAI-compatible HTTP server over any LanguageModel: what `leanrotor serve` runs, so that other agents can use
// the in-process runner and its compressed KV cache.
//
// Endpoints:
//   POST /v1/chat/completions  chat completions, streamed (SSE) or whole; n > 1 is passed to the model, which
//                              samples the choices from one shared prompt (the local runner forks its prefix).
//   POST /v1/completions       a "prompt" string, served as one user turn (LanguageModel is chat-only).
//   GET  /v1/models            the one model served.
//   GET  /health               {"status": "ok", "model": ...}.
//   GET  /metrics              Prometheus text: requests by endpoint and status, tokens, queue depth, running.
//
// Scheduling: at most max_running requests call the model at once (in arrival order; the local runner batches the
// running ones into shared decode steps, inference/local_model.h); up to max_queued more wait for a turn; beyond that a
// request is answered at once with 503 and a JSON error body (and Retry-After: 1), so that a client backs off instead
// of piling up. A streaming client that disconnects cancels its generation. Errors are OpenAI-shaped: {"error":
// {"message", "type", "code"}} with 400 (bad request), 404, 503 or 500; an error after a stream began is sent as one
// such event and the stream ends without [DONE].
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "base/status.h"
#include "lm/language_model.h"

namespace lr::net {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;       // 0: any free port (see Server::port())
  int max_running = 1;   // concurrent Complete calls (the model must allow concurrent calls when more than 1)
  int max_queued = 16;   // requests waiting for a turn before 503
  std::string model_id;  // the id reported to clients; empty: the model's Name()
  // More Prometheus text for /metrics (the model's own counters); may be empty.
  std::function<std::string()> extra_metrics;
};

// One metric in Prometheus' text format: its HELP and TYPE lines and its value.
std::string PrometheusMetric(const std::string& name, const char* type, const std::string& help, double value);

class Server {
 public:
  // `model` must outlive the server.
  Server(LanguageModel& model, ServeOptions options);
  ~Server();  // stops

  // Binds host:port and serves on background threads. kUnavailable if the address cannot be bound.
  Status Start();

  // The bound port (useful with port 0), or 0 before Start.
  int port() const;

  // Stops accepting, ends open connections (their generations are cancelled) and joins the threads. Idempotent.
  void Stop();

  // The /metrics text.
  std::string MetricsText() const;

 private:
  struct Endpoint;  // the HTTP server, admission and counters of one running server (serve.cc)
  std::unique_ptr<Endpoint> endpoint_;
};

}  // namespace lr::net
