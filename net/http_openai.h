// The OpenAI-compatible chat-completions wire format: the one mapping between CompletionRequest and the JSON body of
// POST /v1/chat/completions (and /v1/completions), used by both sides of the wire: RemoteModel writes request bodies,
// the server (net/serve.h) reads them. Replies (streamed chunks, whole completions) have one writer and one
// reader each and live with them.
//
// Two dialects differ in a few request fields. kOpenAI (OpenAI, vLLM, llama.cpp's server): "seed", usage in streams
// via stream_options.include_usage, and vLLM's continue_final_message/add_generation_prompt to extend the last
// assistant message. kMistral (api.mistral.ai): "random_seed", usage always in the last chunk, "prefix": true on the
// last assistant message. Sampling fields that not every server knows (top_k, min_p, repetition_penalty) are sent only
// when they differ from "off".
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "lm/language_model.h"

namespace lr::net {

enum class Dialect { kOpenAI, kMistral };

// The streamed (stream: true) chat-completions body for `request`, asking for `model`.
nlohmann::json ChatRequestToJson(const CompletionRequest& request, const std::string& model, Dialect dialect);

// What a server needs from a request body beyond the CompletionRequest itself.
struct WireRequest {
  CompletionRequest request;
  std::string model;  // as the client named it (may be empty)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: send a final usage chunk
};

// Limits a server puts on a request (larger values are kInvalidArgument, not clamped).
inline constexpr int kMaxChoicesPerRequest = 64;

// Parses a /v1/chat/completions body (either dialect). Errors are kInvalidArgument naming the field and what was
// expected, prefixed with `endpoint`.
Result<WireRequest> ChatRequestFromJson(std::string_view body, std::string_view endpoint);

// Parses a /v1/completions body: its "prompt" (one string) becomes a single user message, because LanguageModel
// serves chat conversations only; the rest as for chat.
Result<WireRequest> TextRequestFromJson(std::string_view body, std::string_view endpoint);

// Tool calls in the OpenAI message shape: [{id, type: "function", function: {name, arguments}}].
nlohmann::json ToolCallsToJson(const std::vector<ToolCall>& calls);

}  // namespace lr::net
