#include "net/remote_model.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <random>
#include <thread>

#include "net/http_sse.h"

namespace lr::net {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr size_t kMaxErrorBody = 64 * 1024;  // what we keep of a non-200 reply for its message

std::string Clip(std::string_view s, size_t max = 300) {
  if (s.size() <= max) return std::string(s);
  return std::string(s.substr(0, max)) + "...";
}

// The server's own error text from an error body: OpenAI {"error": {"message"}}, {"error": "..."},
// Mistral {"message": ...} or {"detail": ...}; else the body itself.
std::string ServerErrorText(std::string_view body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) {
    if (j.contains("error")) {
      const json& e = j["error"];
      if (e.is_string()) return e.get<std::string>();
      if (e.is_object() && e.contains("message") && e["message"].is_string()) return e["message"].get<std::string>();
    }
    if (j.contains("message") && j["message"].is_string()) return j["message"].get<std::string>();
    if (j.contains("detail")) return j["detail"].is_string() ? j["detail"].get<std::string>() : j["detail"].dump();
  }
  return body.empty() ? std::string("(empty body)") : Clip(body);
}

bool IsRetryableHttp(long code) { return code == 408 || code == 429 || code >= 500; }

Status StatusFromHttp(long code, const std::string& where, const std::string& text, const std::string& key_var) {
  std::string m = where + ": HTTP " + std::to_string(code) + ": " + text;
  if (code == 401 || code == 403) return InvalidArgument(m + " (set " + key_var + " to a valid API key)");
  if (code == 404) return NotFound(m + " (check the base URL and the model id)");
  if (IsRetryableHttp(code)) return Unavailable(m);
  if (code >= 400) return InvalidArgument(m);
  return Internal(m + " (unexpected status)");
}

// Reads the streamed chunks of one request into choices.
class ChunkReader {
 public:
  ChunkReader(std::string endpoint, int n, int index_offset, const StreamCallback& on_piece, std::string key_var)
      : endpoint_(std::move(endpoint)),
        key_var_(std::move(key_var)),
        on_piece_(on_piece),
        offset_(index_offset),
        parts_(n) {}

  // One event's data. A non-OK Status (kCorrupt, or the server's mid-stream error) or cancellation stops the stream.
  Status OnEvent(std::string_view data) {
    if (data == "[DONE]") {
      done_ = true;
      return Status::Ok();
    }
    json chunk = json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (chunk.is_discarded() || !chunk.is_object())
      return Corrupt(endpoint_ + ": stream event is not a JSON object: " + Clip(data));
    if (chunk.contains("error")) {
      const json& e = chunk["error"];
      long code = e.is_object() && e.contains("code") && e["code"].is_number_integer() ? e["code"].get<long>() : 0;
      std::string text = ServerErrorText(data);
      if (code >= 400) return StatusFromHttp(code, endpoint_ + " (mid-stream)", text, key_var_);
      return Internal(endpoint_ + ": the server reported an error mid-stream: " + text);
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) LR_RETURN_IF_ERROR(ReadUsage(chunk["usage"]));
    if (!chunk.contains("choices") || chunk["choices"].is_null()) return Status::Ok();
    if (!chunk["choices"].is_array()) return Corrupt(endpoint_ + ": stream chunk field 'choices' is not an array");
    for (const json& c : chunk["choices"]) LR_RETURN_IF_ERROR(ReadChoice(c));
    return Status::Ok();
  }

  bool cancelled() const { return cancelled_; }
  void Cancel() { cancelled_ = true; }  // the caller's cancel flag: the choices seen so far end as "cancelled"
  bool delivered() const { return delivered_; }
  bool done() const { return done_; }
  bool all_finished() const {
    for (const Part& p : parts_)
      if (p.seen && p.choice.finish_reason.empty()) return false;
    return std::any_of(parts_.begin(), parts_.end(), [](const Part& p) { return p.seen; });
  }

  // The choices seen (a server may return fewer than asked), in index order.
  Result<Completion> Take() {
    Completion out;
    for (size_t i = 0; i < parts_.size(); ++i) {
      Part& p = parts_[i];
      if (!p.seen) {
        for (size_t j = i + 1; j < parts_.size(); ++j)
          if (parts_[j].seen)
            return Corrupt(endpoint_ + ": the stream has choice " + std::to_string(j) + " but not choice " +
                           std::to_string(i));
        break;
      }
      if (p.choice.finish_reason.empty()) {
        if (!cancelled_)
          return Corrupt(endpoint_ + ": the stream ended without a finish_reason for choice " + std::to_string(i));
        p.choice.finish_reason = "cancelled";
      }
      if (p.choice.finish_reason == "model_length") p.choice.finish_reason = "length";  // Mistral's name
      p.choice.completion_tokens = p.pieces;
      out.choices.push_back(std::move(p.choice));
    }
    if (have_usage_) {
      out.usage = usage_;
      if (out.choices.size() == 1) out.choices[0].completion_tokens = usage_.completion_tokens;
    } else {
      for (const Choice& c : out.choices) out.usage.completion_tokens += c.completion_tokens;
    }
    return out;
  }

