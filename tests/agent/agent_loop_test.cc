// The agent loop with a scripted Leanstral-like model (scripted_agent_model.h) and the scripted Lean server on a copy
// of tests/fixtures/lake_sorries: every sorry completed through the tools and judged by the guard; a cheat refused;
// budgets; malformed calls answered with tool errors; nothing written to disk.
#include "agent/agent_loop.h"
#include "agent/batch.h"

#include <unistd.h>

#include <gtest/gtest.h>
#include <filesystem>

#include "base/file.h"
#include "tests/agent/lake_fixture.h"
#include "tests/agent/scripted_agent_model.h"

namespace lr::agent {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

class AgentLoopTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = testing::CopyLakeFixture("agent_" +
                                     std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    lsp::PoolOptions pool_options;
    pool_options.lean_command = {LR_SCRIPTED_LEAN_SERVER};
    pool_ = std::make_unique<lsp::ServerPool>(pool_options);
    checker_ = std::make_unique<PoolChecker>(*pool_);
    auto copy = WorkingCopy::Open(root_);
    ASSERT_TRUE(copy.ok());
    copy_ = std::move(*copy);
    ToolsOptions options;
    options.search_roots = {root_ + "/none"};
    tools_ = std::make_unique<ToolBox>(*pool_, *copy_, options);
    original_ = *ReadFile(root_ + "/" + kFile);
  }

  static constexpr char kFile[] = "Sorries/Basic.lean";
  std::string root_;
  std::string original_;
  std::unique_ptr<lsp::ServerPool> pool_;
  std::unique_ptr<PoolChecker> checker_;
  std::unique_ptr<WorkingCopy> copy_;
  std::unique_ptr<ToolBox> tools_;
};

TEST_F(AgentLoopTest, CompletesEverySorryThroughTheToolsAndTheGuard) {
  testing::ScriptedAgentModel model(kFile);
  AgentOptions options;
  auto r = RunAgent({kFile, {}, ""}, model, *tools_, *checker_, options);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->proved) << r->stop_reason << " " << r->last_refusal;
  EXPECT_EQ(r->stop_reason, "proved");
  EXPECT_EQ(r->targets, (std::vector<std::string>{"Sorries.double_zero", "Sorries.swap_add", "Sorries.double_eq"}));
  EXPECT_EQ(r->accepted.size(), 3u);
  EXPECT_EQ(model.tools_offered, tools_->Definitions().size());
  // The final file: the original with exactly the three proofs replaced.
  std::string expected = original_;
  for (const auto& [from, to] : std::vector<std::pair<std::string, std::string>>{
           {"⊢ double 0 = 0\n  sorry", "⊢ double 0 = 0\n  rfl"},
           {"⊢ a + b = b + a\n  sorry", "⊢ a + b = b + a\n  exact add_swap_helper a b"},
           {"⊢ double n = n + n\n  sorry", "⊢ double n = n + n\n  rfl"}})
    expected.replace(expected.find(from), from.size(), to);
  EXPECT_EQ(r->final_text, expected);
  EXPECT_NE(r->diff.find("-  sorry\n+  exact add_swap_helper a b\n"), std::string::npos) << r->diff;
  EXPECT_EQ(*ReadFile(root_ + "/" + kFile), original_);  // nothing written
  // The trace: one line per tool call and per judgement; the malformed call got a tool error.
  int calls = 0, judged = 0;
  bool malformed_answered = false;
  for (const std::string& line : r->trace) {
    Json j = Json::parse(line);
    if (j.contains("tool")) {
      ++calls;
      if (j["arguments"] == "{oops") {
        malformed_answered =
            j["is_error"] == true && j["result"].get<std::string>().find("not valid JSON") != std::string::npos;
      }
    } else {
      ++judged;
    }
  }
  EXPECT_TRUE(malformed_answered);
  EXPECT_EQ(calls, r->tool_calls);
  EXPECT_EQ(r->tool_errors, 1);
  EXPECT_GE(judged, 3);
  EXPECT_GT(r->checks, 3);
  EXPECT_EQ(r->turns, model.requests);
}

TEST_F(AgentLoopTest, TheGuardRefusesACheatTheServerAccepts) {
  testing::ScriptedAgentModel model(kFile, /*cheat=*/true);
  auto r = RunAgent({kFile, {"double_zero"}, ""}, model, *tools_, *checker_, AgentOptions());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->proved);
  EXPECT_TRUE(r->accepted.empty());
  EXPECT_EQ(r->stop_reason, "model stopped");
  EXPECT_NE(r->last_refusal.find("native_decide"), std::string::npos) << r->last_refusal;
  EXPECT_EQ(r->final_text, original_);
  EXPECT_EQ(r->diff, "");
}

