#include "agent/mcp_server.h"

#include <errno.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace lr::agent {
namespace {

using Json = nlohmann::json;

constexpr const char* kProtocolVersions[] = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"};
constexpr int kParseError = -32700;
constexpr int kInvalidRequest = -32600;
constexpr int kMethodNotFound = -32601;
constexpr int kInvalidParams = -32602;

constexpr const char* kInstructions =
    "Lean 4 tools over a pool of Lean language servers for one project (lean-lsp-mcp's tool names and arguments: "
    "lines and columns are 1-based). lean_goal is the most important tool: use it often. Check that a lemma exists "
    "with lean_local_search before using it; try several tactics at once with lean_multi_attempt. read_file, "
    "edit_file, write_file and list_files work on a working copy of the project: Lean sees the edits, the files on "
    "disk do not change.";

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

class Server {
 public:
  Server(ToolBox& tools, const McpOptions& options, int out_fd) : tools_(tools), options_(options), out_fd_(out_fd) {
    for (int i = 0; i < std::max(1, options.workers); ++i) workers_.emplace_back([this] { Work(); });
  }

  ~Server() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : workers_) t.join();
  }

  void Handle(const std::string& line) {
    Json m = Json::parse(line, nullptr, false);
    if (m.is_discarded()) return SendError(Json(), kParseError, "parse error: the line is not JSON");
    if (!m.is_object() || m.value("jsonrpc", "") != "2.0" || !m.contains("method") || !m["method"].is_string()) {
      if (m.is_object() && !m.contains("method") && (m.contains("result") || m.contains("error"))) return;  // a reply
      Json id = m.is_object() && m.contains("id") ? m["id"] : Json();
      return SendError(id, kInvalidRequest, "invalid request: expected a JSON-RPC 2.0 request or notification");
    }
    const std::string method = m["method"].get<std::string>();
    const Json params = m.contains("params") ? m["params"] : Json::object();
    if (!m.contains("id")) return HandleNotification(method, params);
    const Json id = m["id"];
    if (!id.is_string() && !id.is_number_integer())
      return SendError(Json(), kInvalidRequest, "invalid request: id must be a string or an integer");
    if (method == "initialize") {
      std::string requested = params.is_object() ? params.value("protocolVersion", "") : "";
      return SendResult(id, {{"protocolVersion", NegotiateProtocolVersion(requested)},
                             {"capabilities", {{"tools", {{"listChanged", false}}}}},
                             {"serverInfo", {{"name", options_.server_name}, {"version", options_.server_version}}},
                             {"instructions", kInstructions}});
    }
    if (method == "ping") return SendResult(id, Json::object());
    if (method == "tools/list") {
      Json tools = Json::array();
      for (const ToolDefinition& d : tools_.Definitions())
        tools.push_back({{"name", d.name}, {"description", d.description}, {"inputSchema", d.input_schema}});
      return SendResult(id, {{"tools", tools}});
    }
    if (method == "tools/call") return Enqueue(id, params);
    SendError(id, kMethodNotFound, "method not found: " + method);
  }

  // Waits for every queued and running call to answer.
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [this] { return queue_.empty() && running_ == 0; });
  }

  Status write_status() {
    std::lock_guard<std::mutex> lock(write_mu_);
    return write_status_;
  }

 private:
  struct Job {
    Json id;
    Json params;
    std::atomic<bool> cancel{false};
  };

  void HandleNotification(const std::string& method, const Json& params) {
    if (method != "notifications/cancelled" || !params.is_object() || !params.contains("requestId")) return;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(Dump(params["requestId"]));
    if (it != jobs_.end()) it->second->cancel = true;
  }

  void Enqueue(const Json& id, const Json& params) {
    if (!params.is_object() || !params.contains("name") || !params["name"].is_string())
      return SendError(id, kInvalidParams, "tools/call needs params.name (a string)");
    const std::string name = params["name"].get<std::string>();
    bool known = false;
    for (const ToolDefinition& d : tools_.Definitions()) known = known || d.name == name;
    if (!known) return SendError(id, kInvalidParams, "unknown tool: " + name);
    if (params.contains("arguments") && !params["arguments"].is_object())
      return SendError(id, kInvalidParams, "tools/call params.arguments must be an object");
    auto job = std::make_shared<Job>();
    job->id = id;
    job->params = params;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (jobs_.count(Dump(id)))
        return SendError(id, kInvalidRequest, "a request with id " + Dump(id) + " is in flight");
      jobs_[Dump(id)] = job;
      queue_.push_back(job);
    }
    cv_.notify_one();
  }

  void Work() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = queue_.front();
        queue_.pop_front();
        ++running_;
      }
      Run(*job);
      {
        std::lock_guard<std::mutex> lock(mu_);
        jobs_.erase(Dump(job->id));
        --running_;
      }
      idle_cv_.notify_all();
    }
  }

  void Run(Job& job) {
    if (job.cancel) return;  // cancelled while queued: no response
    ToolCallContext context;
    context.cancel = &job.cancel;
    const Json& meta = job.params.value("_meta", Json::object());
    if (meta.is_object() && meta.contains("progressToken")) {
      Json token = meta["progressToken"];
      context.progress = [this, token](double progress, double total, const std::string& message) {
        Json p = {{"progressToken", token}, {"progress", progress}};
        if (total > 0) p["total"] = total;
        if (!message.empty()) p["message"] = message;
        Send({{"jsonrpc", "2.0"}, {"method", "notifications/progress"}, {"params", p}});
      };
    }
    const Json args = job.params.value("arguments", Json::object());
    ToolOutcome outcome = tools_.Call(job.params["name"].get<std::string>(), Dump(args), context);
    if (job.cancel) return;
    Json result = {{"content", Json::array({{{"type", "text"}, {"text", outcome.text}}})},
                   {"isError", outcome.is_error}};
    if (!outcome.is_error) result["structuredContent"] = outcome.structured;
    SendResult(job.id, result);
  }

  void SendResult(const Json& id, Json result) {
    Send({{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}});
  }

  void SendError(const Json& id, int code, const std::string& message) {
    Send({{"jsonrpc", "2.0"}, {"id", id}, {"error", {{"code", code}, {"message", message}}}});
  }

  void Send(const Json& message) {
    std::string line = Dump(message) + "\n";
    std::lock_guard<std::mutex> lock(write_mu_);
    if (!write_status_.ok()) return;
    size_t off = 0;
    while (off < line.size()) {
      ssize_t n = ::write(out_fd_, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        write_status_ = IoError("writing to the MCP client failed: " + std::string(std::strerror(errno)));
        return;
      }
      off += static_cast<size_t>(n);
    }
  }

  ToolBox& tools_;
  const McpOptions& options_;
  const int out_fd_;

  std::mutex write_mu_;
  Status write_status_;  // guarded by write_mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::shared_ptr<Job>> queue_;            // guarded by mu_
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // queued and running, by id as JSON; guarded by mu_
  int running_ = 0;                                   // guarded by mu_
  bool stopping_ = false;                             // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace

std::string NegotiateProtocolVersion(const std::string& requested) {
  for (const char* v : kProtocolVersions)
    if (requested == v) return requested;
  return kProtocolVersions[std::size(kProtocolVersions) - 1];
}

Status ServeMcp(ToolBox& tools, const McpOptions& options, int in_fd, int out_fd) {
  Server server(tools, options, out_fd);
  std::string buffer;
  char chunk[65536];
  for (;;) {
    ssize_t n = ::read(in_fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    buffer.append(chunk, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n', start)) {
      std::string line = buffer.substr(start, nl - start);
      start = nl + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.find_first_not_of(" \t") != std::string::npos) server.Handle(line);
    }
    buffer.erase(0, start);
    if (!server.write_status().ok()) break;
  }
  if (buffer.find_first_not_of(" \t\r") != std::string::npos) server.Handle(buffer);
  server.Drain();
  return server.write_status();
}

}  // namespace lr::agent
