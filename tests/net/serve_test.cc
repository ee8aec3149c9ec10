// `leanrotor serve`'s server over a scripted LanguageModel, reached over loopback with RemoteModel and plain libcurl.
#include <curl/curl.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "net/remote_model.h"
#include "net/serve.h"

namespace lr::net {
namespace {

using nlohmann::json;

// Choice i answers "c<i>:" then the words of the last message, one piece per word. It can be held at a gate, made
// slow, or made to fail; it records what it was asked and whether a caller cancelled it.
class ScriptedModel : public LanguageModel {
 public:
  std::string Name() const override { return "scripted-model"; }

  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece) override {
    {
      std::unique_lock<std::mutex> lock(mu_);
      last_request_ = request;
      ++entered_;
      gate_cv_.wait(lock, [&] { return gate_open_; });
    }
    if (!fail_.ok()) return fail_;
    std::vector<std::string> words = {};
    const std::string& text = request.messages.back().content;
    for (size_t at = 0; at < text.size();) {
      size_t end = text.find(' ', at);
      if (end == std::string::npos) end = text.size();
      words.push_back(" " + text.substr(at, end - at));
      at = end + 1;
    }
    for (int r = 0; r < repeat_; ++r) words.push_back(" again");
    Completion c;
    c.choices.resize(request.n);
    bool cancelled = false;
    for (size_t k = 0; k <= words.size() && !cancelled; ++k) {
      for (int i = 0; i < request.n && !cancelled; ++i) {
        std::string piece;
        if (k == 0) {
          piece = "c";
          piece += std::to_string(i);
          piece += ':';
        } else {
          piece = words[k - 1];
        }
        if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
        c.choices[i].text += piece;
        c.choices[i].completion_tokens++;
        if (on_piece && !on_piece(i, piece)) cancelled = true;
      }
    }
    for (Choice& ch : c.choices) {
      ch.finish_reason = cancelled ? "cancelled" : "stop";
      if (!request.tools.empty() && !cancelled) {
        ch.tool_calls.push_back({"call_0", request.tools[0].name, R"({"x":1})"});
        ch.finish_reason = "tool_calls";
      }
      c.usage.completion_tokens += ch.completion_tokens;
    }
    c.usage.prompt_tokens = 7;
    c.usage.prompt_tokens_computed = 3;
    if (cancelled) ++cancelled_calls_;
    return c;
  }

  void CloseGate() {
    std::lock_guard<std::mutex> lock(mu_);
    gate_open_ = false;
  }
  void OpenGate() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      gate_open_ = true;
    }
    gate_cv_.notify_all();
  }
  int entered() {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_;
  }
  CompletionRequest last_request() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_request_;
  }

  Status fail_;
  int delay_ms_ = 0;
  int repeat_ = 0;
  std::atomic<int> cancelled_calls_{0};

 private:
  std::mutex mu_;
  std::condition_variable gate_cv_;
  bool gate_open_ = true;
  int entered_ = 0;
  CompletionRequest last_request_;
};

struct HttpResult {
  long status = 0;
  std::string body;
  std::string headers;
};

HttpResult Http(const std::string& url, const std::string* post_body) {
  HttpResult r;
  CURL* curl = curl_easy_init();
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 5000L);
  if (post_body) {
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, post_body->c_str());
  }
  auto append = +[](char* p, size_t s, size_t n, void* out) {
    static_cast<std::string*>(out)->append(p, s * n);
    return s * n;
  };
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, append);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &r.body);
  curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, append);
  curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r.headers);
  if (curl_easy_perform(curl) == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  return r;
}

