// Conversations to prompt text, and model replies back to text and tool calls.
//
// A model is trained on one prompt layout; leanrotor knows three, and picks one from the GGUF's
// tokenizer.chat_template by the markers it contains (it does not run Jinja):
// - ChatML (SmolLM2, Qwen): "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then
//   "<|im_start|>assistant\n". Some templates insert a default system message when the conversation has none
//   (SmolLM2: "You are a helpful AI assistant named SmolLM, ..."); it is read from the template text.
// - Mistral (tekken v13 style):
//   "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][AVAILABLE_TOOLS][tools json][/AVAILABLE_TOOLS][INST]U[/INST]A</s>..."
//   with assistant tool calls as "[TOOL_CALLS]name[ARGS]{arguments}" (then "</s>") and tool results as
//   "[TOOL_RESULTS]R[/TOOL_RESULTS]".
// - Plain: no template (base prover models complete raw text): the message contents concatenated in order.
//
// Rendered text holds special tokens as their text: encode it with Tokenizer::Encode(text, /*parse_special=*/true).
// Message contents are pasted in as they are; a user message that contains "<|im_end|>" would close its turn early
// in ChatML, so callers that forward untrusted text should check it (Tokenizer::FindSpecial) first.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "inference/gguf.h"
#include "lm/language_model.h"

namespace lr::inference {

enum class ChatTemplate { kPlain, kChatMl, kMistral };

// An assistant reply split into its text and the tool calls it made.
struct AssistantReply {
  std::string text;
  std::vector<ToolCall> tool_calls;
};

class ChatFormat {
 public:
  static ChatFormat Plain() { return ChatFormat(ChatTemplate::kPlain, ""); }
  static ChatFormat ChatMl(std::string default_system = "") {
    return ChatFormat(ChatTemplate::kChatMl, std::move(default_system));
  }
  static ChatFormat Mistral() { return ChatFormat(ChatTemplate::kMistral, ""); }
  // From a Jinja chat template's text: ChatML if it writes "<|im_start|>", Mistral if it writes "[INST]";
  // kUnsupported otherwise.
  static Result<ChatFormat> FromTemplate(std::string_view jinja);
  // From tokenizer.chat_template; Plain when the file has no template (a base model).
  static Result<ChatFormat> FromGguf(const GgufFile& gguf);

  ChatTemplate kind() const { return kind_; }
  const std::string& default_system() const { return default_system_; }
  // Whether Render starts with the BOS token's text ("<s>" for Mistral); when not, callers prepend
  // Tokenizer::bos() if Tokenizer::add_bos() says the model expects it.
  bool renders_bos() const { return kind_ == ChatTemplate::kMistral; }

  // The prompt for `messages`, ending where the model's next assistant turn begins; with continue_final_message the
  // last message must be the assistant's and the prompt ends inside it, so the model extends it.
  // kInvalidArgument for an unknown role, continue_final_message without a final assistant message, or malformed
  // tool JSON; kUnsupported for tools or tool calls in a format without tool calling (ChatML, Plain).
  Result<std::string> Render(const std::vector<ChatMessage>& messages, const std::vector<ToolSpec>& tools,
                             bool continue_final_message) const;

  // Splits the decoded text of a finished assistant turn (control tokens included as text). Mistral:
  // "text[TOOL_CALLS]name[ARGS]{json}[TOOL_CALLS]..." and the older "[TOOL_CALLS][{"name": .., "arguments": ..}]";
  // calls get ids "call_0", "call_1", ... kCorrupt naming the call when its arguments are not a JSON object.
  // Other formats: the text as is, no calls. A trailing end-of-turn marker ("</s>", "<|im_end|>") is removed.
  Result<AssistantReply> ParseReply(std::string_view output) const;

 private:
  ChatFormat(ChatTemplate kind, std::string default_system) : kind_(kind), default_system_(std::move(default_system)) {}
  Result<std::string> RenderChatMl(const std::vector<ChatMessage>& messages, const std::vector<ToolSpec>& tools,
                                   bool continue_final_message) const;
  Result<std::string> RenderMistral(const std::vector<ChatMessage>& messages, const std::vector<ToolSpec>& tools,
                                    bool continue_final_message) const;

  ChatTemplate kind_;
  std::string default_system_;  // ChatML: inserted when the conversation does not start with a system message
};

}  // namespace lr::inference