 private:
  struct Part {
    Choice choice;
    bool seen = false;
    int pieces = 0;  // content or tool-call deltas: one per token on the servers we know
  };

  Status ReadUsage(const json& u) {
    auto get = [&](const json& obj, const char* field, int& out) -> Status {
      if (!obj.contains(field) || obj[field].is_null()) return Status::Ok();
      if (!obj[field].is_number_integer() || obj[field].get<int64_t>() < 0)
        return Corrupt(endpoint_ + ": usage." + field + " is not a non-negative integer");
      out = obj[field].get<int>();
      return Status::Ok();
    };
    LR_RETURN_IF_ERROR(get(u, "prompt_tokens", usage_.prompt_tokens));
    LR_RETURN_IF_ERROR(get(u, "completion_tokens", usage_.completion_tokens));
    int cached = 0;
    if (u.contains("prompt_tokens_details") && u["prompt_tokens_details"].is_object())
      LR_RETURN_IF_ERROR(get(u["prompt_tokens_details"], "cached_tokens", cached));
    usage_.prompt_tokens_computed = std::max(0, usage_.prompt_tokens - cached);
    have_usage_ = true;
    return Status::Ok();
  }

  Status ReadChoice(const json& c) {
    if (!c.is_object() || !c.contains("index") || !c["index"].is_number_integer())
      return Corrupt(endpoint_ + ": stream choice without an integer 'index'");
    int64_t index = c["index"].get<int64_t>();
    if (index < 0 || index >= static_cast<int64_t>(parts_.size()))
      return Corrupt(endpoint_ + ": stream choice index " + std::to_string(index) + " is out of range (asked for " +
                     std::to_string(parts_.size()) + ")");
    Part& p = parts_[index];
    p.seen = true;
    if (c.contains("delta") && !c["delta"].is_null()) {
      const json& d = c["delta"];
      if (!d.is_object()) return Corrupt(endpoint_ + ": stream choice 'delta' is not an object");
      if (d.contains("content") && !d["content"].is_null()) {
        if (!d["content"].is_string()) return Corrupt(endpoint_ + ": delta.content is not a string");
        std::string piece = d["content"].get<std::string>();
        if (!piece.empty()) {
          ++p.pieces;
          p.choice.text += piece;
          delivered_ = true;
          if (on_piece_ && !on_piece_(static_cast<int>(index) + offset_, piece)) {
            cancelled_ = true;
            return Cancelled("cancelled by the caller");
          }
        }
      }
      if (d.contains("tool_calls") && !d["tool_calls"].is_null())
        LR_RETURN_IF_ERROR(ReadToolCallDeltas(d["tool_calls"], p));
    }
    if (c.contains("finish_reason") && !c["finish_reason"].is_null()) {
      if (!c["finish_reason"].is_string()) return Corrupt(endpoint_ + ": finish_reason is not a string");
      p.choice.finish_reason = c["finish_reason"].get<std::string>();
      if (p.choice.finish_reason == "error")
        return Internal(endpoint_ + ": the server ended choice " + std::to_string(index) + " with an error");
    }
    return Status::Ok();
  }

  // Deltas carry an index into the call list; id and name arrive once, the arguments text in pieces. A delta
  // without an index (Mistral sends whole calls) starts a new call.
  Status ReadToolCallDeltas(const json& deltas, Part& p) {
    if (!deltas.is_array()) return Corrupt(endpoint_ + ": delta.tool_calls is not an array");
    std::vector<ToolCall>& calls = p.choice.tool_calls;
    for (const json& d : deltas) {
      if (!d.is_object()) return Corrupt(endpoint_ + ": a delta.tool_calls entry is not an object");
      size_t at = calls.size();
      if (d.contains("index") && !d["index"].is_null()) {
        if (!d["index"].is_number_integer() || d["index"].get<int64_t>() < 0 || d["index"].get<int64_t>() > 1024)
          return Corrupt(endpoint_ + ": delta.tool_calls[].index is not a small non-negative integer");
        at = d["index"].get<size_t>();
      }
      if (at >= calls.size()) calls.resize(at + 1);
      ToolCall& call = calls[at];
      if (d.contains("id") && d["id"].is_string()) call.id = d["id"].get<std::string>();
      if (d.contains("function") && d["function"].is_object()) {
        const json& f = d["function"];
        if (f.contains("name") && f["name"].is_string()) call.name += f["name"].get<std::string>();
        if (f.contains("arguments") && !f["arguments"].is_null()) {
          if (f["arguments"].is_string()) {
            call.arguments_json += f["arguments"].get<std::string>();
          } else if (f["arguments"].is_object()) {
            call.arguments_json += f["arguments"].dump();
          } else {
            return Corrupt(endpoint_ + ": tool call arguments are neither a string nor an object");
          }
        }
      }
      ++p.pieces;
      delivered_ = true;
    }
    return Status::Ok();
  }

