#include "lsp/jsonrpc.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

namespace lr::lsp {
namespace {

constexpr size_t kMaxHeaderBytes = 8192;
constexpr size_t kStderrTailBytes = 16384;
constexpr auto kAnswerWriteTimeout = std::chrono::seconds(10);

// A short printable excerpt of bytes for error messages.
std::string Excerpt(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 60)) out += (c >= 32 && c < 127) ? c : '.';
  if (s.size() > 60) out += "...";
  return out;
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) return false;
  return true;
}

int RemainingMs(Clock::time_point deadline) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return ms < 0 ? 0 : ms > 1000000 ? 1000000 : static_cast<int>(ms);
}

}  // namespace

Result<std::optional<std::string>> FrameDecoder::Next() {
  std::string_view rest(buffer_.data() + consumed_, buffer_.size() - consumed_);
  size_t header_end = rest.substr(0, kMaxHeaderBytes + 4).find("\r\n\r\n");
  if (header_end == std::string_view::npos) {
    if (rest.size() > kMaxHeaderBytes)
      return Corrupt("no end of JSON-RPC header within 8 KiB; stream starts with '" + Excerpt(rest) + "'");
    return std::optional<std::string>();
  }
  std::optional<size_t> length;
  std::string_view headers = rest.substr(0, header_end);
  while (!headers.empty()) {
    size_t eol = headers.find("\r\n");
    std::string_view line = headers.substr(0, eol);
    headers = eol == std::string_view::npos ? std::string_view() : headers.substr(eol + 2);
    size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return Corrupt("bad JSON-RPC header line '" + Excerpt(line) + "' (expected 'Name: value')");
    std::string_view name = line.substr(0, colon);
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    while (!value.empty() && value.back() == ' ') value.remove_suffix(1);
    if (!EqualsIgnoreCase(name, "Content-Length")) continue;  // Content-Type and others carry nothing we need
    if (value.empty() || value.size() > 12)
      return Corrupt("bad Content-Length '" + Excerpt(value) + "' (expected a decimal byte count)");
    size_t n = 0;
    for (char c : value) {
      if (c < '0' || c > '9')
        return Corrupt("bad Content-Length '" + Excerpt(value) + "' (expected a decimal byte count)");
      n = n * 10 + static_cast<size_t>(c - '0');
    }
    length = n;
  }
  if (!length) return Corrupt("JSON-RPC header without Content-Length: '" + Excerpt(rest.substr(0, header_end)) + "'");
  if (*length > max_body_bytes_)
    return Corrupt("JSON-RPC message of " + std::to_string(*length) + " bytes is over the limit of " +
                   std::to_string(max_body_bytes_));
  size_t body_start = header_end + 4;
  if (rest.size() - body_start < *length) return std::optional<std::string>();
  std::string body(rest.substr(body_start, *length));
  consumed_ += body_start + *length;
  if (consumed_ > buffer_.size() / 2) {  // compact, keeping appends amortised O(1)
    buffer_.erase(0, consumed_);
    consumed_ = 0;
  }
  return std::optional<std::string>(std::move(body));
}

std::string EncodeFrame(std::string_view body) {
  std::string frame = "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n";
  frame.append(body);
  return frame;
}

Status RpcErrorToStatus(const std::string& method, const Json& error) {
  int code =
      error.is_object() && error.contains("code") && error["code"].is_number_integer() ? error["code"].get<int>() : 0;
  std::string text = error.is_object() && error.contains("message") && error["message"].is_string()
                         ? error["message"].get<std::string>()
                         : error.dump();
  std::string message = method + " failed with LSP error " + std::to_string(code) + ": " + text;
  switch (code) {
    case kWorkerCrashed:
    case kWorkerExited: return Unavailable(std::string(kWorkerCrashText) + " (" + message + ")");
    case kRequestCancelled: return Cancelled(message);
    case kContentModified: return Unavailable(message);
    default: return Internal(message);
  }
}

