// RemoteModel -> `leanrotor serve`'s server -> LocalModel on the real default model, over loopback: what the agent
// gets through HTTP is what it gets in-process.
#include <gtest/gtest.h>

#include "inference/local_model.h"
#include "inference/remote_model.h"
#include "inference/serve.h"

namespace lr::inference {
namespace {

const std::string kDefaultModel = std::string(LR_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

TEST(RemoteModelOverServe, GreedyChoicesMatchTheInProcessRunner) {
  LocalModelOptions lo;
  lo.path = kDefaultModel;
  lo.n_ctx = 512;
  lo.kv.max_tokens = 2048;
  Result<std::unique_ptr<LocalModel>> local = LocalModel::Open(lo);
  ASSERT_TRUE(local.ok()) << local.status().ToString();

  ServeOptions so;
  so.port = 0;
  Server server(**local, so);
  ASSERT_TRUE(server.Start().ok());
  RemoteOptions ro;
  ro.base_url = "http://127.0.0.1:" + std::to_string(server.port()) + "/v1";
  ro.model = "local";
  ro.max_attempts = 1;
  Result<std::unique_ptr<RemoteModel>> remote = RemoteModel::Create(ro);
  ASSERT_TRUE(remote.ok());

  CompletionRequest r;
  r.messages.push_back({"user", "Complete the Lean proof: theorem t : 2 + 2 = 4 := by", {}, {}});
  r.n = 2;
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = 12;

  std::string streamed;
  Result<Completion> over_http = (*remote)->Complete(r, [&](int i, std::string_view p) {
    if (i == 0) streamed += p;
    return true;
  });
  ASSERT_TRUE(over_http.ok()) << over_http.status().ToString();
  Result<Completion> direct = (*local)->Complete(r, nullptr);
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

}  // namespace
}  // namespace lr::inference