  std::string endpoint_;
  std::string key_var_;
  const StreamCallback& on_piece_;
  int offset_;
  std::vector<Part> parts_;
  Usage usage_;
  bool have_usage_ = false;
  bool done_ = false;
  bool cancelled_ = false;
  bool delivered_ = false;
};

// One HTTP attempt: its outcome and, when it failed, whether and when to retry.
struct Attempt {
  Result<Completion> result = Internal("not run");
  bool retryable = false;
  int retry_after_ms = -1;  // from the Retry-After header, when the server sent one in seconds
};

// State the libcurl callbacks share.
struct Transfer {
  CURL* easy = nullptr;
  ChunkReader* reader = nullptr;
  SseParser sse;
  Status stream_status;  // the first error the reader reported
  std::string error_body;
  long http_code = 0;
  int retry_after_ms = -1;
  std::string content_type;
  Clock::time_point last_byte;
};

size_t OnHeader(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  t->last_byte = Clock::now();
  std::string_view line(data, size * count);
  size_t colon = line.find(':');
  if (colon == std::string_view::npos) return size * count;
  std::string name(line.substr(0, colon));
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' '))
    value.remove_suffix(1);
  if (name == "retry-after") {
    char* end = nullptr;
    std::string v(value);
    long seconds = std::strtol(v.c_str(), &end, 10);
    if (end != v.c_str() && *end == '\0' && seconds >= 0)
      t->retry_after_ms = static_cast<int>(std::min(seconds, 86400L)) * 1000;
  } else if (name == "content-type") {
    t->content_type = std::string(value);
  }
  return size * count;
}

size_t OnBody(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t n = size * count;
  t->last_byte = Clock::now();
  if (t->http_code == 0) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->http_code);
  if (t->http_code != 200) {
    t->error_body.append(data, std::min(n, kMaxErrorBody - std::min(kMaxErrorBody, t->error_body.size())));
    return n;
  }
  if (t->content_type.rfind("text/event-stream", 0) != 0) return n;  // reported after the transfer
  Status s = t->sse.Feed(std::string_view(data, n), [t](std::string_view event) { return t->reader->OnEvent(event); });
  if (s.ok()) return n;
  t->stream_status = s;
  return 0;  // aborts the transfer
}

bool IsConnectionError(CURLcode code) {
  switch (code) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_OPERATION_TIMEDOUT:  // the connect timeout; the read timeout is ours
      return true;
    default: return false;
  }
}

struct CurlHandles {
  CURL* easy = curl_easy_init();
  CURLM* multi = curl_multi_init();
  curl_slist* headers = nullptr;
  ~CurlHandles() {
    if (multi && easy) curl_multi_remove_handle(multi, easy);
    if (easy) curl_easy_cleanup(easy);
    if (multi) curl_multi_cleanup(multi);
    curl_slist_free_all(headers);
  }
};

}  // namespace

const char* ApiKeyVariable(const std::string& base_url) {
  return DialectFor(base_url) == Dialect::kMistral ? "MISTRAL_API_KEY" : "OPENAI_API_KEY";
}

Dialect DialectFor(const std::string& base_url) {
  size_t scheme = base_url.find("://");
  std::string_view rest = std::string_view(base_url).substr(scheme == std::string::npos ? 0 : scheme + 3);
  std::string_view host = rest.substr(0, rest.find_first_of(":/"));
  constexpr std::string_view kMistralHost = "api.mistral.ai";
  return host == kMistralHost ? Dialect::kMistral : Dialect::kOpenAI;
}

