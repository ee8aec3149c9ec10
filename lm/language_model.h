// The one model interface the agent uses.
//
// Implemented by the in-process runner (LocalModel, inference/local_model.h) and by the OpenAI-compatible remote
// backend (RemoteModel, net/remote_model.h). Requests are stateless chat completions: the caller sends the whole
// conversation every time, and asks for n choices. The local runner makes that cheap with its prefix index: the shared
// prompt is prefilled once, the n choices are forks of it, and a repair turn that repeats an earlier conversation finds
// its KV pages still cached. A remote server does the same on its side (vLLM prefix caching).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace lr {

struct ToolCall {
  std::string id;
  std::string name;
  std::string arguments_json;  // the arguments object as JSON text, as the model wrote it
};

struct ChatMessage {
  std::string role;                  // "system", "user", "assistant" or "tool"
  std::string content;               // text; for "tool", the tool's result
  std::vector<ToolCall> tool_calls;  // assistant messages only
  std::string tool_call_id;          // tool messages only: which call this answers
};

struct ToolSpec {
  std::string name;
  std::string description;
  std::string parameters_json_schema;  // JSON Schema of the arguments object
};

struct SamplingParams {
  float temperature = 1.0f;     // 0 means greedy
  int top_k = 0;                // 0: off
  float top_p = 1.0f;           // 1: off
  float min_p = 0.0f;           // 0: off
  float repeat_penalty = 1.0f;  // 1: off
  uint64_t seed = 0;
  int max_tokens = 512;
  std::vector<std::string> stop;  // generation ends before the first occurrence of any of these
};

struct CompletionRequest {
  std::vector<ChatMessage> messages;
  std::vector<ToolSpec> tools;  // empty: no tool calling
  int n = 1;                    // number of independent choices sampled from the same prompt
  SamplingParams sampling;
  // Continue the last assistant message instead of starting a new one (a prefix the model must extend).
  bool continue_final_message = false;
  // Set: the request ends soon after (within about 50 ms of the backend noticing: a prefill chunk, a poll of the
  // connection), as if on_piece had returned false, also before the first piece. Null: never. Must outlive the call.
  const std::atomic<bool>* cancel = nullptr;
};

struct Choice {
  std::string text;                  // the assistant's text (tool-call markup removed)
  std::vector<ToolCall> tool_calls;  // parsed from the model's tool-call syntax, when tools were offered
  std::string finish_reason;         // "stop", "length", "tool_calls" or "cancelled"
  int completion_tokens = 0;
};

struct Usage {
  int prompt_tokens = 0;           // tokens in the prompt (once, however many choices)
  int prompt_tokens_computed = 0;  // of those, how many were prefilled (the rest came from the prefix cache)
  int completion_tokens = 0;       // summed over choices
};

struct Completion {
  std::vector<Choice> choices;  // choices.size() == request.n
  Usage usage;
};

// Streaming: called with each decoded piece of text for choice `index`, in order, on the generating thread.
// Return false to cancel the whole request: it then ends with finish_reason "cancelled" and an OK status.
using StreamCallback = std::function<bool(int index, std::string_view piece)>;

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;

  // A short human-readable name: the GGUF file's model name, or the remote model id.
  virtual std::string Name() const = 0;

  // Runs one request to completion. Errors: kInvalidArgument (bad request), kUnavailable / kTimeout (remote peer),
  // kResourceExhausted (context or KV budget), kCorrupt (a malformed reply from a remote peer).
  virtual Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece) = 0;
};

}  // namespace lr
