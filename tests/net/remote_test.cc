// The remote backend: SSE framing, the request mapping, and RemoteModel's error paths against a scripted server.
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "net/http_openai.h"
#include "net/http_sse.h"
#include "net/remote_model.h"
#include "tests/net/scripted_http_server.h"

namespace lr::net {
namespace {

using nlohmann::json;
using testing::HttpReply;
using testing::ScriptedHttpServer;
using testing::ScriptedReply;
using testing::SseReply;

std::vector<std::string> ParseAll(const std::vector<std::string>& pieces) {
  SseParser parser;
  std::vector<std::string> events;
  auto on_event = [&](std::string_view data) {
    events.emplace_back(data);
    return Status::Ok();
  };
  for (const std::string& p : pieces) EXPECT_TRUE(parser.Feed(p, on_event).ok());
  EXPECT_TRUE(parser.Finish(on_event).ok());
  return events;
}

TEST(SseParser, DataLinesCommentsAndLineEnds) {
  const std::string stream =
      ": keep-alive\r\n\r\n"
      "data: {\"a\":1}\r\n\r\n"
      "event: ignored\nid: 7\ndata:{\"b\":2}\n\n"
      "data: line one\ndata: line two\n\n"
      "data: cr only\r\r"
      "data: [DONE]\n\n";
  const std::vector<std::string> want = {"{\"a\":1}", "{\"b\":2}", "line one\nline two", "cr only", "[DONE]"};
  EXPECT_EQ(ParseAll({stream}), want);
  // Every split point, including between CR and LF, gives the same events.
  for (size_t cut = 0; cut <= stream.size(); ++cut)
    EXPECT_EQ(ParseAll({stream.substr(0, cut), stream.substr(cut)}), want) << "split at " << cut;
  // Byte by byte.
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  EXPECT_EQ(ParseAll(bytes), want);
}

TEST(SseParser, FinishDispatchesAnUnterminatedEvent) {
  EXPECT_EQ(ParseAll({"data: last"}), std::vector<std::string>{"last"});
  EXPECT_EQ(ParseAll({"data: x\n"}), std::vector<std::string>{"x"});
  EXPECT_TRUE(ParseAll({": only a comment\n\n"}).empty());
}

TEST(SseParser, CallbackErrorStopsFeed) {
  SseParser parser;
  int calls = 0;
  Status s = parser.Feed("data: 1\n\ndata: 2\n\n", [&](std::string_view) {
    ++calls;
    return Corrupt("bad");
  });
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_EQ(calls, 1);
}

CompletionRequest SampleRequest() {
  CompletionRequest r;
  r.messages.push_back({"system", "You prove theorems.", {}, {}});
  r.messages.push_back({"user", "Prove 1 + 1 = 2.", {}, {}});
  r.messages.push_back(
      {"assistant", "", {{"call_1", "lean_run_code", R"({"code":"example : 1 + 1 = 2 := rfl"})"}}, {}});
  r.messages.push_back({"tool", "no errors", {}, "call_1"});
  r.messages.push_back({"assistant", "Done: ", {}, {}});
  r.tools.push_back({"lean_run_code", "Run Lean code", R"({"type":"object","properties":{"code":{"type":"string"}}})"});
  r.n = 3;
  r.sampling.temperature = 0.7f;
  r.sampling.top_k = 40;
  r.sampling.seed = 42;
  r.sampling.max_tokens = 99;
  r.sampling.stop = {"```", "\n\n"};
  r.continue_final_message = true;
  return r;
}

TEST(OpenAiWire, ChatRequestRoundTrip) {
  CompletionRequest r = SampleRequest();
  json body = ChatRequestToJson(r, "m1", Dialect::kOpenAI);
  EXPECT_EQ(body["model"], "m1");
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["seed"], 42);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  EXPECT_EQ(body["messages"][2]["tool_calls"][0]["function"]["name"], "lean_run_code");
  EXPECT_FALSE(body.contains("min_p"));  // "off" sampling fields are not sent
  Result<WireRequest> back = ChatRequestFromJson(body.dump(), "test");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  const CompletionRequest& b = back->request;
  EXPECT_TRUE(back->stream);
  EXPECT_TRUE(back->include_usage);
  EXPECT_EQ(back->model, "m1");
  ASSERT_EQ(b.messages.size(), r.messages.size());
  for (size_t i = 0; i < r.messages.size(); ++i) {
    EXPECT_EQ(b.messages[i].role, r.messages[i].role);
    EXPECT_EQ(b.messages[i].content, r.messages[i].content);
    EXPECT_EQ(b.messages[i].tool_call_id, r.messages[i].tool_call_id);
    ASSERT_EQ(b.messages[i].tool_calls.size(), r.messages[i].tool_calls.size());
  }
  EXPECT_EQ(b.messages[2].tool_calls[0].arguments_json, r.messages[2].tool_calls[0].arguments_json);
  ASSERT_EQ(b.tools.size(), 1u);
  EXPECT_EQ(json::parse(b.tools[0].parameters_json_schema), json::parse(r.tools[0].parameters_json_schema));
  EXPECT_EQ(b.n, 3);
  EXPECT_FLOAT_EQ(b.sampling.temperature, 0.7f);
  EXPECT_EQ(b.sampling.top_k, 40);
  EXPECT_EQ(b.sampling.seed, 42u);
  EXPECT_EQ(b.sampling.max_tokens, 99);
  EXPECT_EQ(b.sampling.stop, r.sampling.stop);
  EXPECT_TRUE(b.continue_final_message);
}

TEST(OpenAiWire, MistralDialect) {
  json body = ChatRequestToJson(SampleRequest(), "labs-leanstral-2603", Dialect::kMistral);
  EXPECT_EQ(body["random_seed"], 42);
  EXPECT_FALSE(body.contains("seed"));
  EXPECT_FALSE(body.contains("stream_options"));
  EXPECT_FALSE(body.contains("continue_final_message"));
  EXPECT_EQ(body["messages"].back()["prefix"], true);
  Result<WireRequest> back = ChatRequestFromJson(body.dump(), "test");
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->request.continue_final_message);
  EXPECT_EQ(back->request.sampling.seed, 42u);
  EXPECT_EQ(DialectFor("https://api.mistral.ai/v1"), Dialect::kMistral);
  EXPECT_EQ(DialectFor("http://127.0.0.1:8080/v1"), Dialect::kOpenAI);
  EXPECT_STREQ(ApiKeyVariable("https://api.mistral.ai/v1"), "MISTRAL_API_KEY");
  EXPECT_STREQ(ApiKeyVariable("https://api.openai.com/v1"), "OPENAI_API_KEY");
}

