#include "agent/batch.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "base/file.h"
#include "tests/agent/scripted.h"
#include "tests/agent/test_files.h"

extern char** environ;

namespace lr::agent {
namespace {

using testing::Replies;
using testing::ScriptedChecker;
using testing::ScriptedModel;

std::string TempDir(const std::string& name) { return testing::TempDir("lr_agent_", name); }

using testing::FileLines;

TEST(LoadTasks, ReadsEveryRealMiniF2FAndProofNetTask) {
  for (const char* file : {"minif2f_valid.jsonl", "proofnet_valid.jsonl"}) {
    Result<std::vector<BatchTask>> tasks = LoadTasks(std::string(LR_SHARED_DATA_DIR) + "/" + file);
    ASSERT_TRUE(tasks.ok()) << tasks.status().ToString();
    EXPECT_GT(tasks->size(), 180u) << file;
    for (const BatchTask& t : *tasks) {
      EXPECT_NE(t.task.statement.find(":="), std::string::npos) << t.task.name;
      EXPECT_NE(t.task.preamble.find("import Mathlib"), std::string::npos) << t.task.name;
      EXPECT_EQ(t.task.statement.substr(t.task.statement.size() - 2), ":=") << t.task.name;
    }
  }
}

TEST(LoadTasks, ReadsProjectTasks) {
  Result<std::vector<BatchTask>> tasks = LoadTasks(std::string(LR_SOURCE_DIR) + "/examples/project_tasks.jsonl");
  ASSERT_TRUE(tasks.ok()) << tasks.status().ToString();
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_EQ((*tasks)[0].task.full_name, "Demo.double_eq_two_mul");
  EXPECT_EQ((*tasks)[1].task.full_name, "Demo.double_add");
  EXPECT_NE((*tasks)[0].project_root.find("lake_project"), std::string::npos);
  EXPECT_NE((*tasks)[0].task.preamble.find("def double"), std::string::npos);
}

TEST(LoadTasks, BadLinesNameTheFileLineAndField) {
  const std::string dir = TempDir("bad_tasks");
  struct Case {
    std::string contents;
    std::string expected;
  };
  const std::string good = R"({"name": "a", "header": "", "formal_statement": "theorem a : True := by\n"})";
  const Case cases[] = {
      {good + "\n{not json\n", "tasks.jsonl:2: expected one JSON object"},
      {R"({"header": "", "formal_statement": "theorem a : True := by"})", "tasks.jsonl:1: missing field \"name\""},
      {R"({"name": "a", "formal_statement": "theorem a : True := by"})", "missing field \"header\""},
      {R"({"name": "a", "header": 3, "formal_statement": "theorem a : True := by"})",
       "field \"header\" must be a string"},
      {R"({"name": "a", "header": "", "formal_statement": "abbrev a := 1"})", "field formal_statement"},
      {R"({"name": "a", "project": "nowhere", "file": "X.lean", "theorem": "t"})", "field \"file\""},
      {R"({"name": "a"})", "expected the fields"},
      {"\n\n", "no tasks"},
  };
  for (const Case& c : cases) {
    const std::string path = dir + "/tasks.jsonl";
    ASSERT_TRUE(WriteFileAtomic(path, c.contents).ok());
    Result<std::vector<BatchTask>> tasks = LoadTasks(path);
    ASSERT_FALSE(tasks.ok()) << c.contents;
    EXPECT_EQ(tasks.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(tasks.status().message().find(c.expected), std::string::npos) << tasks.status().message();
  }
  EXPECT_EQ(LoadTasks(dir + "/missing.jsonl").status().code(), StatusCode::kNotFound);
}

TEST(LoadTasks, RepeatedNamesGetTheirLine) {
  const std::string dir = TempDir("dup_tasks");
  const std::string good = R"({"name": "a", "header": "", "formal_statement": "theorem a : True := by\n"})";
  ASSERT_TRUE(WriteFileAtomic(dir + "/tasks.jsonl", good + "\n\n" + good + "\n").ok());
  Result<std::vector<BatchTask>> tasks = LoadTasks(dir + "/tasks.jsonl");
  ASSERT_TRUE(tasks.ok());
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_EQ((*tasks)[0].task.name, "a");
  EXPECT_EQ((*tasks)[1].task.name, "a@3");
  EXPECT_EQ((*tasks)[1].task.full_name, "a");  // what Lean knows it as
}

double Choose(int n, int k) {
  if (k < 0 || k > n) return 0;
  double r = 1;
  for (int i = 1; i <= k; ++i) r = r * (n - k + i) / i;
  return r;
}

TEST(PassAtK, MatchesTheBinomialDefinition) {
  for (int n = 1; n <= 12; ++n)
    for (int c = 0; c <= n; ++c)
      for (int k = 1; k <= n; ++k)
        EXPECT_NEAR(PassAtK(n, c, k), 1.0 - Choose(n - c, k) / Choose(n, k), 1e-12) << n << " " << c << " " << k;
  EXPECT_DOUBLE_EQ(PassAtK(4, 1, 1), 0.25);
  EXPECT_DOUBLE_EQ(PassAtK(0, 0, 1), 0.0);
  // Large n stays finite (no factorials).
  EXPECT_NEAR(PassAtK(2000, 1, 1), 1.0 / 2000, 1e-15);
  EXPECT_TRUE(std::isfinite(PassAtK(5000, 2500, 100)));
}

TEST(Results, RoundTripAndCorruptLines) {
  TaskResult r;
  r.name = "t\"1";
  r.proved = true;
  r.proof = " by\n  simp";
  r.candidates = 4;
  r.solved = 2;
  r.checks = 5;
  r.tokens = 123;
  r.seconds = 1.5;
  r.first_proof_check = 2;
  const std::string line = ResultToJson(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  Result<TaskResult> back = ResultFromJson(line, "r.jsonl:1");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->name, r.name);
  EXPECT_EQ(back->proof, r.proof);
  EXPECT_EQ(back->solved, 2);
  EXPECT_EQ(back->first_proof_check, 2);
  Result<TaskResult> bad = ResultFromJson("{\"name\": 3, \"proved\": true}", "r.jsonl:9");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(bad.status().message().find("r.jsonl:9"), std::string::npos);
}

constexpr char kCoreTasks[] = LR_SOURCE_DIR "/examples/core_tasks.jsonl";

std::string Good(const BatchTask& t) { return "```lean\n" + t.task.statement + " by\n  simp\n```"; }
std::string Bad(const BatchTask& t) { return "```lean\n" + t.task.statement + " by\n  bad_tactic\n```"; }

TEST(RunBatch, WritesOneLinePerTaskThenResumesWithoutDuplicates) {
  Result<std::vector<BatchTask>> tasks = LoadTasks(kCoreTasks);
  ASSERT_TRUE(tasks.ok()) << tasks.status().ToString();
  ASSERT_EQ(tasks->size(), 4u);
  const std::string dir = TempDir("run");
  Replies replies;
  const std::vector<BatchTask>& t = *tasks;
  replies[t[0].task.name] = {Good(t[0]), Good(t[0])};              // 2 of 2
  replies[t[1].task.name] = {Bad(t[1]), Good(t[1])};               // 1 of 2
  replies[t[2].task.name] = {Bad(t[2]), "```lean\n  sorry\n```"};  // 0 of 2
  // t[3] has no replies: the model's empty blocks are refused.
  ScriptedModel model(replies);
  ScriptedChecker lean;
  BatchOptions options;
  options.prover.k = 2;
  options.prover.turns = 0;
  options.out_path = dir + "/results.jsonl";
  options.report_path = dir + "/report.md";
  options.jobs = 2;
  Result<BatchSummary> s = RunBatch(*tasks, model, lean, options, nullptr);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->finished, 4);
  EXPECT_EQ(s->proved, 2);
  ASSERT_EQ(s->pass_at.size(), 2u);
  EXPECT_NEAR(s->pass_at[0], (1.0 + 0.5 + 0 + 0) / 4, 1e-12);
  EXPECT_NEAR(s->pass_at[1], (1.0 + 1.0 + 0 + 0) / 4, 1e-12);
  std::vector<std::string> lines = FileLines(options.out_path);
  ASSERT_EQ(lines.size(), 4u);
  std::set<std::string> names;
  for (const std::string& l : lines) {
    Result<TaskResult> r = ResultFromJson(l, "results");
    ASSERT_TRUE(r.ok());
    names.insert(r->name);
  }
  EXPECT_EQ(names.size(), 4u);
  Result<std::string> report = ReadFile(options.report_path);
  ASSERT_TRUE(report.ok());
  EXPECT_NE(report->find("| 1 | 0.375 |"), std::string::npos) << *report;
  EXPECT_NE(report->find("Solved vs budget"), std::string::npos);

  // Running again over the same file needs --resume, which then has nothing to do.
  Result<BatchSummary> again = RunBatch(*tasks, model, lean, options, nullptr);
  EXPECT_EQ(again.status().code(), StatusCode::kInvalidArgument);
  options.resume = true;
  Result<BatchSummary> resumed = RunBatch(*tasks, model, lean, options, nullptr);
  ASSERT_TRUE(resumed.ok());
  EXPECT_EQ(resumed->skipped, 4);
  EXPECT_EQ(FileLines(options.out_path).size(), 4u);
}

TEST(RunBatch, AnInfrastructureFailureStopsTheRunAndKeepsNothingFalse) {
  Result<std::vector<BatchTask>> tasks = LoadTasks(kCoreTasks);
  ASSERT_TRUE(tasks.ok());
  const std::string dir = TempDir("infra");
  Replies replies;
  for (const BatchTask& t : *tasks) replies[t.task.name] = {Good(t)};
  ScriptedModel model(replies);
  ScriptedChecker lean(/*unavailable_calls=*/1000);
  BatchOptions options;
  options.prover.k = 1;
  options.out_path = dir + "/results.jsonl";
  Result<BatchSummary> s = RunBatch(*tasks, model, lean, options, nullptr);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(FileLines(options.out_path).empty());  // no task is recorded as a failed proof
}

// Runs the batch driver as a child process; returns its pid.
pid_t Spawn(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  EXPECT_EQ(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ), 0);
  return pid;
}

int Wait(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(RunBatch, InterruptThenResumeLosesAndDuplicatesNothing) {
  const std::string dir = TempDir("sigint");
  const int kTasks = 10;
  std::string tasks_text;
  nlohmann::json replies = nlohmann::json::object();
  for (int i = 0; i < kTasks; ++i) {
    const std::string name = "task_" + std::to_string(i) + "_x";
    const std::string statement = "theorem " + name + " (n : Nat) : n + 0 = n := by\n";
    tasks_text += nlohmann::json{{"name", name}, {"header", ""}, {"formal_statement", statement}}.dump() + "\n";
    replies[name] = {"```lean\ntheorem " + name + " (n : Nat) : n + 0 = n := by\n  simp\n```"};
  }
  ASSERT_TRUE(WriteFileAtomic(dir + "/tasks.jsonl", tasks_text).ok());
  ASSERT_TRUE(WriteFileAtomic(dir + "/replies.json", replies.dump()).ok());
  const std::string driver = std::string(LR_BINARY_DIR) + "/tests/agent/agent_batch_driver";
  const std::string out = dir + "/results.jsonl";

  pid_t pid = Spawn({driver, dir + "/tasks.jsonl", out, dir + "/replies.json", "--delay-ms", "150"});
  ASSERT_GT(pid, 0);
  for (int waited = 0; FileLines(out).size() < 2 && waited < 20000; waited += 10)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(::kill(pid, SIGINT), 0);
  EXPECT_EQ(Wait(pid), 130);
  const size_t after_interrupt = FileLines(out).size();
  EXPECT_GE(after_interrupt, 2u);
  EXPECT_LT(after_interrupt, static_cast<size_t>(kTasks));

  pid = Spawn({driver, dir + "/tasks.jsonl", out, dir + "/replies.json", "--resume"});
  EXPECT_EQ(Wait(pid), 0);
  std::vector<std::string> lines = FileLines(out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kTasks));
  std::set<std::string> names;
  for (const std::string& l : lines) {
    Result<TaskResult> r = ResultFromJson(l, out);
    ASSERT_TRUE(r.ok()) << l;
    EXPECT_TRUE(r->proved);
    names.insert(r->name);
  }
  EXPECT_EQ(names.size(), static_cast<size_t>(kTasks));
}

}  // namespace
}  // namespace lr::agent
