#include "tests/net/scripted_http_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cassert>
#include <chrono>
#include <cstdlib>

namespace lr::net::testing {
namespace {

const char* Reason(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Status";
  }
}

// Reads one request (head, then Content-Length bytes of body) within `budget_ms`.
std::string ReadRequest(int fd, int budget_ms) {
  std::string data;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(budget_ms);
  size_t want = std::string::npos;
  while (std::chrono::steady_clock::now() < deadline && data.size() < (1u << 20)) {
    size_t head_end = data.find("\r\n\r\n");
    if (head_end != std::string::npos && want == std::string::npos) {
      size_t body = 0;
      size_t cl = data.find("Content-Length:");
      if (cl == std::string::npos) cl = data.find("content-length:");
      if (cl != std::string::npos && cl < head_end) body = std::strtoul(data.c_str() + cl + 15, nullptr, 10);
      want = head_end + 4 + body;
    }
    if (want != std::string::npos && data.size() >= want) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 20) <= 0) continue;
    char buf[4096];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

}  // namespace

ScriptedReply HttpReply(int status, const std::string& content_type, const std::string& body,
                        const std::vector<std::string>& extra_headers) {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + Reason(status) + "\r\nContent-Type: " + content_type +
                     "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n";
  for (const std::string& h : extra_headers) head += h + "\r\n";
  return ScriptedReply{{{0, head + "\r\n" + body}}};
}

ScriptedReply SseReply(const std::vector<std::string>& events, int delay_ms) {
  ScriptedReply r;
  r.parts.push_back({0, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"});
  for (const std::string& e : events) r.parts.push_back({delay_ms, "data: " + e + "\n\n"});
  return r;
}

ScriptedHttpServer::ScriptedHttpServer(std::vector<ScriptedReply> replies) : replies_(std::move(replies)) {
  listen_fd_ = socket(AF_INET, SOCK_STREAM, 0);
  assert(listen_fd_ >= 0);
  int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  int rc = bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  assert(rc == 0);
  rc = listen(listen_fd_, 16);
  assert(rc == 0);
  socklen_t len = sizeof addr;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  (void)rc;
  thread_ = std::thread([this] { Serve(); });
}

ScriptedHttpServer::~ScriptedHttpServer() {
  stop_ = true;
  thread_.join();
  close(listen_fd_);
}

std::vector<std::string> ScriptedHttpServer::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

void ScriptedHttpServer::Serve() {
  size_t next = 0;
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (poll(&p, 1, 10) <= 0) continue;
    int fd = accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) continue;
    std::string request = ReadRequest(fd, 2000);
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(request);
    }
    if (next < replies_.size()) {
      Reply(fd, replies_[next++]);
    } else {
      Reply(fd, HttpReply(500, "application/json", R"({"error":{"message":"script exhausted"}})"));
    }
    close(fd);
  }
}

void ScriptedHttpServer::Reply(int fd, const ScriptedReply& reply) {
  for (const ScriptedReply::Part& part : reply.parts) {
    auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(part.delay_ms);
    while (std::chrono::steady_clock::now() < until) {
      if (stop_) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (send(fd, part.bytes.data(), part.bytes.size(), MSG_NOSIGNAL) < 0) return;  // the client hung up
  }
}

}  // namespace lr::net::testing