TEST(OpenAiWire, BadRequestsNameTheField) {
  struct Case {
    const char* body;
    const char* says;
  } cases[] = {
      {"{not json", "not valid JSON"},
      {"[1]", "JSON object"},
      {R"({"model":"m"})", "'messages'"},
      {R"({"messages":[{"role":"wizard","content":"x"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":"x"}],"temperature":"hot"})", "'temperature'"},
      {R"({"messages":[{"role":"user","content":"x"}],"n":0})", "'n'"},
      {R"({"messages":[{"role":"user","content":"x"}],"n":1000})", "'n'"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_tokens":-3})", "'max_tokens'"},
      {R"({"messages":[{"role":"user","content":"x"}],"stop":7})", "'stop'"},
      {R"({"messages":[{"role":"user","content":"x"}],"continue_final_message":true})", "assistant"},
  };
  for (const Case& c : cases) {
    Result<WireRequest> r = ChatRequestFromJson(c.body, "/v1/chat/completions");
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << c.body;
    EXPECT_NE(r.status().message().find(c.says), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("/v1/chat/completions"), std::string::npos);
  }
  Result<WireRequest> text = TextRequestFromJson(R"({"prompt":[1,2,3]})", "/v1/completions");
  EXPECT_EQ(text.status().code(), StatusCode::kInvalidArgument);
  Result<WireRequest> ok = TextRequestFromJson(R"({"prompt":"theorem t : True := by","max_tokens":5})", "x");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->request.messages[0].content, "theorem t : True := by");
}