class ServeTest : public ::testing::Test {
 protected:
  void StartServer(int max_running = 1, int max_queued = 4) {
    ServeOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.max_running = max_running;
    o.max_queued = max_queued;
    server_ = std::make_unique<Server>(model_, o);
    ASSERT_TRUE(server_->Start().ok());
    base_ = "http://127.0.0.1:" + std::to_string(server_->port());
  }
  std::unique_ptr<RemoteModel> Client(int max_attempts = 1) {
    RemoteOptions o;
    o.base_url = base_ + "/v1";
    o.model = "scripted-model";
    o.max_attempts = max_attempts;
    o.read_timeout_ms = 5000;
    o.backoff_initial_ms = 5;
    o.backoff_max_ms = 10;
    auto m = RemoteModel::Create(o);
    EXPECT_TRUE(m.ok());
    return std::move(m).value();
  }
  // Polls /metrics until `line` appears (bounded).
  bool WaitForMetric(const std::string& line) {
    for (int i = 0; i < 200; ++i) {
      if (server_->MetricsText().find(line) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  ScriptedModel model_;
  std::unique_ptr<Server> server_;
  std::string base_;
};

CompletionRequest Ask(const std::string& text, int n = 1) {
  CompletionRequest r;
  r.messages.push_back({"system", "be brief", {}, {}});
  r.messages.push_back({"user", text, {}, {}});
  r.n = n;
  r.sampling.temperature = 0.5f;
  r.sampling.seed = 11;
  r.sampling.max_tokens = 33;
  r.sampling.stop = {"END"};
  return r;
}

TEST_F(ServeTest, RemoteModelStreamsThroughTheServer) {
  StartServer();
  auto client = Client();
  std::vector<std::string> streamed(3);
  Result<Completion> c = client->Complete(Ask("prove it now", 3), [&](int i, std::string_view p) {
    streamed.at(i) += p;
    return true;
  });
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->choices.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    std::string want = "c" + std::to_string(i) + ": prove it now";
    EXPECT_EQ(c->choices[i].text, want);
    EXPECT_EQ(streamed[i], want);
    EXPECT_EQ(c->choices[i].finish_reason, "stop");
    EXPECT_EQ(c->choices[i].completion_tokens, 4);
  }
  EXPECT_EQ(c->usage.prompt_tokens, 7);
  EXPECT_EQ(c->usage.prompt_tokens_computed, 3);
  EXPECT_EQ(c->usage.completion_tokens, 12);
  CompletionRequest seen = model_.last_request();
  EXPECT_EQ(seen.n, 3);
  EXPECT_FLOAT_EQ(seen.sampling.temperature, 0.5f);
  EXPECT_EQ(seen.sampling.seed, 11u);
  EXPECT_EQ(seen.sampling.max_tokens, 33);
  EXPECT_EQ(seen.sampling.stop, std::vector<std::string>{"END"});
  ASSERT_EQ(seen.messages.size(), 2u);
  EXPECT_EQ(seen.messages[0].content, "be brief");
  std::string metrics = server_->MetricsText();
  EXPECT_NE(metrics.find("leanrotor_completion_tokens_total 12"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("leanrotor_prompt_tokens_total 7"), std::string::npos);
}

TEST_F(ServeTest, ToolCallsReachTheClient) {
  StartServer();
  auto client = Client();
  CompletionRequest r = Ask("use the tool");
  r.tools.push_back({"lean_goal", "the goal at a line", R"({"type":"object"})"});
  Result<Completion> c = client->Complete(r, nullptr);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->choices[0].finish_reason, "tool_calls");
  ASSERT_EQ(c->choices[0].tool_calls.size(), 1u);
  EXPECT_EQ(c->choices[0].tool_calls[0].name, "lean_goal");
  EXPECT_EQ(c->choices[0].tool_calls[0].arguments_json, R"({"x":1})");
  EXPECT_EQ(model_.last_request().tools.at(0).name, "lean_goal");
}

TEST_F(ServeTest, WholeRepliesForChatAndTextCompletions) {
  StartServer();
  std::string chat = R"({"model":"x","n":2,"messages":[{"role":"user","content":"a b"}]})";
  HttpResult r = Http(base_ + "/v1/chat/completions", &chat);
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["model"], "scripted-model");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][1]["message"]["content"], "c1: a b");
  EXPECT_EQ(j["choices"][1]["message"]["role"], "assistant");
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  EXPECT_EQ(j["usage"]["total_tokens"], 13);
  EXPECT_EQ(j["usage"]["prompt_tokens_details"]["cached_tokens"], 4);

  std::string text = R"({"prompt":"theorem t","max_tokens":8})";
  r = Http(base_ + "/v1/completions", &text);
  ASSERT_EQ(r.status, 200) << r.body;
  j = json::parse(r.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "c0: theorem t");
  EXPECT_EQ(model_.last_request().messages.at(0).role, "user");

  std::string streamed = R"({"prompt":"go","stream":true,"stream_options":{"include_usage":true}})";
  r = Http(base_ + "/v1/completions", &streamed);
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.headers.find("text/event-stream"), std::string::npos);
  EXPECT_NE(r.body.find(R"("text":" go")"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find(R"("usage":{)"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("data: [DONE]\n\n"), std::string::npos);
}

TEST_F(ServeTest, HealthModelsMetricsAndUnknownPaths) {
  StartServer();
  HttpResult h = Http(base_ + "/health", nullptr);
  ASSERT_EQ(h.status, 200);
  EXPECT_EQ(json::parse(h.body)["status"], "ok");
  HttpResult m = Http(base_ + "/v1/models", nullptr);
  EXPECT_EQ(json::parse(m.body)["data"][0]["id"], "scripted-model");
  HttpResult missing = Http(base_ + "/v2/nothing", nullptr);
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(json::parse(missing.body)["error"]["message"].get<std::string>().find("/v2/nothing"), std::string::npos);
  HttpResult metrics = Http(base_ + "/metrics", nullptr);
  ASSERT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("# TYPE leanrotor_requests_total counter"), std::string::npos);
  EXPECT_NE(metrics.body.find(R"(leanrotor_requests_total{endpoint="/health",code="200"} 1)"), std::string::npos)
      << metrics.body;
  EXPECT_NE(metrics.body.find(R"(leanrotor_requests_total{endpoint="other",code="404"} 1)"), std::string::npos);
  EXPECT_NE(metrics.body.find("leanrotor_queue_depth 0"), std::string::npos);
}

