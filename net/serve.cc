#include "net/serve.h"

#include <httplib.h>
#include <chrono>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "net/http_openai.h"

namespace lr::net {
namespace {

using nlohmann::json;

constexpr const char* kChatPath = "/v1/chat/completions";
constexpr const char* kTextPath = "/v1/completions";
constexpr size_t kMaxBodyBytes = 64u << 20;

// Who may call the model: max_running at once, max_queued waiting; the rest are turned away.
class Admission {
 public:
  Admission(int max_running, int max_queued) : max_running_(max_running), max_queued_(max_queued) {}

  // Takes a place in the queue; false when it is full.
  bool TryEnqueue() {
    std::lock_guard<std::mutex> lock(mu_);
    if (queued_ >= max_queued_ + std::max(0, max_running_ - running_)) return false;
    ++queued_;
    return true;
  }

  // Leaves the queue for a running slot, waiting while all are busy. False (and out of the queue) when stopping.
  bool WaitTurn() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return stopping_ || running_ < max_running_; });
    --queued_;
    if (stopping_) return false;
    ++running_;
    return true;
  }

  // Leaves the queue without running (the client went away before its turn).
  void Abandon() {
    std::lock_guard<std::mutex> lock(mu_);
    --queued_;
  }

  void Finish() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --running_;
    }
    cv_.notify_one();
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

  bool stopping() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stopping_;
  }
  std::pair<int, int> QueuedAndRunning() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {queued_, running_};
  }

 private:
  const int max_running_;
  const int max_queued_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int queued_ = 0;
  int running_ = 0;
  bool stopping_ = false;
};

int HttpStatusFor(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kResourceExhausted:  // the context or KV budget: the request is too large
    case StatusCode::kUnsupported: return 400;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kTimeout: return 504;
    default: return 500;
  }
}

json ErrorJson(int http_status, const std::string& message) {
  const char* type = http_status == 400   ? "invalid_request_error"
                     : http_status == 404 ? "not_found_error"
                     : http_status == 503 ? "unavailable"
                                          : "server_error";
  return {{"error", {{"message", message}, {"type", type}, {"code", http_status}}}};
}

void SendError(httplib::Response& res, int http_status, const std::string& message) {
  res.status = http_status;
  res.set_content(ErrorJson(http_status, message).dump(), "application/json");
}

json UsageJson(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.prompt_tokens - u.prompt_tokens_computed}}}};
}

// What every reply of one request shares.
struct ReplyHeader {
  bool chat = true;
  std::string id;
  int64_t created = 0;
  std::string model;

  json Object(const char* chat_object, const char* text_object) const {
    return {{"id", id}, {"object", chat ? chat_object : text_object}, {"created", created}, {"model", model}};
  }
};

json WholeReply(const ReplyHeader& h, const Completion& c) {
  json out = h.Object("chat.completion", "text_completion");
  json choices = json::array();
  for (size_t i = 0; i < c.choices.size(); ++i) {
    const Choice& ch = c.choices[i];
    json choice = {{"index", i}, {"finish_reason", ch.finish_reason}};
    if (h.chat) {
      json message = {{"role", "assistant"}, {"content", ch.text}};
      if (!ch.tool_calls.empty()) message["tool_calls"] = ToolCallsToJson(ch.tool_calls);
      choice["message"] = message;
    } else {
      choice["text"] = ch.text;
    }
    choices.push_back(choice);
  }
  out["choices"] = choices;
  out["usage"] = UsageJson(c.usage);
  return out;
}

// One streamed chunk for choice `index`: a content piece, tool calls, and/or the finish reason.
json ChunkReply(const ReplyHeader& h, int index, std::string_view piece, const std::vector<ToolCall>* calls,
                const std::string* finish_reason) {
  json out = h.Object("chat.completion.chunk", "text_completion");
  json choice = {{"index", index}, {"finish_reason", finish_reason ? json(*finish_reason) : json(nullptr)}};
  if (h.chat) {
    json delta = json::object();
    if (!piece.empty() || (!calls && !finish_reason)) delta["content"] = std::string(piece);
    if (calls) {
      json deltas = ToolCallsToJson(*calls);
      for (size_t i = 0; i < deltas.size(); ++i) deltas[i]["index"] = i;
      delta["tool_calls"] = deltas;
    }
    choice["delta"] = delta;
  } else {
    choice["text"] = std::string(piece);
  }
  out["choices"] = json::array({choice});
  return out;
}

}  // namespace

struct Server::Endpoint {
  Endpoint(LanguageModel& m, ServeOptions o)
      : model(m), options(std::move(o)), admission(options.max_running, options.max_queued) {
    if (options.model_id.empty()) options.model_id = model.Name();
  }

  LanguageModel& model;
  ServeOptions options;
  Admission admission;
  httplib::Server http;
  std::thread listener;
  std::atomic<bool> listener_done{false};
  int port = 0;
  std::atomic<uint64_t> next_id{1};

  mutable std::mutex metrics_mu;
  std::map<std::pair<std::string, int>, uint64_t> requests;  // (endpoint, status) -> count
  uint64_t rejected = 0;
  uint64_t cancelled = 0;
  Usage tokens;  // totals

