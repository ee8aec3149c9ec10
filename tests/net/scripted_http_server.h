// A loopback HTTP server for tests that plays back scripted replies: one reply per connection, in order, written as
// raw bytes with pauses between parts, then the connection is closed. It exists to produce what a well-behaved server
// never sends: rate limits, 5xx, silences, malformed event streams, a hang-up mid-stream.
#pragma once

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace lr::net::testing {

struct ScriptedReply {
  struct Part {
    int delay_ms = 0;  // pause before writing `bytes`
    std::string bytes;
  };
  std::vector<Part> parts;
};

// A complete HTTP/1.1 reply with a Content-Length body.
ScriptedReply HttpReply(int status, const std::string& content_type, const std::string& body,
                        const std::vector<std::string>& extra_headers = {});

// A 200 text/event-stream reply: each element of `events` is written as "data: <event>\n\n" after `delay_ms`; the body
// ends when the connection closes.
ScriptedReply SseReply(const std::vector<std::string>& events, int delay_ms = 0);

class ScriptedHttpServer {
 public:
  // Listens on 127.0.0.1 (a free port) and serves `replies` in order; connections beyond them get a 500.
  explicit ScriptedHttpServer(std::vector<ScriptedReply> replies);
  ~ScriptedHttpServer();  // stops within a few milliseconds, even mid-reply

  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

  // The requests received so far (head and body), one per connection.
  std::vector<std::string> requests() const;

 private:
  void Serve();
  void Reply(int fd, const ScriptedReply& reply);

  std::vector<ScriptedReply> replies_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

}  // namespace lr::net::testing
