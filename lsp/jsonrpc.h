// JSON-RPC 2.0 over a pair of pipes with LSP's Content-Length framing.
//
// FrameDecoder turns a byte stream into message bodies. It takes bytes in any pieces (partial headers, several
// messages in one read, bodies of hundreds of megabytes) and reports a damaged stream (a header line that is not
// `Name: value`, no or a non-numeric Content-Length, a body over the size limit, a header block over 8 KiB) as
// kCorrupt naming what it saw. After an error the stream cannot be resynchronised: the connection is broken.
//
// Connection runs one I/O thread per server that reads stdout (messages) and stderr (kept as a tail for logs) and
// dispatches: a response completes the request with that id; a notification goes to the notification handler; a
// request from the server goes to the request handler and its answer (or a MethodNotFound error) is written back.
// Handlers run on the I/O thread, in the order messages arrived, so a response is seen only after every
// notification the server sent before it.
//
// The connection is broken, for good, by end-of-file on stdout, a framing error, a body that is not a JSON object, or
// a failed write (the server is gone). Every waiting and later request then fails with a Status that says why
// (kUnavailable for a dead peer, kCorrupt for garbage). Writes never raise SIGPIPE and never block past a deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/status.h"

namespace lr::lsp {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// LSP / JSON-RPC error codes the client acts on.
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kRequestCancelled = -32800;
inline constexpr int kContentModified = -32801;
inline constexpr int kWorkerExited = -32901;   // Lean: the file worker exited
inline constexpr int kWorkerCrashed = -32902;  // Lean: the file worker crashed
// What a Status from -32902/-32901 says (RpcErrorToStatus), so that a worker crash can be told from other failures.
inline constexpr char kWorkerCrashText[] = "Lean's file worker crashed or exited";

class FrameDecoder {
 public:
  explicit FrameDecoder(size_t max_body_bytes = size_t{1} << 30) : max_body_bytes_(max_body_bytes) {}

  void Feed(std::string_view bytes) { buffer_.append(bytes); }
  // The next complete body; nullopt when more bytes are needed; kCorrupt when the stream is damaged.
  Result<std::optional<std::string>> Next();
  // Bytes received but not yet returned as a body.
  size_t pending_bytes() const { return buffer_.size() - consumed_; }

 private:
  std::string buffer_;
  size_t consumed_ = 0;
  size_t max_body_bytes_;
};

// "Content-Length: N\r\n\r\n" + body.
std::string EncodeFrame(std::string_view body);

// Maps a JSON-RPC error object to a Status: -32902/-32901 (Lean's worker crashed/exited) and a dead peer are
// kUnavailable, -32800 kCancelled, others kInternal; the message names the method, the code and Lean's text.
Status RpcErrorToStatus(const std::string& method, const Json& error);

class Connection {
 public:
  using NotificationHandler = std::function<void(const std::string& method, const Json& params)>;
  // Answers a request from the server. Returning nullopt answers MethodNotFound.
  using RequestHandler = std::function<std::optional<Json>(const std::string& method, const Json& params)>;

  // Takes no ownership of the descriptors; `write_fd` must be non-blocking. `peer` names the server in messages.
  Connection(std::string peer, int write_fd, int read_fd, int stderr_fd, NotificationHandler on_notification,
             RequestHandler on_request);
  ~Connection();  // stops the I/O thread
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Sends a request and waits for its response until `deadline`, or until the cancel flag (SetCancel) is set. On
  // timeout or cancellation sends `$/cancelRequest` and returns kTimeout or kCancelled. The result is the response's
  // `result` (possibly null).
  Result<Json> Request(const std::string& method, const Json& params, Clock::time_point deadline);
  Status Notify(const std::string& method, const Json& params, Clock::time_point deadline);

  // A flag that, once set, makes waiting and later requests and writes return kCancelled within kCancelPoll. Null:
  // none. The flag must outlive its use here.
  void SetCancel(const std::atomic<bool>* cancel) { cancel_.store(cancel); }
  static constexpr std::chrono::milliseconds kCancelPoll{50};

  // OK while the connection works; otherwise why it broke.
  Status broken() const;
  std::string StderrTail() const;
  // Total bytes of message bodies received (for benchmarks and logs).
  uint64_t bytes_received() const;

 private:
  struct Pending {
    std::string method;
    bool done = false;
    Result<Json> result = Status(StatusCode::kInternal, "no response yet");
  };

  Status Write(const std::string& frame, Clock::time_point deadline);
  void IoLoop();
  void Dispatch(const std::string& body);
  void Break(Status why);
  bool Cancelled() const;

  std::string peer_;
  int write_fd_;
  int read_fd_;
  int stderr_fd_;
  int wake_pipe_[2] = {-1, -1};
  NotificationHandler on_notification_;
  RequestHandler on_request_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, Pending*> pending_;  // guarded by mu_
  int64_t next_id_ = 1;                  // guarded by mu_
  Status broken_;                        // guarded by mu_
  std::string stderr_tail_;              // guarded by mu_
  uint64_t bytes_received_ = 0;          // guarded by mu_
  std::mutex write_mu_;
  std::atomic<const std::atomic<bool>*> cancel_{nullptr};
  std::thread io_thread_;
};

}  // namespace lr::lsp