Connection::Connection(std::string peer, int write_fd, int read_fd, int stderr_fd, NotificationHandler on_notification,
                       RequestHandler on_request)
    : peer_(std::move(peer)),
      write_fd_(write_fd),
      read_fd_(read_fd),
      stderr_fd_(stderr_fd),
      on_notification_(std::move(on_notification)),
      on_request_(std::move(on_request)) {
  if (::pipe2(wake_pipe_, O_CLOEXEC) != 0) {
    broken_ = IoError(std::string("pipe2 for the I/O thread of ") + peer_ + ": " + std::strerror(errno));
    return;
  }
  io_thread_ = std::thread([this] { IoLoop(); });
}

Connection::~Connection() {
  if (io_thread_.joinable()) {
    char c = 0;
    (void)!::write(wake_pipe_[1], &c, 1);
    io_thread_.join();
  }
  for (int fd : wake_pipe_)
    if (fd >= 0) ::close(fd);
}

Status Connection::broken() const {
  std::lock_guard<std::mutex> lock(mu_);
  return broken_;
}

std::string Connection::StderrTail() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stderr_tail_;
}

uint64_t Connection::bytes_received() const {
  std::lock_guard<std::mutex> lock(mu_);
  return bytes_received_;
}

void Connection::Break(Status why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!broken_.ok()) return;
  broken_ = std::move(why);
  for (auto& [id, p] : pending_) {
    p->done = true;
    p->result = broken_;
  }
  pending_.clear();
  cv_.notify_all();
}

bool Connection::Cancelled() const {
  const std::atomic<bool>* cancel = cancel_.load();
  return cancel != nullptr && cancel->load();
}

Status Connection::Write(const std::string& frame, Clock::time_point deadline) {
  std::lock_guard<std::mutex> lock(write_mu_);
  LR_RETURN_IF_ERROR(broken());
  size_t off = 0;
  while (off < frame.size()) {
    ssize_t n = ::write(write_fd_, frame.data() + off, frame.size() - off);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{write_fd_, POLLOUT, 0};
      int r = ::poll(&p, 1, std::min<int>(RemainingMs(deadline), kCancelPoll.count()));
      if (r == 0 && Clock::now() < deadline && !Cancelled()) continue;
      if (r == 0) {
        if (Cancelled()) {
          Status s = lr::Cancelled(peer_ + ": a write was cancelled");
          if (off > 0) Break(Unavailable(s.message()));
          return s;
        }
        // Part of a frame may be out: the stream can no longer be trusted.
        Status s = Timeout(peer_ + " stopped reading its input (a write did not finish before the deadline)");
        if (off > 0) Break(Unavailable(s.message()));
        return s;
      }
      if (r < 0 && errno != EINTR) {
        Status s = IoError("poll on the input of " + peer_ + ": " + std::strerror(errno));
        Break(s);
        return s;
      }
      continue;
    }
    Status s = Unavailable(peer_ + " closed its input (" + std::string(std::strerror(errno)) + "); it has exited?");
    Break(s);
    return s;
  }
  return Status::Ok();
}

Result<Json> Connection::Request(const std::string& method, const Json& params, Clock::time_point deadline) {
  Pending pending;
  pending.method = method;
  int64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!broken_.ok()) return broken_;
    id = next_id_++;
    pending_[id] = &pending;
  }
  Json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", params}};
  Status written = Write(EncodeFrame(msg.dump()), deadline);
  std::unique_lock<std::mutex> lock(mu_);
  if (!written.ok()) {
    pending_.erase(id);
    return written;
  }
  while (!pending.done && Clock::now() < deadline && !Cancelled())
    cv_.wait_until(lock, std::min(deadline, Clock::now() + kCancelPoll));
  if (pending.done) {
    return std::move(pending.result);
  }
  pending_.erase(id);
  lock.unlock();
  const bool cancelled = Cancelled();
  (void)Notify("$/cancelRequest", Json{{"id", id}}, Clock::now() + std::chrono::seconds(1));
  if (cancelled) return lr::Cancelled(peer_ + ": " + method + " (request " + std::to_string(id) + ") was cancelled");
  return Timeout(peer_ + " did not answer " + method + " (request " + std::to_string(id) + ") before the deadline");
}

