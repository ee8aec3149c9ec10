#include "inference/chat_format.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "base/file.h"

namespace lr::inference {
namespace {

ChatMessage Msg(std::string role, std::string content) {
  ChatMessage m;
  m.role = std::move(role);
  m.content = std::move(content);
  return m;
}

std::string Render(const ChatFormat& f, const std::vector<ChatMessage>& messages,
                   const std::vector<ToolSpec>& tools = {}, bool continue_final = false) {
  auto r = f.Render(messages, tools, continue_final);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : "";
}

TEST(ChatFormatTest, ChatMlByHand) {
  ChatFormat f = ChatFormat::ChatMl();
  EXPECT_EQ(Render(f, {Msg("system", "S"), Msg("user", "U")}),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render(f, {Msg("user", "U"), Msg("assistant", "  intro n")}, {}, /*continue_final=*/true),
            "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n  intro n");
  ChatFormat with_default = ChatFormat::ChatMl("D");
  EXPECT_EQ(Render(with_default, {Msg("user", "U")}),
            "<|im_start|>system\nD<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render(with_default, {Msg("system", "S")}), "<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\n");
}

// The default model's template, rendered by transformers' apply_chat_template (scripts/make_tokenizer_fixtures.py).
TEST(ChatFormatTest, ChatMlMatchesSmolLM2Template) {
  auto text = ReadFile(std::string(LR_SOURCE_DIR) + "/tests/fixtures/tokenizer/smollm2.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  nlohmann::json fx = nlohmann::json::parse(*text);
  auto f = ChatFormat::FromTemplate(fx["chat_template"].get<std::string>());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->kind(), ChatTemplate::kChatMl);
  EXPECT_EQ(f->default_system(), "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  ASSERT_FALSE(fx["chat"].empty());
  for (const auto& c : fx["chat"]) {
    std::vector<ChatMessage> messages;
    for (const auto& m : c["messages"]) messages.push_back(Msg(m["role"], m["content"]));
    EXPECT_EQ(Render(*f, messages), c["text"].get<std::string>());
  }
}

TEST(ChatFormatTest, DetectsFamilies) {
  auto qwen = ChatFormat::FromTemplate(
      "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' "
      "}}"
      "{%- else %}{{- '<|im_start|>system\nYou are Qwen.<|im_end|>\n' }}{%- endif %}");
  ASSERT_TRUE(qwen.ok());
  EXPECT_EQ(qwen->kind(), ChatTemplate::kChatMl);
  EXPECT_EQ(qwen->default_system(), "You are Qwen.");
  auto no_default = ChatFormat::FromTemplate("{{'<|im_start|>' + message['role'] + '\\n'}}");
  ASSERT_TRUE(no_default.ok());
  EXPECT_EQ(no_default->default_system(), "");
  auto mistral = ChatFormat::FromTemplate("{{ bos_token }}{% for m in messages %}[INST]{{ m['content'] }}[/INST]");
  ASSERT_TRUE(mistral.ok());
  EXPECT_EQ(mistral->kind(), ChatTemplate::kMistral);
  EXPECT_TRUE(mistral->renders_bos());
  EXPECT_EQ(ChatFormat::FromTemplate("{{ messages }}").status().code(), StatusCode::kUnsupported);
}

const std::vector<ToolSpec> kTools = {
    {"lean_run_code", "Run Lean code", R"({"type": "object", "properties": {"code": {"type": "string"}}})"}};

// The documented one-line layout (docs: REFERENCES §1, from mistral-common's tests), built by hand.
TEST(ChatFormatTest, MistralWithToolsByHand) {
  ChatMessage a1 = Msg("assistant", "A1");
  a1.tool_calls.push_back({"call_0", "lean_run_code", R"({"code": "x"})"});
  std::vector<ChatMessage> messages = {Msg("system", "S"), Msg("user", "U1"),      a1,
                                       Msg("tool", "R1"),  Msg("assistant", "A2"), Msg("user", "U2")};
  EXPECT_EQ(Render(ChatFormat::Mistral(), messages, kTools),
            "<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][AVAILABLE_TOOLS][{\"type\": \"function\", \"function\": "
            "{\"name\": \"lean_run_code\", \"description\": \"Run Lean code\", \"parameters\": {\"type\": \"object\", "
            "\"properties\": {\"code\": {\"type\": \"string\"}}}}}][/AVAILABLE_TOOLS][INST]U1[/INST]A1"
            "[TOOL_CALLS]lean_run_code[ARGS]{\"code\": \"x\"}</s>[TOOL_RESULTS]R1[/TOOL_RESULTS]A2</s>[INST]U2[/INST]");
  EXPECT_EQ(Render(ChatFormat::Mistral(), {Msg("user", "U"), Msg("assistant", "theorem")}, {}, true),
            "<s>[INST]U[/INST]theorem");
}

TEST(ChatFormatTest, PlainConcatenates) {
  EXPECT_EQ(
      Render(ChatFormat::Plain(), {Msg("user", "theorem t : 1 = 1 := by\n"), Msg("assistant", "  rfl")}, {}, true),
      "theorem t : 1 = 1 := by\n  rfl");
  EXPECT_FALSE(ChatFormat::Plain().renders_bos());
}

TEST(ChatFormatTest, RenderErrors) {
  ChatFormat chatml = ChatFormat::ChatMl();
  EXPECT_EQ(chatml.Render({Msg("robot", "x")}, {}, false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(chatml.Render({Msg("user", "x")}, {}, true).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(chatml.Render({Msg("user", "x")}, kTools, false).status().code(), StatusCode::kUnsupported);
  EXPECT_EQ(ChatFormat::Plain().Render({Msg("tool", "x")}, {}, false).status().code(), StatusCode::kUnsupported);
  std::vector<ToolSpec> bad = {{"f", "d", "not json"}};
  auto r = ChatFormat::Mistral().Render({Msg("user", "x")}, bad, false);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'f'"), std::string::npos);
}

TEST(ChatFormatTest, ParsesMistralToolCalls) {
  ChatFormat f = ChatFormat::Mistral();
  auto r = f.ParseReply(
      "Let me check.[TOOL_CALLS]lean_run_code[ARGS]{\"code\": \"example : 1 = 1 := rfl\"}"
      "[TOOL_CALLS]lean_goal[ARGS]{\"line\": 3}</s>");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->text, "Let me check.");
  ASSERT_EQ(r->tool_calls.size(), 2u);
  EXPECT_EQ(r->tool_calls[0].id, "call_0");
  EXPECT_EQ(r->tool_calls[0].name, "lean_run_code");
  EXPECT_EQ(r->tool_calls[0].arguments_json, "{\"code\": \"example : 1 = 1 := rfl\"}");
  EXPECT_EQ(r->tool_calls[1].name, "lean_goal");
  EXPECT_EQ(r->tool_calls[1].arguments_json, "{\"line\": 3}");

  auto old = f.ParseReply("[TOOL_CALLS][{\"name\": \"lean_goal\", \"arguments\": {\"line\": 3}}]");
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  ASSERT_EQ(old->tool_calls.size(), 1u);
  EXPECT_EQ(old->tool_calls[0].name, "lean_goal");
  EXPECT_EQ(nlohmann::json::parse(old->tool_calls[0].arguments_json), nlohmann::json::parse("{\"line\": 3}"));

  auto text = f.ParseReply("  intro n\n  simp</s>");
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(text->text, "  intro n\n  simp");
  EXPECT_TRUE(text->tool_calls.empty());

  auto bad = f.ParseReply("[TOOL_CALLS]lean_goal[ARGS]{\"line\": ");
  EXPECT_EQ(bad.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(bad.status().message().find("lean_goal"), std::string::npos);
  EXPECT_EQ(f.ParseReply("[TOOL_CALLS]garbage").status().code(), StatusCode::kCorrupt);
}

TEST(ChatFormatTest, ChatMlReplyIsText) {
  auto r = ChatFormat::ChatMl().ParseReply("  norm_num<|im_end|>");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->text, "  norm_num");
  EXPECT_TRUE(r->tool_calls.empty());
}

}  // namespace
}  // namespace lr::inference
