#include "net/http_openai.h"

#include <algorithm>
#include <cstdint>

namespace lr::net {
namespace {

using nlohmann::json;

json ToolSpecToJson(const ToolSpec& tool) {
  json parameters = json::object();
  if (!tool.parameters_json_schema.empty()) {
    parameters = json::parse(tool.parameters_json_schema, nullptr, /*allow_exceptions=*/false);
    if (parameters.is_discarded()) parameters = json::object();
  }
  return {{"type", "function"},
          {"function", {{"name", tool.name}, {"description", tool.description}, {"parameters", parameters}}}};
}

json MessageToJson(const ChatMessage& m) {
  json j = {{"role", m.role}, {"content", m.content}};
  if (!m.tool_calls.empty()) j["tool_calls"] = ToolCallsToJson(m.tool_calls);
  if (!m.tool_call_id.empty()) j["tool_call_id"] = m.tool_call_id;
  return j;
}

// Reading request bodies: each helper names the field and what was expected.

const char* TypeName(const json& v) { return v.type_name(); }

Status FieldError(std::string_view endpoint, std::string_view field, std::string_view expected, const json& got) {
  return InvalidArgument(std::string(endpoint) + ": field '" + std::string(field) + "': expected " +
                         std::string(expected) + ", got " + TypeName(got));
}

// Text content: a string, null, or an array of {type: "text", text} parts (joined).
Result<std::string> ReadContent(const json& v, std::string_view endpoint, const std::string& field) {
  if (v.is_null()) return std::string();
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) return FieldError(endpoint, field, "a string or an array of text parts", v);
  std::string text;
  for (const json& part : v) {
    if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
      return InvalidArgument(std::string(endpoint) + ": field '" + field +
                             "': only {\"type\": \"text\", \"text\": ...} parts are supported");
    text += part["text"].get<std::string>();
  }
  return text;
}

Result<std::vector<ToolCall>> ReadToolCalls(const json& v, std::string_view endpoint, const std::string& field) {
  if (!v.is_array()) return FieldError(endpoint, field, "an array", v);
  std::vector<ToolCall> calls;
  for (size_t i = 0; i < v.size(); ++i) {
    const json& c = v[i];
    std::string where = field + "[" + std::to_string(i) + "]";
    if (!c.is_object() || !c.contains("function") || !c["function"].is_object())
      return InvalidArgument(std::string(endpoint) + ": field '" + where + "': expected {id, type, function}");
    const json& f = c["function"];
    ToolCall call;
    if (c.contains("id") && c["id"].is_string()) call.id = c["id"].get<std::string>();
    if (!f.contains("name") || !f["name"].is_string())
      return InvalidArgument(std::string(endpoint) + ": field '" + where + ".function.name': expected a string");
    call.name = f["name"].get<std::string>();
    if (f.contains("arguments")) {
      if (f["arguments"].is_string()) {
        call.arguments_json = f["arguments"].get<std::string>();
      } else if (f["arguments"].is_object()) {
        call.arguments_json = f["arguments"].dump();
      } else {
        return FieldError(endpoint, where + ".function.arguments", "a JSON string or an object", f["arguments"]);
      }
    }
    calls.push_back(std::move(call));
  }
  return calls;
}

Result<ChatMessage> ReadMessage(const json& v, std::string_view endpoint, size_t index) {
  std::string where = "messages[" + std::to_string(index) + "]";
  if (!v.is_object()) return FieldError(endpoint, where, "an object", v);
  ChatMessage m;
  if (!v.contains("role") || !v["role"].is_string())
    return InvalidArgument(std::string(endpoint) + ": field '" + where + ".role': expected a string");
  m.role = v["role"].get<std::string>();
  if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "tool")
    return InvalidArgument(std::string(endpoint) + ": field '" + where +
                           ".role': expected system, user, assistant or "
                           "tool, got '" +
                           m.role + "'");
  if (v.contains("content")) {
    LR_ASSIGN_OR_RETURN(m.content, ReadContent(v["content"], endpoint, where + ".content"));
  }
  if (v.contains("tool_calls") && !v["tool_calls"].is_null()) {
    LR_ASSIGN_OR_RETURN(m.tool_calls, ReadToolCalls(v["tool_calls"], endpoint, where + ".tool_calls"));
  }
  if (v.contains("tool_call_id") && v["tool_call_id"].is_string())
    m.tool_call_id = v["tool_call_id"].get<std::string>();
  return m;
}