// Scripted chunks in the OpenAI streaming shape.
std::string Delta(int index, const std::string& content) {
  return json{{"choices", {{{"index", index}, {"delta", {{"content", content}}}, {"finish_reason", nullptr}}}}}.dump();
}
std::string Finish(int index, const std::string& reason) {
  return json{{"choices", {{{"index", index}, {"delta", json::object()}, {"finish_reason", reason}}}}}.dump();
}
std::string UsageChunk(int prompt, int completion, int cached) {
  return json{{"choices", json::array()},
              {"usage",
               {{"prompt_tokens", prompt},
                {"completion_tokens", completion},
                {"prompt_tokens_details", {{"cached_tokens", cached}}}}}}
      .dump();
}

RemoteOptions FastOptions(const ScriptedHttpServer& server) {
  RemoteOptions o;
  o.base_url = server.base_url();
  o.model = "scripted";
  o.api_key = "sk-test";
  o.connect_timeout_ms = 2000;
  o.read_timeout_ms = 2000;
  o.max_attempts = 3;
  o.backoff_initial_ms = 5;
  o.backoff_max_ms = 20;
  return o;
}

std::unique_ptr<RemoteModel> Make(const RemoteOptions& o) {
  Result<std::unique_ptr<RemoteModel>> m = RemoteModel::Create(o);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return std::move(m).value();
}

CompletionRequest Simple(int n = 1) {
  CompletionRequest r;
  r.messages.push_back({"user", "hi", {}, {}});
  r.n = n;
  return r;
}

TEST(RemoteModel, StreamsChoicesAndUsage) {
  ScriptedHttpServer server({SseReply({Delta(0, "Hel"), Delta(1, "Wor"), Delta(0, "lo"), Delta(1, "ld"),
                                       Finish(0, "stop"), Finish(1, "length"), UsageChunk(10, 4, 6), "[DONE]"})});
  auto model = Make(FastOptions(server));
  std::vector<std::pair<int, std::string>> pieces;
  Result<Completion> c = model->Complete(Simple(2), [&](int i, std::string_view p) {
    pieces.emplace_back(i, std::string(p));
    return true;
  });
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->choices.size(), 2u);
  EXPECT_EQ(c->choices[0].text, "Hello");
  EXPECT_EQ(c->choices[1].text, "World");
  EXPECT_EQ(c->choices[0].finish_reason, "stop");
  EXPECT_EQ(c->choices[1].finish_reason, "length");
  EXPECT_EQ(c->choices[0].completion_tokens, 2);
  EXPECT_EQ(c->usage.prompt_tokens, 10);
  EXPECT_EQ(c->usage.prompt_tokens_computed, 4);
  EXPECT_EQ(c->usage.completion_tokens, 4);
  std::vector<std::pair<int, std::string>> want = {{0, "Hel"}, {1, "Wor"}, {0, "lo"}, {1, "ld"}};
  EXPECT_EQ(pieces, want);
  ASSERT_EQ(server.requests().size(), 1u);
  const std::string req = server.requests()[0];
  EXPECT_NE(req.find("POST /v1/chat/completions"), std::string::npos);
  EXPECT_NE(req.find("Authorization: Bearer sk-test"), std::string::npos);
  json body = json::parse(req.substr(req.find("\r\n\r\n") + 4));
  EXPECT_EQ(body["n"], 2);
  EXPECT_EQ(body["model"], "scripted");
}