  void Account(const Usage& u, bool was_cancelled) {
    std::lock_guard<std::mutex> lock(metrics_mu);
    tokens.prompt_tokens += u.prompt_tokens;
    tokens.prompt_tokens_computed += u.prompt_tokens_computed;
    tokens.completion_tokens += u.completion_tokens;
    if (was_cancelled) ++cancelled;
  }

  // A streamed request holds its queue place until its content provider runs; if the client is gone before that, the
  // provider never runs and the place is given back here.
  struct StreamJob {
    Endpoint* impl = nullptr;
    WireRequest wire;
    ReplyHeader header;
    bool started = false;
    ~StreamJob() {
      if (!started) impl->admission.Abandon();
    }
  };

  void HandleCompletion(const httplib::Request& req, httplib::Response& res, bool chat);
  bool RunStream(const WireRequest& wire, const ReplyHeader& header, httplib::DataSink& sink);
  void Route();
  std::string MetricsText() const;
};

void Server::Endpoint::HandleCompletion(const httplib::Request& req, httplib::Response& res, bool chat) {
  const char* path = chat ? kChatPath : kTextPath;
  Result<WireRequest> parsed = chat ? ChatRequestFromJson(req.body, path) : TextRequestFromJson(req.body, path);
  if (!parsed.ok()) return SendError(res, HttpStatusFor(parsed.status()), parsed.status().message());
  if (!admission.TryEnqueue()) {
    {
      std::lock_guard<std::mutex> lock(metrics_mu);
      ++rejected;
    }
    res.set_header("Retry-After", "1");
    return SendError(res, 503,
                     std::string(path) + ": the request queue is full (" + std::to_string(options.max_queued) +
                         " waiting); retry later");
  }
  ReplyHeader header{chat, (chat ? "chatcmpl-" : "cmpl-") + std::to_string(next_id++),
                     static_cast<int64_t>(std::time(nullptr)), options.model_id};
  if (parsed->stream) {
    auto job = std::make_shared<StreamJob>();
    job->impl = this;
    job->wire = std::move(parsed).value();
    job->header = std::move(header);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [job](size_t, httplib::DataSink& sink) {
      if (job->started) return false;  // one run per request
      job->started = true;
      return job->impl->RunStream(job->wire, job->header, sink);
    });
    return;
  }
  if (!admission.WaitTurn()) return SendError(res, 503, std::string(path) + ": the server is stopping");
  Result<Completion> result =
      model.Complete(parsed->request, [this](int, std::string_view) { return !admission.stopping(); });
  admission.Finish();
  if (!result.ok()) return SendError(res, HttpStatusFor(result.status()), result.status().message());
  bool was_cancelled = !result->choices.empty() && result->choices[0].finish_reason == "cancelled";
  Account(result->usage, was_cancelled);
  res.set_content(WholeReply(header, *result).dump(), "application/json");
}

// Returns false to drop the connection (the client is gone); true after sink.done().
bool Server::Endpoint::RunStream(const WireRequest& wire, const ReplyHeader& header, httplib::DataSink& sink) {
  std::mutex write_mu;  // in case a model calls back from more than one thread
  bool client_gone = false;
  auto send = [&](const std::string& data) {
    std::lock_guard<std::mutex> lock(write_mu);
    if (client_gone) return false;
    std::string event = "data: " + data + "\n\n";
    client_gone = !sink.write(event.data(), event.size());
    return !client_gone;
  };
  if (!admission.WaitTurn()) {
    send(ErrorJson(503, "the server is stopping").dump());
    sink.done();
    return true;
  }
  const int n = wire.request.n;
  for (int i = 0; i < n; ++i) {
    json first = ChunkReply(header, i, "", nullptr, nullptr);
    if (header.chat) first["choices"][0]["delta"]["role"] = "assistant";
    send(first.dump());
  }
  Result<Completion> result = model.Complete(wire.request, [&](int index, std::string_view piece) {
    if (admission.stopping()) return false;
    return send(ChunkReply(header, index, piece, nullptr, nullptr).dump());
  });
  admission.Finish();
  if (result.ok()) Account(result->usage, client_gone);
  if (client_gone) return false;
  if (!result.ok()) {
    send(ErrorJson(HttpStatusFor(result.status()), result.status().message()).dump());
    sink.done();
    return true;
  }
  for (size_t i = 0; i < result->choices.size(); ++i) {
    const Choice& c = result->choices[i];
    if (header.chat && !c.tool_calls.empty()) send(ChunkReply(header, i, "", &c.tool_calls, nullptr).dump());
    send(ChunkReply(header, i, "", nullptr, &c.finish_reason).dump());
  }
  if (wire.include_usage) {
    json last = header.Object("chat.completion.chunk", "text_completion");
    last["choices"] = json::array();
    last["usage"] = UsageJson(result->usage);
    send(last.dump());
  }
  const std::string done = "data: [DONE]\n\n";
  if (!sink.write(done.data(), done.size())) return false;
  sink.done();
  return true;
}