TEST_F(AgentLoopTest, StopsAtBudgets) {
  testing::ScriptedAgentModel model(kFile);
  AgentOptions options;
  options.max_tool_calls = 3;
  auto r = RunAgent({kFile, {}, ""}, model, *tools_, *checker_, options);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop_reason, "tool-call budget");
  EXPECT_EQ(r->tool_calls, 3);
  EXPECT_FALSE(r->proved);

  testing::ScriptedAgentModel again(kFile);
  options = AgentOptions();
  options.max_turns = 2;
  r = RunAgent({kFile, {}, ""}, again, *tools_, *checker_, options);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stop_reason, "turn budget");
  EXPECT_EQ(r->turns, 2);

  std::atomic<bool> cancel{true};
  options = AgentOptions();
  options.cancel = &cancel;
  EXPECT_EQ(RunAgent({kFile, {}, ""}, again, *tools_, *checker_, options).status().code(), StatusCode::kCancelled);
}

TEST_F(AgentLoopTest, BadTasksAreInvalidArguments) {
  testing::ScriptedAgentModel model(kFile);
  EXPECT_EQ(RunAgent({"Sorries/Lemmas.lean", {}, ""}, model, *tools_, *checker_, AgentOptions()).status().code(),
            StatusCode::kInvalidArgument);  // no sorry there
  EXPECT_EQ(RunAgent({kFile, {"no_such"}, ""}, model, *tools_, *checker_, AgentOptions()).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(RunAgent({"../outside.lean", {}, ""}, model, *tools_, *checker_, AgentOptions()).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(AgentLoopTest, BatchRunsRepositoryTasksWithPassAtKDiffAndTrace) {
  const std::string tasks_file = root_ + "/../" + fs::path(root_).filename().string() + "_tasks.jsonl";
  const std::string project = fs::path(root_).filename().string();
  ASSERT_TRUE(
      WriteFileAtomic(tasks_file, "{\"name\": \"all\", \"project\": \"" + project + "\", \"file\": \"" + kFile +
                                      "\", \"theorems\": \"all sorries\", \"instructions\": \"Use the lemmas of "
                                      "Sorries/Lemmas.lean.\"}\n"
                                      "{\"name\": \"one\", \"project\": \"" +
                                      project + "\", \"file\": \"" + kFile + "\", \"theorems\": [\"swap_add\"]}\n")
          .ok());
  auto tasks = LoadTasks(tasks_file);
  ASSERT_TRUE(tasks.ok()) << tasks.status().ToString();
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_TRUE((*tasks)[0].repository);
  EXPECT_TRUE((*tasks)[0].theorems.empty());
  EXPECT_EQ((*tasks)[1].theorems, std::vector<std::string>{"swap_add"});

  testing::ScriptedAgentModel model(kFile);
  BatchOptions options;
  options.prover.k = 2;
  options.out_path = root_ + "/../" + project + "_results.jsonl";
  fs::remove(options.out_path);
  options.pool = pool_.get();
  options.tools.search_roots = {root_ + "/none"};
  auto summary = RunBatch(*tasks, model, *checker_, options, nullptr);
  ASSERT_TRUE(summary.ok()) << summary.status().ToString();
  EXPECT_EQ(summary->proved, 2);
  EXPECT_DOUBLE_EQ(summary->pass_at[0], 1.0);
  auto results = LoadResults(options.out_path);
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 2u);
  const TaskResult& all = (*results)[0].name == "all" ? (*results)[0] : (*results)[1];
  EXPECT_TRUE(all.proved);
  EXPECT_EQ(all.candidates, 2);
  EXPECT_EQ(all.solved, 2);
  EXPECT_EQ(all.stop_reason, "proved");
  EXPECT_NE(all.diff.find("+  exact add_swap_helper a b\n"), std::string::npos) << all.diff;
  auto trace = ReadFile(all.trace);
  ASSERT_TRUE(trace.ok()) << all.trace;
  EXPECT_NE(trace->find("{\"agent\":0,"), std::string::npos);
  EXPECT_NE(trace->find("{\"agent\":1,"), std::string::npos);
  EXPECT_NE(trace->find("\"tool\":\"lean_multi_attempt\""), std::string::npos);
  EXPECT_EQ(*ReadFile(root_ + "/" + kFile), original_);  // the project is untouched

  ASSERT_TRUE(WriteFileAtomic(tasks_file, "{\"name\": \"x\", \"project\": \"" + project + "\", \"file\": \"" + kFile +
                                              "\", \"theorems\": [\"nope\"]}\n")
                  .ok());
  EXPECT_NE(LoadTasks(tasks_file).status().message().find("field \"theorems\": no theorem or lemma named nope"),
            std::string::npos);
  ASSERT_TRUE(WriteFileAtomic(tasks_file, "{\"name\": \"x\", \"project\": \"" + project +
                                              "\", \"file\": \"Sorries/Lemmas.lean\", \"theorems\": \"all sorries\"}\n")
                  .ok());
  EXPECT_NE(LoadTasks(tasks_file).status().message().find("no theorem with a sorry"), std::string::npos);
}

TEST(TruncateResult, CutsAtACharacterWithANote) {
  EXPECT_EQ(TruncateResult("short", 10), "short");
  std::string cut = TruncateResult("ab⊢cd", 3);  // '⊢' is 3 bytes starting at byte 2
  EXPECT_EQ(cut.substr(0, 2), "ab");
  EXPECT_NE(cut.find("[... truncated: 5 more bytes"), std::string::npos) << cut;
}

}  // namespace
}  // namespace lr::agent