TEST(RemoteModel, ToolCallsStreamedInPiecesOrWhole) {
  json openai_1 = {{"choices",
                    {{{"index", 0},
                      {"delta",
                       {{"tool_calls",
                         {{{"index", 0},
                           {"id", "call_9"},
                           {"type", "function"},
                           {"function", {{"name", "lean_goal"}, {"arguments", "{\"li"}}}}}}}}}}}};
  json openai_2 = {
      {"choices",
       {{{"index", 0}, {"delta", {{"tool_calls", {{{"index", 0}, {"function", {{"arguments", "ne\": 3}"}}}}}}}}}}}};
  json mistral = {
      {"choices",
       {{{"index", 0},
         {"delta",
          {{"content", ""},
           {"tool_calls", {{{"id", "abcDEF123"}, {"function", {{"name", "lean_run_code"}, {"arguments", "{}"}}}}}}}},
         {"finish_reason", "tool_calls"}}}}};
  ScriptedHttpServer server({SseReply({openai_1.dump(), openai_2.dump(), mistral.dump(), "[DONE]"})});
  auto model = Make(FastOptions(server));
  Result<Completion> c = model->Complete(Simple(), nullptr);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const Choice& ch = c->choices[0];
  EXPECT_EQ(ch.finish_reason, "tool_calls");
  ASSERT_EQ(ch.tool_calls.size(), 2u);
  EXPECT_EQ(ch.tool_calls[0].id, "call_9");
  EXPECT_EQ(ch.tool_calls[0].name, "lean_goal");
  EXPECT_EQ(ch.tool_calls[0].arguments_json, "{\"line\": 3}");
  EXPECT_EQ(ch.tool_calls[1].id, "abcDEF123");
  EXPECT_EQ(ch.tool_calls[1].name, "lean_run_code");
}

TEST(RemoteModel, RetriesAfter429ThenSucceeds) {
  ScriptedHttpServer server(
      {HttpReply(429, "application/json", R"({"error":{"message":"slow down"}})", {"Retry-After: 0"}),
       HttpReply(503, "application/json", R"({"message":"overloaded"})"),
       SseReply({Delta(0, "ok"), Finish(0, "stop"), "[DONE]"})});
  auto model = Make(FastOptions(server));
  Result<Completion> c = model->Complete(Simple(), nullptr);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->choices[0].text, "ok");
  EXPECT_EQ(server.requests().size(), 3u);
}