Result<std::unique_ptr<RemoteModel>> RemoteModel::Create(RemoteOptions options) {
  const std::string& url = options.base_url;
  if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0)
    return InvalidArgument("remote base URL '" + url + "': expected http://HOST[:PORT]/v1 or https://...");
  if (options.model.empty()) return InvalidArgument("remote model " + url + ": no model id given");
  if (options.connect_timeout_ms <= 0 || options.read_timeout_ms <= 0 || options.max_attempts <= 0 ||
      options.backoff_initial_ms < 0 || options.backoff_max_ms < options.backoff_initial_ms)
    return InvalidArgument("remote model " + url + ": timeouts and attempts must be positive, backoff_max >= initial");
  static std::once_flag curl_once;
  static CURLcode curl_init = CURLE_OK;
  std::call_once(curl_once, [] { curl_init = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (curl_init != CURLE_OK)
    return Internal(std::string("libcurl initialisation failed: ") + curl_easy_strerror(curl_init));
  while (!options.base_url.empty() && options.base_url.back() == '/') options.base_url.pop_back();
  if (options.api_key.empty()) {
    const char* key = std::getenv(ApiKeyVariable(options.base_url));
    if (key != nullptr) options.api_key = key;
  }
  std::unique_ptr<RemoteModel> model(new RemoteModel(std::move(options)));
  model->endpoint_ = model->options_.base_url + "/chat/completions";
  model->dialect_ = DialectFor(model->options_.base_url);
  return model;
}

namespace {

// Runs one HTTP exchange for `request`, delivering pieces with indices shifted by `index_offset`.
Attempt RunAttempt(const RemoteOptions& options, const std::string& endpoint, const std::string& body, int n,
                   int index_offset, const StreamCallback& on_piece, const std::atomic<bool>* cancel) {
  Attempt attempt;
  const std::string where = "POST " + endpoint;
  const std::string key_var = ApiKeyVariable(options.base_url);
  ChunkReader reader(where, n, index_offset, on_piece, key_var);
  Transfer t;
  t.reader = &reader;
  CurlHandles h;
  if (!h.easy || !h.multi) {
    attempt.result = Internal("libcurl could not create a handle");
    return attempt;
  }
  t.easy = h.easy;
  char errbuf[CURL_ERROR_SIZE] = {0};
  h.headers = curl_slist_append(h.headers, "Content-Type: application/json");
  h.headers = curl_slist_append(h.headers, "Accept: text/event-stream");
  std::string auth = "Authorization: Bearer " + options.api_key;
  if (!options.api_key.empty()) h.headers = curl_slist_append(h.headers, auth.c_str());
  curl_easy_setopt(h.easy, CURLOPT_URL, endpoint.c_str());
  curl_easy_setopt(h.easy, CURLOPT_HTTPHEADER, h.headers);
  curl_easy_setopt(h.easy, CURLOPT_POSTFIELDS, body.data());
  curl_easy_setopt(h.easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
  curl_easy_setopt(h.easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(h.easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options.connect_timeout_ms));
  curl_easy_setopt(h.easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(h.easy, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(h.easy, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(h.easy, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(h.easy, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(h.easy, CURLOPT_WRITEDATA, &t);
  curl_multi_add_handle(h.multi, h.easy);

  // Drive the transfer ourselves so that the read timeout is exact and cancellation (a callback returning false)
  // takes effect on the next byte.
  const auto read_timeout = std::chrono::milliseconds(options.read_timeout_ms);
  t.last_byte = Clock::now();
  bool timed_out = false;
  int running = 1;
  while (running > 0) {
    CURLMcode mc = curl_multi_perform(h.multi, &running);
    if (mc != CURLM_OK) {
      attempt.result = Internal(where + ": libcurl: " + curl_multi_strerror(mc));
      return attempt;
    }
    if (running == 0) break;
    if (cancel != nullptr && cancel->load()) {
      reader.Cancel();
      break;
    }
    if (Clock::now() - t.last_byte > read_timeout) {
      timed_out = true;
      break;
    }
    curl_multi_poll(h.multi, nullptr, 0, 50, nullptr);
  }
  CURLcode code = CURLE_OK;
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(h.multi, &left))
    if (msg->msg == CURLMSG_DONE) code = msg->data.result;
  if (t.http_code == 0) curl_easy_getinfo(h.easy, CURLINFO_RESPONSE_CODE, &t.http_code);
  attempt.retry_after_ms = t.retry_after_ms;

  if (reader.cancelled()) {
    attempt.result = reader.Take();
    return attempt;
  }
  if (!t.stream_status.ok()) {
    attempt.result = t.stream_status;
    attempt.retryable = !reader.delivered() && t.stream_status.code() == StatusCode::kUnavailable;
    return attempt;
  }
  if (timed_out) {
    attempt.result =
        Timeout(where + ": no data from the server for " + std::to_string(options.read_timeout_ms) + " ms");
    return attempt;
  }
  if (code != CURLE_OK && t.http_code != 200 && t.http_code != 0 && !t.error_body.empty()) code = CURLE_OK;
  if (code != CURLE_OK) {
    std::string detail = errbuf[0] ? errbuf : curl_easy_strerror(code);
    if (reader.delivered()) {
      attempt.result = Unavailable(where + ": the connection broke mid-stream: " + detail);
    } else if (code == CURLE_OPERATION_TIMEDOUT) {
      attempt.result = Timeout(where + ": could not connect within " + std::to_string(options.connect_timeout_ms) +
                               " ms: " + detail);
      attempt.retryable = true;
    } else {
      attempt.result = Unavailable(where + ": " + detail);
      attempt.retryable = IsConnectionError(code);
    }
    return attempt;
  }
  if (t.http_code != 200) {
    attempt.result = StatusFromHttp(t.http_code, where, ServerErrorText(t.error_body), key_var);
    attempt.retryable = IsRetryableHttp(t.http_code);
    return attempt;
  }
  if (t.content_type.rfind("text/event-stream", 0) != 0) {
    attempt.result = Corrupt(where + ": expected a text/event-stream reply, got Content-Type '" + t.content_type + "'");
    return attempt;
  }
  Status s = t.sse.Finish([&](std::string_view event) { return reader.OnEvent(event); });
  if (!s.ok() && !reader.cancelled()) {
    attempt.result = s;
    return attempt;
  }
  if (!reader.done() && !reader.all_finished() && !reader.cancelled()) {
    attempt.result = Unavailable(where + ": the server closed the stream before finishing (no [DONE])");
    attempt.retryable = !reader.delivered();
    return attempt;
  }
  attempt.result = reader.Take();
  return attempt;
}

}  // namespace

Result<Completion> RemoteModel::Complete(const CompletionRequest& request, const StreamCallback& on_piece) {
  if (request.n < 1) return InvalidArgument("remote " + endpoint_ + ": n must be at least 1");
  if (request.messages.empty()) return InvalidArgument("remote " + endpoint_ + ": no messages");
  std::mt19937_64 rng(std::random_device{}());
  Completion out;
  bool cancelled = false;
  while (static_cast<int>(out.choices.size()) < request.n && !cancelled) {
    CompletionRequest part = request;
    part.n = request.n - static_cast<int>(out.choices.size());
    const std::string body = ChatRequestToJson(part, options_.model, dialect_).dump();
    Attempt attempt;
    for (int tries = 1;; ++tries) {
      attempt =
          RunAttempt(options_, endpoint_, body, part.n, static_cast<int>(out.choices.size()), on_piece, request.cancel);
      if (attempt.result.ok() || !attempt.retryable || tries >= options_.max_attempts) break;
      if (request.cancel != nullptr && request.cancel->load()) break;
      int cap = options_.backoff_initial_ms;
      for (int i = 1; i < tries && cap < options_.backoff_max_ms; ++i) cap *= 2;
      cap = std::min(cap, options_.backoff_max_ms);
      int wait_ms = std::uniform_int_distribution<int>(cap / 2, std::max(cap / 2, cap))(rng);
      if (attempt.retry_after_ms >= 0) wait_ms = std::min(attempt.retry_after_ms, options_.backoff_max_ms);
      std::this_thread::sleep_for(std::chrono::milliseconds(wait_ms));
    }
    if (!attempt.result.ok()) {
      Status s = attempt.result.status();
      if (s.code() == StatusCode::kUnavailable && options_.max_attempts > 1 && attempt.retryable)
        s = Unavailable(s.message() + " (after " + std::to_string(options_.max_attempts) + " attempts)");
      return s;
    }
    Completion& got = attempt.result.value();
    if (request.cancel != nullptr && request.cancel->load()) cancelled = true;  // the rest end as "cancelled"
    if (got.choices.empty() && cancelled) break;
    if (got.choices.empty()) return Corrupt("POST " + endpoint_ + ": the server returned no choices");
    for (Choice& c : got.choices) {
      cancelled = cancelled || c.finish_reason == "cancelled";
      out.choices.push_back(std::move(c));
    }
    if (out.usage.prompt_tokens == 0) out.usage.prompt_tokens = got.usage.prompt_tokens;
    out.usage.prompt_tokens_computed += got.usage.prompt_tokens_computed;
    out.usage.completion_tokens += got.usage.completion_tokens;
  }
  while (static_cast<int>(out.choices.size()) < request.n) out.choices.push_back(Choice{"", {}, "cancelled", 0});
  return out;
}

}  // namespace lr::net
