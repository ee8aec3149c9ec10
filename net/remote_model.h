// RemoteModel: the LanguageModel interface over an OpenAI-compatible HTTP endpoint (libcurl).
//
// It speaks POST {base_url}/chat/completions with stream: true to Mistral's API (e.g. model labs-leanstral-2603 at
// https://api.mistral.ai/v1), vLLM, llama.cpp's server or `leanrotor serve` (http://127.0.0.1:8080/v1), and turns the
// server-sent events into a Completion: text pieces go to the StreamCallback as they arrive, tool calls (whole or as
// streamed deltas) become ToolCall values, and the token usage the server reports is returned.
//
// Failure handling, so that the agent can act on the code:
//   - 429, 408, 5xx and connection failures are retried with exponential backoff and jitter (Retry-After honoured),
//     up to max_attempts, but only while nothing has been streamed to the caller yet. Then kUnavailable.
//   - other 4xx: no retry; 400/422 kInvalidArgument, 401/403 kInvalidArgument naming the API-key variable,
//     404 kNotFound; the message carries the server's own error text.
//   - no byte for read_timeout_ms: kTimeout. A connection lost mid-stream: kUnavailable.
//   - a chunk that is not the expected JSON, or a stream that ends without finishing its choices: kCorrupt, naming
//     the endpoint and what was wrong.
//   - the StreamCallback returning false aborts the transfer at once; the result is OK with finish_reason
//     "cancelled" on every unfinished choice.
// If a server returns fewer choices than asked (some ignore n), the rest are asked for in further requests.
// Usage is the server's own count when it reports one; Choice::completion_tokens is that count for n == 1, and for
// n > 1 the number of non-empty streamed deltas (servers send about one per token but report no per-choice count).
#pragma once

#include <memory>
#include <string>

#include "base/status.h"
#include "lm/language_model.h"
#include "net/http_openai.h"

namespace lr::net {

struct RemoteOptions {
  std::string base_url;  // up to and including the version, e.g. "https://api.mistral.ai/v1"
  std::string model;     // the model id sent in requests, e.g. "labs-leanstral-2603"
  std::string api_key;   // empty: read from the environment variable ApiKeyVariable(base_url) names, if set
  int connect_timeout_ms = 10'000;
  int read_timeout_ms = 300'000;  // the longest silence allowed while waiting for bytes (prefill can be long)
  int max_attempts = 4;           // per request, counting the first
  int backoff_initial_ms = 500;   // first retry waits up to this long, doubling each time
  int backoff_max_ms = 30'000;    // cap on any single wait, Retry-After included
};

// MISTRAL_API_KEY for api.mistral.ai, OPENAI_API_KEY for any other endpoint.
const char* ApiKeyVariable(const std::string& base_url);

// kMistral for api.mistral.ai, kOpenAI otherwise.
Dialect DialectFor(const std::string& base_url);

class RemoteModel : public LanguageModel {
 public:
  // Checks the options (an http:// or https:// URL, a model id, positive limits) and initialises libcurl.
  static Result<std::unique_ptr<RemoteModel>> Create(RemoteOptions options);

  std::string Name() const override { return options_.model; }

  // Thread-safe: each call uses its own connection.
  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece) override;

 private:
  explicit RemoteModel(RemoteOptions options) : options_(std::move(options)) {}

  RemoteOptions options_;
  std::string endpoint_;  // base_url + "/chat/completions"
  Dialect dialect_ = Dialect::kOpenAI;
};

}  // namespace lr::net