TEST(RemoteModel, Persistent500IsUnavailableAfterCappedAttempts) {
  std::vector<ScriptedReply> replies(5, HttpReply(500, "application/json", R"({"error":{"message":"boom"}})"));
  ScriptedHttpServer server(replies);
  auto model = Make(FastOptions(server));
  Result<Completion> c = model->Complete(Simple(), nullptr);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(c.status().message().find("HTTP 500: boom"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("3 attempts"), std::string::npos) << c.status().message();
  EXPECT_EQ(server.requests().size(), 3u);
}

TEST(RemoteModel, ClientErrorsAreNotRetriedAndCarryTheServerMessage) {
  ScriptedHttpServer server(
      {HttpReply(400, "application/json", R"({"error":{"message":"max_tokens is too large","type":"x"}})"),
       HttpReply(401, "application/json", R"({"message":"Unauthorized"})"),
       HttpReply(404, "application/json", R"({"detail":"model not found"})"),
       HttpReply(422, "application/json", R"({"detail":[{"loc":["body","n"],"msg":"bad"}]})")});
  auto model = Make(FastOptions(server));
  Result<Completion> bad = model->Complete(Simple(), nullptr);
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("max_tokens is too large"), std::string::npos);
  Result<Completion> auth = model->Complete(Simple(), nullptr);
  EXPECT_EQ(auth.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(auth.status().message().find("OPENAI_API_KEY"), std::string::npos) << auth.status().message();
  Result<Completion> missing = model->Complete(Simple(), nullptr);
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("model not found"), std::string::npos);
  Result<Completion> unprocessable = model->Complete(Simple(), nullptr);
  EXPECT_EQ(unprocessable.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(unprocessable.status().message().find("\"msg\":\"bad\""), std::string::npos);
  EXPECT_EQ(server.requests().size(), 4u);
}

TEST(RemoteModel, SlowServerTimesOut) {
  ScriptedReply slow = SseReply({Delta(0, "late"), Finish(0, "stop"), "[DONE]"}, /*delay_ms=*/3000);
  ScriptedHttpServer server({slow});
  RemoteOptions o = FastOptions(server);
  o.read_timeout_ms = 150;
  auto model = Make(o);
  auto start = std::chrono::steady_clock::now();
  Result<Completion> c = model->Complete(Simple(), nullptr);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(c.status().code(), StatusCode::kTimeout) << c.status().ToString();
  EXPECT_NE(c.status().message().find("150 ms"), std::string::npos);
  EXPECT_LT(ms, 2000);
  EXPECT_EQ(server.requests().size(), 1u);
}

TEST(RemoteModel, MalformedStreamIsCorrupt) {
  ScriptedHttpServer server({SseReply({Delta(0, "a"), "{\"choices\": [oops"}),
                             SseReply({R"({"choices":[{"index":7,"delta":{"content":"x"}}]})"}),
                             SseReply({R"({"choices":[{"index":0,"delta":{"content":5}}]})"}),
                             SseReply({Delta(0, "a"), "[DONE]"}),
                             HttpReply(200, "application/json", R"({"choices":[]})")});
  auto model = Make(FastOptions(server));
  const char* says[] = {"not a JSON object", "out of range", "delta.content", "without a finish_reason",
                        "text/event-stream"};
  for (const char* s : says) {
    Result<Completion> c = model->Complete(Simple(), nullptr);
    EXPECT_EQ(c.status().code(), StatusCode::kCorrupt) << c.status().ToString();
    EXPECT_NE(c.status().message().find(s), std::string::npos) << c.status().message();
    EXPECT_NE(c.status().message().find("/v1/chat/completions"), std::string::npos);
  }
  EXPECT_EQ(server.requests().size(), 5u);  // corrupt replies are not retried
}

TEST(RemoteModel, DisconnectMidStreamIsUnavailableWithoutRetry) {
  ScriptedHttpServer server({SseReply({Delta(0, "partial ")}), SseReply({Delta(0, "never used")})});
  auto model = Make(FastOptions(server));
  std::string seen;
  Result<Completion> c = model->Complete(Simple(), [&](int, std::string_view p) {
    seen += p;
    return true;
  });
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
  EXPECT_NE(c.status().message().find("before finishing"), std::string::npos) << c.status().message();
  EXPECT_EQ(seen, "partial ");
  EXPECT_EQ(server.requests().size(), 1u);  // pieces were delivered: a retry would repeat them
}

TEST(RemoteModel, DisconnectBeforeAnyPieceIsRetried) {
  ScriptedReply cut{{{0, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: 500\r\n\r\n: hi\n"}}};
  ScriptedHttpServer server({cut, SseReply({Delta(0, "ok"), Finish(0, "stop"), "[DONE]"})});
  auto model = Make(FastOptions(server));
  Result<Completion> c = model->Complete(Simple(), nullptr);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->choices[0].text, "ok");
  EXPECT_EQ(server.requests().size(), 2u);
}

TEST(RemoteModel, MidStreamErrorEventKeepsItsCode) {
  ScriptedHttpServer server({SseReply({Delta(0, "a"), R"({"error":{"message":"context too long","code":400}})"})});
  auto model = Make(FastOptions(server));
  Result<Completion> c = model->Complete(Simple(), nullptr);
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << c.status().ToString();
  EXPECT_NE(c.status().message().find("context too long"), std::string::npos);
}

TEST(RemoteModel, CallbackFalseCancelsPromptly) {
  ScriptedReply r = SseReply({Delta(0, "one"), Delta(0, "two"), Finish(0, "stop"), "[DONE]"}, 0);
  r.parts[2].delay_ms = 3000;  // "two" would come much later
  ScriptedHttpServer server({r});
  auto model = Make(FastOptions(server));
  auto start = std::chrono::steady_clock::now();
  Result<Completion> c = model->Complete(Simple(2), [](int, std::string_view) { return false; });
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->choices.size(), 2u);
  EXPECT_EQ(c->choices[0].finish_reason, "cancelled");
  EXPECT_EQ(c->choices[0].text, "one");
  EXPECT_EQ(c->choices[1].finish_reason, "cancelled");
  EXPECT_LT(ms, 1500);
}

TEST(RemoteModel, TheRequestsCancelFlagStopsItBeforeTheFirstPiece) {
  // The server answers after 3 s (a long prefill, a busy API); the cancel flag is set after 200 ms.
  ScriptedReply slow = SseReply({Delta(0, "late"), Finish(0, "stop"), "[DONE]"}, /*delay_ms=*/3000);
  ScriptedHttpServer server({slow});
  auto model = Make(FastOptions(server));
  std::atomic<bool> cancel{false};
  CompletionRequest request = Simple(2);
  request.cancel = &cancel;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    cancel.store(true);
  });
  auto start = std::chrono::steady_clock::now();
  Result<Completion> c = model->Complete(request, nullptr);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  canceller.join();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->choices.size(), 2u);
  for (const Choice& choice : c->choices) EXPECT_EQ(choice.finish_reason, "cancelled");
  EXPECT_LT(ms, 1500);
  EXPECT_EQ(server.requests().size(), 1u);
}