Result<float> ReadNumber(const json& body, const char* field, float lo, float hi, float fallback,
                         std::string_view endpoint) {
  if (!body.contains(field) || body[field].is_null()) return fallback;
  const json& v = body[field];
  if (!v.is_number()) return FieldError(endpoint, field, "a number", v);
  double x = v.get<double>();
  if (!(x >= lo && x <= hi))
    return InvalidArgument(std::string(endpoint) + ": field '" + field + "': expected a number in [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  return static_cast<float>(x);
}

Result<int64_t> ReadInteger(const json& body, const char* field, int64_t lo, int64_t hi, int64_t fallback,
                            std::string_view endpoint) {
  if (!body.contains(field) || body[field].is_null()) return fallback;
  const json& v = body[field];
  if (!v.is_number_integer()) return FieldError(endpoint, field, "an integer", v);
  int64_t x = v.is_number_unsigned() ? static_cast<int64_t>(std::min<uint64_t>(v.get<uint64_t>(), INT64_MAX))
                                     : v.get<int64_t>();
  if (x < lo || x > hi)
    return InvalidArgument(std::string(endpoint) + ": field '" + field + "': expected an integer in [" +
                           std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  return x;
}

// The fields shared by chat and text completions: n, sampling, stream.
Status ReadCommon(const json& body, std::string_view endpoint, WireRequest& out) {
  CompletionRequest& r = out.request;
  SamplingParams& s = r.sampling;
  if (body.contains("model") && body["model"].is_string()) out.model = body["model"].get<std::string>();
  LR_ASSIGN_OR_RETURN(int64_t n, ReadInteger(body, "n", 1, kMaxChoicesPerRequest, 1, endpoint));
  r.n = static_cast<int>(n);
  LR_ASSIGN_OR_RETURN(s.temperature, ReadNumber(body, "temperature", 0.0f, 100.0f, s.temperature, endpoint));
  LR_ASSIGN_OR_RETURN(s.top_p, ReadNumber(body, "top_p", 0.0f, 1.0f, s.top_p, endpoint));
  LR_ASSIGN_OR_RETURN(s.min_p, ReadNumber(body, "min_p", 0.0f, 1.0f, s.min_p, endpoint));
  LR_ASSIGN_OR_RETURN(s.repeat_penalty,
                      ReadNumber(body, "repetition_penalty", 0.0f, 100.0f, s.repeat_penalty, endpoint));
  LR_ASSIGN_OR_RETURN(int64_t top_k, ReadInteger(body, "top_k", -1, 1 << 20, s.top_k, endpoint));
  s.top_k = top_k < 0 ? 0 : static_cast<int>(top_k);  // vLLM spells "off" as -1
  constexpr int64_t kMaxTokens = 1 << 24;
  LR_ASSIGN_OR_RETURN(int64_t max_tokens, ReadInteger(body, "max_tokens", 1, kMaxTokens, s.max_tokens, endpoint));
  LR_ASSIGN_OR_RETURN(max_tokens, ReadInteger(body, "max_completion_tokens", 1, kMaxTokens, max_tokens, endpoint));
  s.max_tokens = static_cast<int>(max_tokens);
  LR_ASSIGN_OR_RETURN(int64_t seed, ReadInteger(body, "seed", INT64_MIN, INT64_MAX, 0, endpoint));
  LR_ASSIGN_OR_RETURN(seed, ReadInteger(body, "random_seed", INT64_MIN, INT64_MAX, seed, endpoint));
  s.seed = static_cast<uint64_t>(seed);
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& stop = body["stop"];
    if (stop.is_string()) {
      s.stop.push_back(stop.get<std::string>());
    } else if (stop.is_array()) {
      for (const json& x : stop) {
        if (!x.is_string()) return FieldError(endpoint, "stop[]", "a string", x);
        s.stop.push_back(x.get<std::string>());
      }
    } else {
      return FieldError(endpoint, "stop", "a string or an array of strings", stop);
    }
  }
  if (body.contains("stream") && !body["stream"].is_null()) {
    if (!body["stream"].is_boolean()) return FieldError(endpoint, "stream", "a boolean", body["stream"]);
    out.stream = body["stream"].get<bool>();
  }
  if (body.contains("stream_options") && body["stream_options"].is_object())
    out.include_usage = body["stream_options"].value("include_usage", false);
  return Status::Ok();
}

Result<json> ParseBody(std::string_view body, std::string_view endpoint) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(std::string(endpoint) + ": the request body is not valid JSON");
  if (!j.is_object()) return InvalidArgument(std::string(endpoint) + ": the request body must be a JSON object");
  return j;
}

}  // namespace

json ToolCallsToJson(const std::vector<ToolCall>& calls) {
  json out = json::array();
  for (const ToolCall& c : calls)
    out.push_back(
        {{"id", c.id}, {"type", "function"}, {"function", {{"name", c.name}, {"arguments", c.arguments_json}}}});
  return out;
}