Status Connection::Notify(const std::string& method, const Json& params, Clock::time_point deadline) {
  Json msg = {{"jsonrpc", "2.0"}, {"method", method}, {"params", params}};
  return Write(EncodeFrame(msg.dump()), deadline);
}

void Connection::Dispatch(const std::string& body) {
  Json msg = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded() || !msg.is_object()) {
    Break(Corrupt(peer_ + " sent a message that is not a JSON object: '" + Excerpt(body) + "'"));
    return;
  }
  bool has_method = msg.contains("method") && msg["method"].is_string();
  bool has_id = msg.contains("id") && !msg["id"].is_null();
  if (!has_method) {
    if (!has_id || !msg["id"].is_number_integer()) return;  // a response to nothing we sent: ignore it
    int64_t id = msg["id"].get<int64_t>();
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return;  // answered after we gave up on it
    Pending* p = it->second;
    pending_.erase(it);
    p->done = true;
    if (msg.contains("error"))
      p->result = RpcErrorToStatus(p->method, msg["error"]);
    else
      p->result = msg.contains("result") ? msg["result"] : Json();
    cv_.notify_all();
    return;
  }
  std::string method = msg["method"].get<std::string>();
  Json params = msg.contains("params") ? msg["params"] : Json();
  if (!has_id) {
    if (on_notification_) on_notification_(method, params);
    return;
  }
  std::optional<Json> answer = on_request_ ? on_request_(method, params) : std::nullopt;
  Json reply = {{"jsonrpc", "2.0"}, {"id", msg["id"]}};
  if (answer)
    reply["result"] = *answer;
  else
    reply["error"] = {{"code", kMethodNotFound}, {"message", "leanrotor does not handle " + method}};
  (void)Write(EncodeFrame(reply.dump()), Clock::now() + kAnswerWriteTimeout);
}

void Connection::IoLoop() {
  FrameDecoder decoder;
  std::string chunk(1 << 16, '\0');
  bool out_open = true, err_open = stderr_fd_ >= 0;
  while (out_open || err_open) {
    pollfd fds[3] = {
        {wake_pipe_[0], POLLIN, 0}, {out_open ? read_fd_ : -1, POLLIN, 0}, {err_open ? stderr_fd_ : -1, POLLIN, 0}};
    int r = ::poll(fds, 3, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      Break(IoError("poll on the output of " + peer_ + ": " + std::strerror(errno)));
      return;
    }
    if (fds[0].revents) return;
    if (fds[2].revents) {
      ssize_t n = ::read(stderr_fd_, chunk.data(), chunk.size());
      if (n <= 0 && !(n < 0 && errno == EINTR)) {
        err_open = false;
      } else if (n > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        stderr_tail_.append(chunk.data(), static_cast<size_t>(n));
        if (stderr_tail_.size() > kStderrTailBytes) stderr_tail_.erase(0, stderr_tail_.size() - kStderrTailBytes);
      }
    }
    if (!fds[1].revents) continue;
    ssize_t n = ::read(read_fd_, chunk.data(), chunk.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      out_open = false;
      size_t left = decoder.pending_bytes();
      Break(Unavailable(peer_ + " closed its output" +
                        (left ? " in the middle of a message (" + std::to_string(left) + " bytes unread)" : "") +
                        "; the server has exited or crashed"));
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!broken_.ok()) continue;  // after a protocol error the rest of stdout is drained and dropped
    }
    decoder.Feed(std::string_view(chunk.data(), static_cast<size_t>(n)));
    for (;;) {
      auto next = decoder.Next();
      if (!next.ok()) {
        Break(next.status().WithContext("output of " + peer_));
        break;
      }
      if (!next->has_value()) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        bytes_received_ += (*next)->size();
      }
      Dispatch(**next);
    }
  }
}

}  // namespace lr::lsp