TEST(RemoteModel, AsksAgainWhenTheServerReturnsFewerChoices) {
  ScriptedHttpServer server({SseReply({Delta(0, "first"), Finish(0, "stop"), UsageChunk(5, 1, 0), "[DONE]"}),
                             SseReply({Delta(0, "second"), Finish(0, "stop"), UsageChunk(5, 1, 5), "[DONE]"})});
  auto model = Make(FastOptions(server));
  std::vector<int> indices;
  Result<Completion> c = model->Complete(Simple(2), [&](int i, std::string_view) {
    indices.push_back(i);
    return true;
  });
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->choices.size(), 2u);
  EXPECT_EQ(c->choices[1].text, "second");
  EXPECT_EQ(indices, (std::vector<int>{0, 1}));
  EXPECT_EQ(c->usage.prompt_tokens, 5);
  EXPECT_EQ(c->usage.prompt_tokens_computed, 5);
  EXPECT_EQ(c->usage.completion_tokens, 2);
  json second = json::parse(server.requests()[1].substr(server.requests()[1].find("\r\n\r\n") + 4));
  EXPECT_EQ(second["n"], 1);
}

TEST(RemoteModel, ConnectionRefusedIsUnavailable) {
  int port;
  {
    ScriptedHttpServer closed({});
    port = closed.port();
  }
  RemoteOptions o;
  o.base_url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  o.model = "m";
  o.max_attempts = 2;
  o.backoff_initial_ms = 1;
  o.backoff_max_ms = 2;
  auto model = Make(o);
  Result<Completion> c = model->Complete(Simple(), nullptr);
  EXPECT_EQ(c.status().code(), StatusCode::kUnavailable) << c.status().ToString();
  EXPECT_NE(c.status().message().find("127.0.0.1"), std::string::npos);
}

TEST(RemoteModel, ApiKeyFromTheEnvironment) {
  ScriptedHttpServer server({SseReply({Delta(0, "k"), Finish(0, "stop"), "[DONE]"})});
  RemoteOptions o = FastOptions(server);
  o.api_key.clear();
  setenv("OPENAI_API_KEY", "sk-from-env", 1);
  auto model = Make(o);
  unsetenv("OPENAI_API_KEY");
  ASSERT_TRUE(model->Complete(Simple(), nullptr).ok());
  EXPECT_NE(server.requests()[0].find("Authorization: Bearer sk-from-env"), std::string::npos);
}

TEST(RemoteModel, RejectsBadOptions) {
  RemoteOptions o;
  o.base_url = "ftp://x";
  o.model = "m";
  EXPECT_EQ(RemoteModel::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.base_url = "http://127.0.0.1:1/v1";
  o.model = "";
  EXPECT_EQ(RemoteModel::Create(o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lr::net
