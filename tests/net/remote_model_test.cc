// RemoteModel -> `leanrotor serve` -> LocalModel on the real default model, over loopback: what the agent gets through
// HTTP is what it gets in-process, from the in-process Server and from the `leanrotor serve` executable. Skipped when
// the default model is not in models/ (scripts/setup.sh puts it there).
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "base/file.h"

#include "net/remote_model.h"
#include "net/serve.h"
#include "tests/inference/default_model.h"

namespace lr::net {
namespace {

std::string LogText(const std::string& path) {
  Result<std::string> text = ReadFile(path);
  return text.ok() ? *text : "(no log at " + path + ")";
}

// A client of `server` (or of any port) on loopback, without retries.
std::unique_ptr<RemoteModel> ClientOf(const std::string& port) {
  RemoteOptions ro;
  ro.base_url = "http://127.0.0.1:" + port + "/v1";
  ro.model = "local";
  ro.max_attempts = 1;
  Result<std::unique_ptr<RemoteModel>> remote = RemoteModel::Create(ro);
  EXPECT_TRUE(remote.ok()) << remote.status().ToString();
  return remote.ok() ? std::move(remote).value() : nullptr;
}

#define SKIP_WITHOUT_DEFAULT_MODEL()                      \
  if (!std::filesystem::exists(inference::kDefaultModel)) \
  GTEST_SKIP() << inference::kDefaultModel << " is missing (scripts/setup.sh)"

TEST(RemoteModelOverServe, GreedyChoicesMatchTheInProcessRunner) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::unique_ptr<inference::LocalModel> local = inference::OpenDefaultModel();
  ASSERT_TRUE(local);
  ServeOptions so;
  so.port = 0;
  Server server(*local, so);
  ASSERT_TRUE(server.Start().ok());
  std::unique_ptr<RemoteModel> remote = ClientOf(std::to_string(server.port()));
  ASSERT_TRUE(remote);

  CompletionRequest r;
  r.messages.push_back({"user", "Complete the Lean proof: theorem t : 2 + 2 = 4 := by", {}, {}});
  r.n = 2;
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = 12;

  std::string streamed;
  Result<Completion> over_http = remote->Complete(r, [&](int i, std::string_view p) {
    if (i == 0) streamed += p;
    return true;
  });
  ASSERT_TRUE(over_http.ok()) << over_http.status().ToString();
  Result<Completion> direct = local->Complete(r, nullptr);
  ASSERT_TRUE(direct.ok()) << direct.status().ToString();

  ASSERT_EQ(over_http->choices.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_FALSE(over_http->choices[i].text.empty());
    EXPECT_EQ(over_http->choices[i].text, direct->choices[i].text) << i;
    EXPECT_EQ(over_http->choices[i].finish_reason, direct->choices[i].finish_reason) << i;
  }
  EXPECT_EQ(streamed, direct->choices[0].text);
  EXPECT_EQ(over_http->usage.prompt_tokens, direct->usage.prompt_tokens);
  EXPECT_EQ(over_http->usage.completion_tokens, direct->usage.completion_tokens);
  EXPECT_GT(over_http->usage.prompt_tokens, 10);
}

TEST(RemoteModelOverServe, ConcurrentClientsShareDecodeSteps) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  std::unique_ptr<inference::LocalModel> local = inference::OpenDefaultModel();
  ASSERT_TRUE(local);
  ServeOptions so;
  so.port = 0;
  so.max_running = 4;
  Server server(*local, so);
  ASSERT_TRUE(server.Start().ok());

  const char* questions[] = {"Write a long story about the number seven.", "Explain induction on natural numbers.",
                             "List every prime below one hundred, then explain why each is prime."};
  std::vector<CompletionRequest> requests;
  std::vector<Completion> alone;
  for (const char* q : questions) {
    CompletionRequest r;
    r.messages.push_back({"user", q, {}, {}});
    r.n = 2;
    r.sampling.temperature = 0.0f;
    r.sampling.max_tokens = 40;
    Result<Completion> c = local->Complete(r, nullptr);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    alone.push_back(*c);
    requests.push_back(r);
  }
  const long steps_alone = local->engine_stats().steps;

  // Three clients at once, over HTTP: their choices decode together, and each gets what it got alone.
  std::vector<Result<Completion>> over_http(3, Internal("not run"));
  std::vector<std::thread> clients;
  for (size_t i = 0; i < 3; ++i)
    clients.emplace_back([&, i] {
      std::unique_ptr<RemoteModel> remote = ClientOf(std::to_string(server.port()));
      if (remote) over_http[i] = remote->Complete(requests[i], [](int, std::string_view) { return true; });
    });
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(over_http[i].ok()) << i << ": " << over_http[i].status().ToString();
    for (size_t c = 0; c < 2; ++c) EXPECT_EQ(over_http[i]->choices[c].text, alone[i].choices[c].text) << i << "/" << c;
  }
  const inference::EngineStats e = local->engine_stats();
  EXPECT_GT(e.batched_steps, 0);
  EXPECT_GE(e.peak_requests, 2);
  EXPECT_LT(e.steps - steps_alone, steps_alone);  // fewer steps than one request after another
  EXPECT_NE(server.MetricsText().find("leanrotor_requests_running"), std::string::npos);
}

TEST(RemoteModelOverServe, LeanrotorServeExecutable) {
  SKIP_WITHOUT_DEFAULT_MODEL();
  const std::string log = ::testing::TempDir() + "/leanrotor_serve_" + std::to_string(::getpid()) + ".log";
  pid_t serve = ::fork();
  ASSERT_GE(serve, 0);
  if (serve == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::execl(LR_LEANROTOR, LR_LEANROTOR, "serve", "-m", inference::kDefaultModel.c_str(), "--port", "0", "-c", "512",
            nullptr);
    std::_Exit(127);
  }
  // It says where it listens once it does: "... on http://127.0.0.1:PORT/v1 ...".
  const std::string marker = "on http://127.0.0.1:";
  std::string port;
  for (int waited = 0; port.empty() && waited < 120000; waited += 20) {
    Result<std::string> text = ReadFile(log);
    size_t at = text.ok() ? text->find(marker) : std::string::npos;
    if (at != std::string::npos && text->find("/v1", at) != std::string::npos)
      port = text->substr(at + marker.size(), text->find("/v1", at) - at - marker.size());
    else
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_FALSE(port.empty()) << "leanrotor serve did not start: " << LogText(log);

  std::unique_ptr<RemoteModel> remote = ClientOf(port);
  ASSERT_TRUE(remote);
  CompletionRequest r;
  r.messages.push_back({"user", "Complete the Lean proof: theorem t : 2 + 2 = 4 := by", {}, {}});
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = 10;
  for (int n : {1, 3}) {
    r.n = n;
    std::vector<std::string> streamed(n);
    Result<Completion> c = remote->Complete(r, [&](int i, std::string_view p) {
      if (i >= 0 && i < n) streamed[i] += p;
      return true;
    });
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    ASSERT_EQ(c->choices.size(), static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      EXPECT_FALSE(c->choices[i].text.empty()) << i;
      EXPECT_EQ(streamed[i], c->choices[i].text) << i;
      EXPECT_EQ(c->choices[i].text, c->choices[0].text) << "greedy choices differ: " << i;
    }
    EXPECT_GT(c->usage.prompt_tokens, 10);
    EXPECT_GT(c->usage.completion_tokens, 0);
  }

  ASSERT_EQ(::kill(serve, SIGINT), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(serve, &status, 0), serve);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << LogText(log);
}

}  // namespace
}  // namespace lr::net