json ChatRequestToJson(const CompletionRequest& request, const std::string& model, Dialect dialect) {
  const SamplingParams& s = request.sampling;
  json body = {{"model", model},   {"stream", true},
               {"n", request.n},   {"temperature", s.temperature},
               {"top_p", s.top_p}, {"max_tokens", s.max_tokens}};
  json messages = json::array();
  for (const ChatMessage& m : request.messages) messages.push_back(MessageToJson(m));
  if (s.top_k > 0) body["top_k"] = s.top_k;
  if (s.min_p > 0.0f) body["min_p"] = s.min_p;
  if (s.repeat_penalty != 1.0f) body["repetition_penalty"] = s.repeat_penalty;
  if (!s.stop.empty()) body["stop"] = s.stop;
  if (!request.tools.empty()) {
    json tools = json::array();
    for (const ToolSpec& t : request.tools) tools.push_back(ToolSpecToJson(t));
    body["tools"] = tools;
  }
  if (dialect == Dialect::kMistral) {
    if (s.seed != 0) body["random_seed"] = s.seed;
    if (request.continue_final_message && !messages.empty()) messages.back()["prefix"] = true;
  } else {
    if (s.seed != 0) body["seed"] = s.seed;
    body["stream_options"] = {{"include_usage", true}};
    if (request.continue_final_message) {
      body["continue_final_message"] = true;
      body["add_generation_prompt"] = false;
    }
  }
  body["messages"] = messages;
  return body;
}

Result<WireRequest> ChatRequestFromJson(std::string_view body_text, std::string_view endpoint) {
  LR_ASSIGN_OR_RETURN(json body, ParseBody(body_text, endpoint));
  WireRequest out;
  if (!body.contains("messages") || !body["messages"].is_array() || body["messages"].empty())
    return InvalidArgument(std::string(endpoint) + ": field 'messages': expected a non-empty array");
  const json& messages = body["messages"];
  for (size_t i = 0; i < messages.size(); ++i) {
    LR_ASSIGN_OR_RETURN(ChatMessage m, ReadMessage(messages[i], endpoint, i));
    out.request.messages.push_back(std::move(m));
  }
  if (body.contains("tools") && !body["tools"].is_null()) {
    if (!body["tools"].is_array()) return FieldError(endpoint, "tools", "an array", body["tools"]);
    for (size_t i = 0; i < body["tools"].size(); ++i) {
      const json& t = body["tools"][i];
      if (!t.is_object() || !t.contains("function") || !t["function"].is_object() || !t["function"].contains("name") ||
          !t["function"]["name"].is_string())
        return InvalidArgument(std::string(endpoint) + ": field 'tools[" + std::to_string(i) +
                               "]': expected {type: \"function\", function: {name, description, parameters}}");
      const json& f = t["function"];
      ToolSpec spec;
      spec.name = f["name"].get<std::string>();
      if (f.contains("description") && f["description"].is_string())
        spec.description = f["description"].get<std::string>();
      spec.parameters_json_schema = f.contains("parameters") ? f["parameters"].dump() : "{}";
      out.request.tools.push_back(std::move(spec));
    }
  }
  bool last_is_assistant = out.request.messages.back().role == "assistant";
  bool prefix = messages.back().is_object() && messages.back().value("prefix", false);
  bool continue_final = body.contains("continue_final_message") && body["continue_final_message"].is_boolean() &&
                        body["continue_final_message"].get<bool>();
  if ((prefix || continue_final) && !last_is_assistant)
    return InvalidArgument(std::string(endpoint) +
                           ": continue_final_message/prefix needs the last message to be an assistant message");
  out.request.continue_final_message = prefix || continue_final;
  LR_RETURN_IF_ERROR(ReadCommon(body, endpoint, out));
  return out;
}

Result<WireRequest> TextRequestFromJson(std::string_view body_text, std::string_view endpoint) {
  LR_ASSIGN_OR_RETURN(json body, ParseBody(body_text, endpoint));
  WireRequest out;
  if (!body.contains("prompt")) return InvalidArgument(std::string(endpoint) + ": field 'prompt' is missing");
  const json& prompt = body["prompt"];
  std::string text;
  if (prompt.is_string()) {
    text = prompt.get<std::string>();
  } else if (prompt.is_array() && prompt.size() == 1 && prompt[0].is_string()) {
    text = prompt[0].get<std::string>();
  } else {
    return InvalidArgument(std::string(endpoint) +
                           ": field 'prompt': expected one string (token arrays and "
                           "batches of prompts are not supported)");
  }
  out.request.messages.push_back(ChatMessage{"user", std::move(text), {}, {}});
  LR_RETURN_IF_ERROR(ReadCommon(body, endpoint, out));
  return out;
}

}  // namespace lr::net