void Server::Endpoint::Route() {
  http.set_payload_max_length(kMaxBodyBytes);
  // SO_REUSEADDR only: httplib's default adds SO_REUSEPORT, which would let a second server share a busy port.
  http.set_socket_options([](socket_t sock) {
    int one = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  });
  // Enough threads that /health, /metrics and 503s are answered while every queue place is taken.
  const size_t threads = static_cast<size_t>(options.max_running + options.max_queued + 4);
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.Post(kChatPath,
            [this](const httplib::Request& req, httplib::Response& res) { HandleCompletion(req, res, true); });
  http.Post(kTextPath,
            [this](const httplib::Request& req, httplib::Response& res) { HandleCompletion(req, res, false); });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json model = {{"id", options.model_id}, {"object", "model"}, {"owned_by", "leanrotor"}};
    res.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump(), "application/json");
  });
  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(json{{"status", "ok"}, {"model", options.model_id}}.dump(), "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(MetricsText(), "text/plain; version=0.0.4");
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler already wrote its error
    std::string what = res.status == 404 ? "no such endpoint: " + req.method + " " + req.path
                                         : "HTTP " + std::to_string(res.status) + " for " + req.path;
    res.set_content(ErrorJson(res.status, what).dump(), "application/json");
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    bool known = req.path == kChatPath || req.path == kTextPath || req.path == "/v1/models" || req.path == "/health" ||
                 req.path == "/metrics";
    std::lock_guard<std::mutex> lock(metrics_mu);
    ++requests[{known ? req.path : "other", res.status}];
  });
}

std::string Server::Endpoint::MetricsText() const {
  auto [queued, running] = admission.QueuedAndRunning();
  std::lock_guard<std::mutex> lock(metrics_mu);
  std::string out;
  out += "# HELP leanrotor_requests_total HTTP requests answered, by endpoint and status code.\n";
  out += "# TYPE leanrotor_requests_total counter\n";
  for (const auto& [key, count] : requests)
    out += "leanrotor_requests_total{endpoint=\"" + key.first + "\",code=\"" + std::to_string(key.second) + "\"} " +
           std::to_string(count) + "\n";
  auto metric = [&](const char* name, const char* type, const char* help, uint64_t value) {
    out += PrometheusMetric(name, type, help, static_cast<double>(value));
  };
  metric("leanrotor_requests_rejected_total", "counter", "Completion requests answered 503 because the queue was full.",
         rejected);
  metric("leanrotor_requests_cancelled_total", "counter", "Streamed completions cancelled by a client disconnect.",
         cancelled);
  metric("leanrotor_prompt_tokens_total", "counter", "Prompt tokens of completed requests.", tokens.prompt_tokens);
  metric("leanrotor_prompt_tokens_computed_total", "counter",
         "Prompt tokens prefilled (not found in the prefix cache).", tokens.prompt_tokens_computed);
  metric("leanrotor_completion_tokens_total", "counter", "Generated tokens, summed over choices.",
         tokens.completion_tokens);
  metric("leanrotor_queue_depth", "gauge", "Completion requests waiting for a turn.", queued);
  metric("leanrotor_requests_running", "gauge", "Completion requests running on the model.", running);
  metric("leanrotor_queue_capacity", "gauge", "Waiting requests allowed before 503.", options.max_queued);
  if (options.extra_metrics) out += options.extra_metrics();
  return out;
}

std::string PrometheusMetric(const std::string& name, const char* type, const std::string& help, double value) {
  char number[64];
  std::snprintf(number, sizeof number, "%.17g", value);
  return "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n" + name + " " + number + "\n";
}

Server::Server(LanguageModel& model, ServeOptions options)
    : endpoint_(std::make_unique<Endpoint>(model, std::move(options))) {}

Server::~Server() { Stop(); }

Status Server::Start() {
  Endpoint& s = *endpoint_;
  if (s.listener.joinable()) return InvalidArgument("server already started");
  if (s.options.max_running < 1 || s.options.max_queued < 0)
    return InvalidArgument("serve: max_running must be >= 1 and max_queued >= 0");
  s.Route();
  const std::string where = "serve " + s.options.host + ":" + std::to_string(s.options.port);
  if (s.options.port == 0) {
    s.port = s.http.bind_to_any_port(s.options.host);
    if (s.port <= 0) return Unavailable(where + ": could not bind any port");
  } else {
    if (!s.http.bind_to_port(s.options.host, s.options.port))
      return Unavailable(where + ": could not bind (address in use, or not an address of this machine)");
    s.port = s.options.port;
  }
  s.listener_done = false;
  s.listener = std::thread([&s] {
    s.http.listen_after_bind();
    s.listener_done = true;
  });
  // httplib's stop() does nothing until the listener is running, so a Stop() right after Start() could otherwise
  // leave the listener blocked forever: Start returns only once it runs.
  while (!s.http.is_running() && !s.listener_done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return Status::Ok();
}

int Server::port() const { return endpoint_->port; }

void Server::Stop() {
  Endpoint& s = *endpoint_;
  if (!s.listener.joinable()) return;
  s.admission.Stop();
  s.http.stop();
  s.listener.join();
}

std::string Server::MetricsText() const { return endpoint_->MetricsText(); }

}  // namespace lr::net
