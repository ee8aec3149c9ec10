#include "inference/chat_format.h"

#include <nlohmann/json.hpp>

namespace lr::inference {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr std::string_view kImStart = "<|im_start|>";
constexpr std::string_view kImEnd = "<|im_end|>";

// JSON as Python's json.dumps writes it by default (", " and ": " separators, non-ASCII kept), which is how
// mistral-common serialises the tool list the models were trained on.
void DumpPythonStyle(const OrderedJson& j, std::string* out) {
  if (j.is_object()) {
    out->push_back('{');
    bool first = true;
    for (const auto& [k, v] : j.items()) {
      if (!first) out->append(", ");
      first = false;
      out->append(OrderedJson(k).dump());
      out->append(": ");
      DumpPythonStyle(v, out);
    }
    out->push_back('}');
  } else if (j.is_array()) {
    out->push_back('[');
    for (size_t i = 0; i < j.size(); ++i) {
      if (i > 0) out->append(", ");
      DumpPythonStyle(j[i], out);
    }
    out->push_back(']');
  } else {
    out->append(j.dump());
  }
}

Status CheckRole(const ChatMessage& m, size_t i) {
  if (m.role == "system" || m.role == "user" || m.role == "assistant" || m.role == "tool") return Status::Ok();
  return InvalidArgument("message " + std::to_string(i) + " has role '" + m.role +
                         "', expected system, user, assistant or tool");
}

Status CheckContinue(const std::vector<ChatMessage>& messages, bool continue_final_message) {
  if (continue_final_message && (messages.empty() || messages.back().role != "assistant"))
    return InvalidArgument("continue_final_message needs an assistant message last");
  return Status::Ok();
}

std::string_view StripSuffix(std::string_view s, std::string_view suffix) {
  if (s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix) s.remove_suffix(suffix.size());
  return s;
}

}  // namespace

Result<ChatFormat> ChatFormat::FromTemplate(std::string_view jinja) {
  if (jinja.find(kImStart) != std::string_view::npos) {
    // A default system message is a literal "<|im_start|>system\n...<|im_end|>" with nothing templated inside.
    const std::string marker = std::string(kImStart) + "system\n";
    for (size_t at = jinja.find(marker); at != std::string_view::npos; at = jinja.find(marker, at + 1)) {
      size_t begin = at + marker.size();
      size_t end = jinja.find(kImEnd, begin);
      if (end == std::string_view::npos) break;
      std::string_view body = jinja.substr(begin, end - begin);
      if (!body.empty() && body.find_first_of("'\"{}") == std::string_view::npos) return ChatMl(std::string(body));
    }
    return ChatMl();
  }
  if (jinja.find("[INST]") != std::string_view::npos) return Mistral();
  return Unsupported("chat template is neither ChatML (<|im_start|>) nor Mistral ([INST])");
}

Result<ChatFormat> ChatFormat::FromGguf(const GgufFile& gguf) {
  if (!gguf.Has("tokenizer.chat_template")) return Plain();
  LR_ASSIGN_OR_RETURN(std::string jinja, gguf.GetString("tokenizer.chat_template"));
  Result<ChatFormat> f = FromTemplate(jinja);
  if (!f.ok()) return f.status().WithContext(gguf.path() + ": tokenizer.chat_template");
  return f;
}

Result<std::string> ChatFormat::Render(const std::vector<ChatMessage>& messages, const std::vector<ToolSpec>& tools,
                                       bool continue_final_message) const {
  for (size_t i = 0; i < messages.size(); ++i) LR_RETURN_IF_ERROR(CheckRole(messages[i], i));
  LR_RETURN_IF_ERROR(CheckContinue(messages, continue_final_message));
  switch (kind_) {
    case ChatTemplate::kChatMl: return RenderChatMl(messages, tools, continue_final_message);
    case ChatTemplate::kMistral: return RenderMistral(messages, tools, continue_final_message);
    case ChatTemplate::kPlain: break;
  }
  if (!tools.empty()) return Unsupported("the plain completion format has no tool calling");
  std::string out;
  for (const ChatMessage& m : messages) {
    if (m.role == "tool" || !m.tool_calls.empty())
      return Unsupported("the plain completion format has no tool calls or tool results");
    out += m.content;
  }
  return out;
}

Result<std::string> ChatFormat::RenderChatMl(const std::vector<ChatMessage>& messages,
                                             const std::vector<ToolSpec>& tools, bool continue_final_message) const {
  if (!tools.empty()) return Unsupported("tool calling is not supported in the ChatML format");
  std::string out;
  auto turn = [&](std::string_view role, std::string_view content, bool close) {
    out.append(kImStart).append(role).append("\n").append(content);
    if (close) out.append(kImEnd).append("\n");
  };
  if (!default_system_.empty() && (messages.empty() || messages[0].role != "system"))
    turn("system", default_system_, true);
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (!m.tool_calls.empty()) return Unsupported("tool calls are not supported in the ChatML format");
    turn(m.role, m.content, !(continue_final_message && i + 1 == messages.size()));
  }
  if (!continue_final_message) turn("assistant", "", false);
  return out;
}

