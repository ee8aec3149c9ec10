// Errors as values at module boundaries.
//
// Every function that can fail because of its input or its environment (a file, a peer process, a server, a user
// flag) returns a Status or a Result<T>. The message is for a person: it names the thing at fault (file and field,
// tensor, JSON-RPC peer, HTTP endpoint, JSONL line) and says what was expected. Programming errors (broken
// invariants inside one module) are asserts, not Statuses.
//
// The code says what kind of failure it is, so that callers can act on it without parsing messages:
// for example the agent reports kUnavailable from the Lean pool as an infrastructure error, never as a failed proof,
// and `leanrotor check` maps it to exit code 2.
#pragma once

#include <cassert>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace lr {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // the caller's input is malformed (a flag, a shape, a JSONL line)
  kNotFound,           // a named file, tensor, key, model or theorem does not exist
  kCorrupt,            // a file or message is damaged or truncated (GGUF, JSON-RPC frame, SSE stream)
  kUnsupported,        // well-formed but not handled by this build (a weight type, an architecture)
  kIo,                 // the operating system refused (open, read, write, rename, spawn)
  kUnavailable,        // a peer cannot be reached or died (Lean server, HTTP endpoint); retrying may help
  kTimeout,            // a deadline passed
  kCancelled,          // the caller asked to stop
  kResourceExhausted,  // a budget or limit was hit (memory cap, KV budget, queue full)
  kInternal,           // a peer broke its own protocol in a way we cannot classify further
};

std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "<code name>: <message>", or "OK".
  std::string ToString() const;

  // Returns a copy whose message is "context: message" (e.g. the file name in front of a field error).
  Status WithContext(std::string_view context) const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status Corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status Unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status IoError(std::string m) { return {StatusCode::kIo, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Timeout(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// The first error that any of several threads records (the rest are dropped): how a parallel region's failures
// reach the Status its caller returns. Record is thread-safe.
class FirstError {
 public:
  void Record(const Status& status) {
    if (status.ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (first_.ok()) first_ = status;
  }
  // The recorded error (OK when none), and clears it.
  Status Take() {
    std::lock_guard<std::mutex> lock(mu_);
    return std::exchange(first_, Status::Ok());
  }

 private:
  std::mutex mu_;
  Status first_;
};

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "Result built from an OK Status has no value");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(v_);
  }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace lr

// Early return on failure: LR_RETURN_IF_ERROR(status_expr); LR_ASSIGN_OR_RETURN(auto x, result_expr);
#define LR_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::lr::Status lr_status_ = (expr);        \
    if (!lr_status_.ok()) return lr_status_; \
  } while (0)

#define LR_CONCAT_INNER(a, b) a##b
#define LR_CONCAT(a, b) LR_CONCAT_INNER(a, b)
#define LR_ASSIGN_OR_RETURN(lhs, expr) LR_ASSIGN_OR_RETURN_IMPL(LR_CONCAT(lr_result_, __LINE__), lhs, expr)
#define LR_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()