TEST_F(ServeTest, BadRequestsAre400WithTheReason) {
  StartServer();
  std::string broken = "{\"messages\": [";
  HttpResult r = Http(base_ + "/v1/chat/completions", &broken);
  EXPECT_EQ(r.status, 400);
  json j = json::parse(r.body);
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_NE(j["error"]["message"].get<std::string>().find("not valid JSON"), std::string::npos);

  auto client = Client();
  CompletionRequest bad = Ask("x");
  bad.sampling.temperature = -1.0f;
  Result<Completion> c = client->Complete(bad, nullptr);
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("temperature"), std::string::npos) << c.status().message();
  EXPECT_EQ(model_.entered(), 0);
}

TEST_F(ServeTest, ModelErrorsKeepTheirKind) {
  model_.fail_ = ResourceExhausted("prompt of 9000 tokens exceeds n_ctx 4096");
  StartServer();
  Result<Completion> streamed = Client()->Complete(Ask("x"), nullptr);  // error after the stream began
  EXPECT_EQ(streamed.status().code(), StatusCode::kInvalidArgument) << streamed.status().ToString();
  EXPECT_NE(streamed.status().message().find("exceeds n_ctx"), std::string::npos);
  std::string whole = R"({"messages":[{"role":"user","content":"x"}]})";
  HttpResult r = Http(base_ + "/v1/chat/completions", &whole);
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("exceeds n_ctx"), std::string::npos);
}

TEST_F(ServeTest, FullQueueAnswers503) {
  model_.CloseGate();
  StartServer(/*max_running=*/1, /*max_queued=*/1);
  Result<Completion> first = Internal("unset"), second = Internal("unset");
  std::thread a([&] { first = Client()->Complete(Ask("one"), nullptr); });
  for (int i = 0; i < 500 && model_.entered() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(model_.entered(), 1);
  std::thread b([&] { second = Client()->Complete(Ask("two"), nullptr); });
  ASSERT_TRUE(WaitForMetric("leanrotor_queue_depth 1"));

  Result<Completion> third = Client()->Complete(Ask("three"), nullptr);
  EXPECT_EQ(third.status().code(), StatusCode::kUnavailable) << third.status().ToString();
  EXPECT_NE(third.status().message().find("queue is full"), std::string::npos) << third.status().message();
  std::string body = R"({"messages":[{"role":"user","content":"four"}]})";
  HttpResult r = Http(base_ + "/v1/chat/completions", &body);
  EXPECT_EQ(r.status, 503);
  EXPECT_NE(r.headers.find("Retry-After: 1"), std::string::npos);
  EXPECT_EQ(json::parse(r.body)["error"]["code"], 503);
  EXPECT_EQ(Http(base_ + "/health", nullptr).status, 200);  // still answered while full

  model_.OpenGate();
  a.join();
  b.join();
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  EXPECT_EQ(second->choices[0].text, "c0: two");
  EXPECT_NE(server_->MetricsText().find("leanrotor_requests_rejected_total 2"), std::string::npos);
  EXPECT_TRUE(WaitForMetric("leanrotor_queue_depth 0"));
}

TEST_F(ServeTest, ClientCancellationStopsTheGeneration) {
  model_.delay_ms_ = 2;
  model_.repeat_ = 2000;  // ~4 s if never cancelled
  StartServer();
  int pieces = 0;
  auto start = std::chrono::steady_clock::now();
  Result<Completion> c = Client()->Complete(Ask("go"), [&](int, std::string_view) { return ++pieces < 3; });
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->choices[0].finish_reason, "cancelled");
  for (int i = 0; i < 300 && model_.cancelled_calls_ == 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(model_.cancelled_calls_, 1);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_TRUE(WaitForMetric("leanrotor_requests_cancelled_total 1"));
}

TEST_F(ServeTest, StopEndsRunningStreams) {
  model_.delay_ms_ = 2;
  model_.repeat_ = 5000;
  StartServer();
  std::thread t([&] { (void)Client()->Complete(Ask("long"), nullptr); });
  for (int i = 0; i < 500 && model_.entered() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto start = std::chrono::steady_clock::now();
  server_->Stop();
  t.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_EQ(model_.cancelled_calls_, 1);
}

TEST_F(ServeTest, PortInUseIsUnavailable) {
  StartServer();
  ServeOptions o;
  o.port = server_->port();
  Server second(model_, o);
  Status s = second.Start();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_NE(s.message().find(std::to_string(o.port)), std::string::npos);
}

}  // namespace
}  // namespace lr::net