Result<std::string> ChatFormat::RenderMistral(const std::vector<ChatMessage>& messages,
                                              const std::vector<ToolSpec>& tools, bool continue_final_message) const {
  std::string out = "<s>";
  size_t first = 0;
  if (!messages.empty() && messages[0].role == "system") {
    out += "[SYSTEM_PROMPT]" + messages[0].content + "[/SYSTEM_PROMPT]";
    first = 1;
  }
  if (!tools.empty()) {
    OrderedJson list = OrderedJson::array();
    for (const ToolSpec& t : tools) {
      OrderedJson params = OrderedJson::parse(t.parameters_json_schema, nullptr, /*allow_exceptions=*/false);
      if (params.is_discarded() || !params.is_object())
        return InvalidArgument("tool '" + t.name + "': parameters_json_schema is not a JSON object");
      OrderedJson fn = {{"name", t.name}, {"description", t.description}, {"parameters", std::move(params)}};
      list.push_back({{"type", "function"}, {"function", std::move(fn)}});
    }
    out += "[AVAILABLE_TOOLS]";
    DumpPythonStyle(list, &out);
    out += "[/AVAILABLE_TOOLS]";
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    if (m.role == "system") {
      out += "[SYSTEM_PROMPT]" + m.content + "[/SYSTEM_PROMPT]";
    } else if (m.role == "user") {
      out += "[INST]" + m.content + "[/INST]";
    } else if (m.role == "tool") {
      out += "[TOOL_RESULTS]" + m.content + "[/TOOL_RESULTS]";
    } else {  // assistant
      out += m.content;
      for (const ToolCall& c : m.tool_calls) {
        OrderedJson args = OrderedJson::parse(c.arguments_json, nullptr, /*allow_exceptions=*/false);
        if (args.is_discarded() || !args.is_object())
          return InvalidArgument("message " + std::to_string(i) + ": tool call '" + c.name +
                                 "' arguments are not a JSON object");
        out += "[TOOL_CALLS]" + c.name + "[ARGS]" + c.arguments_json;
      }
      if (!(continue_final_message && last)) out += "</s>";
    }
  }
  return out;
}

Result<AssistantReply> ChatFormat::ParseReply(std::string_view output) const {
  AssistantReply reply;
  if (kind_ == ChatTemplate::kChatMl) output = StripSuffix(output, kImEnd);
  if (kind_ != ChatTemplate::kMistral) {
    reply.text = std::string(output);
    return reply;
  }
  output = StripSuffix(output, "</s>");
  constexpr std::string_view kCalls = "[TOOL_CALLS]", kArgs = "[ARGS]";
  size_t at = output.find(kCalls);
  reply.text = std::string(output.substr(0, at));
  auto add_call = [&](std::string name, const OrderedJson& args, std::string args_text) -> Status {
    std::string id = "call_" + std::to_string(reply.tool_calls.size());
    if (!args.is_object())
      return Corrupt("tool call " + std::to_string(reply.tool_calls.size()) + " ('" + name +
                     "'): arguments are not a JSON object: " + args_text);
    reply.tool_calls.push_back({std::move(id), std::move(name), std::move(args_text)});
    return Status::Ok();
  };
  while (at != std::string_view::npos) {
    size_t begin = at + kCalls.size();
    size_t next = output.find(kCalls, begin);
    std::string_view call =
        output.substr(begin, next == std::string_view::npos ? std::string_view::npos : next - begin);
    size_t args_at = call.find(kArgs);
    if (args_at != std::string_view::npos) {
      std::string name(call.substr(0, args_at));
      std::string args_text(call.substr(args_at + kArgs.size()));
      OrderedJson args = OrderedJson::parse(args_text, nullptr, /*allow_exceptions=*/false);
      LR_RETURN_IF_ERROR(add_call(std::move(name), args.is_discarded() ? OrderedJson() : args, std::move(args_text)));
    } else {  // older format: a JSON list of {"name", "arguments"}
      OrderedJson list = OrderedJson::parse(call, nullptr, /*allow_exceptions=*/false);
      if (list.is_discarded() || !list.is_array())
        return Corrupt("tool call " + std::to_string(reply.tool_calls.size()) + ": expected name[ARGS]{...} or a " +
                       "JSON list of calls after [TOOL_CALLS], got: " + std::string(call));
      for (const OrderedJson& c : list) {
        if (!c.is_object() || !c.contains("name") || !c["name"].is_string() || !c.contains("arguments"))
          return Corrupt("tool call " + std::to_string(reply.tool_calls.size()) +
                         ": expected {\"name\": string, \"arguments\": object}, got: " + c.dump());
        LR_RETURN_IF_ERROR(add_call(c["name"].get<std::string>(), c["arguments"], c["arguments"].dump()));
      }
    }
    at = next;
  }
  return reply;
}

}  // namespace lr::inference
