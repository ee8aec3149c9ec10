// The worker runs the real prover loop (agent::Prove) with the agent tests' scripted model and Lean, off the calling
// thread, and reports through events; these tests apply the events to a Session as the UI thread does.
#include "tui/worker.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "base/file.h"
#include "tests/agent/lake_fixture.h"
#include "tests/agent/scripted.h"
#include "tests/agent/scripted_agent_model.h"

namespace lr::tui {
namespace {

using agent::testing::Replies;
using agent::testing::ScriptedChecker;
using agent::testing::ScriptedModel;

constexpr char kFile[] = "import Mathlib\n\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  sorry\n";
constexpr char kGood[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  subst h\n  rfl\n```";
constexpr char kBad[] = "```lean\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  bad_tactic\n```";

Worker::Options Options(Replies replies, int delay_ms, bool with_lean) {
  Worker::Options o;
  o.open_model = [replies, delay_ms](const std::string&, const std::string& kv,
                                     const std::atomic<bool>*) -> Result<ModelHandle> {
    ModelHandle h;
    h.model = std::make_unique<ScriptedModel>(replies, delay_ms);
    h.kv_formats = kv;
    return h;
  };
  o.model = "scripted";
  o.kv = "K q8_0 / V iso3";
  if (with_lean)
    o.checker = std::make_unique<ScriptedChecker>();
  else
    o.lean_state = "not found";
  return o;
}

// Applies events and carries requests to the worker until `done` holds or 10 s pass; returns every event seen.
template <typename Done>
std::vector<Event> Pump(Session& s, Worker& w, EventQueue& q, Done done) {
  std::vector<Event> seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    for (Request& r : s.TakeRequests()) w.Handle(r);
    for (Event& e : q.Drain()) {
      seen.push_back(e);
      s.OnEvent(std::move(e));
    }
    if (done()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return seen;
}

TEST(WorkerTest, ProvesStreamsAndReportsEachCandidate) {
  EventQueue q;
  Session s({.k = 2, .turns = 1});
  Worker w(Options(Replies{{"two_eq", {kBad, kBad, kGood}}}, 0, true), &q);
  s.Load("T.lean", kFile);
  Pump(s, w, q, [&] { return s.have_report() && s.status().model == "scripted"; });
  ASSERT_TRUE(s.have_report());
  ASSERT_FALSE(s.MessagesAtCursor().empty());  // the buffer's own check: the sorry warning
  EXPECT_EQ(s.MessagesAtCursor()[0].text, "declaration uses 'sorry'");
  EXPECT_EQ(s.status().kv_formats, "K q8_0 / V iso3");
  EXPECT_EQ(s.status().lean, "ready");

  s.OnKey(Key::Special(Key::kEnter));
  std::vector<Event> seen = Pump(s, w, q, [&] { return !s.run().running; });
  ASSERT_FALSE(s.run().running);
  EXPECT_EQ(s.run().outcome.rfind("proved", 0), 0u) << s.run().outcome;
  // Both candidates failed their first turn (bad_tactic); candidate 0's repair turn was accepted.
  const AttemptView& a0 = s.run().attempts[0];
  EXPECT_EQ(a0.state, AttemptState::kAccepted);
  EXPECT_EQ(a0.turn, 1);
  EXPECT_EQ(a0.proof, " by\n  subst h\n  rfl");
  EXPECT_EQ(a0.stream, kGood);  // the repair turn's streamed text
  EXPECT_GT(a0.tokens, 0);
  EXPECT_EQ(s.selected_attempt(), 0);
  int generating = 0, checking = 0, pieces = 0;
  for (const Event& e : seen) {
    if (const auto* a = std::get_if<AttemptEvent>(&e)) {
      generating += a->state == AttemptState::kGenerating;
      checking += a->state == AttemptState::kChecking;
    }
    pieces += std::holds_alternative<PieceEvent>(e);
  }
  EXPECT_EQ(generating, 3);  // two candidates from the first prompt, then candidate 0's repair
  EXPECT_EQ(checking, 3);
  EXPECT_EQ(pieces, 3);  // the scripted model streams each reply as one piece

  s.OnKey(Key::Char('a'));
  EXPECT_TRUE(s.dirty());
  EXPECT_EQ(s.text(), "import Mathlib\n\ntheorem two_eq (n : ℕ) (h : n = 2) : n + 0 = 2 := by\n  subst h\n  rfl\n");
}

// The agent style: the scripted Leanstral-like model calls the tools (real ToolBox, real pool, scripted Lean server)
// on a copy of tests/fixtures/lake_sorries; the calls and results stream into the candidate's pane and the guarded
// proof can be accepted into the buffer.
TEST(WorkerTest, AgentStyleStreamsToolCallsIntoThePaneAndAcceptsTheGuardedProof) {
  namespace fs = std::filesystem;
  const fs::path dir = agent::testing::CopyLakeFixture("tui_agent");
  const std::string file = (dir / "Sorries/Basic.lean").string();
  lsp::PoolOptions pool_options;
  pool_options.lean_command = {LR_SCRIPTED_LEAN_SERVER};
  lsp::ServerPool pool(pool_options);  // outlives the worker
  auto copy = agent::WorkingCopy::Open(dir.string());
  ASSERT_TRUE(copy.ok());
  agent::ToolsOptions tools_options;
  tools_options.search_roots = {(dir / "none").string()};
  Worker::Options o;
  o.open_model = [file](const std::string&, const std::string&, const std::atomic<bool>*) -> Result<ModelHandle> {
    ModelHandle h;
    h.model = std::make_unique<agent::testing::ScriptedAgentModel>(file);
    return h;
  };
  o.model = "scripted";
  o.checker = std::make_unique<agent::PoolChecker>(pool);
  o.prover.style = agent::PromptStyle::kAgent;
  o.tools = std::make_shared<agent::ToolBox>(pool, **copy, tools_options);
  EventQueue q;
  Session s({.k = 1, .turns = 0});
  Worker w(std::move(o), &q);
  std::string text = *ReadFile(file);
  s.Load(file, text);
  Pump(s, w, q, [&] { return s.status().model == "scripted-agent"; });
  s.OnKey(Key::Special(Key::kEnter));  // the cursor is on double_zero, the first sorry
  Pump(s, w, q, [&] { return !s.run().running; });
  ASSERT_FALSE(s.run().running);
  EXPECT_EQ(s.run().outcome.rfind("proved (1 agents", 0), 0u) << s.run().outcome;
  const AttemptView& a0 = s.run().attempts[0];
  EXPECT_EQ(a0.state, AttemptState::kAccepted);
  EXPECT_EQ(a0.proof, " by\n  -- goal: ⊢ double 0 = 0\n  rfl");
  EXPECT_NE(a0.stream.find("> lean_goal {"), std::string::npos) << a0.stream;
  EXPECT_NE(a0.stream.find("< {\"goals_after\""), std::string::npos) << a0.stream;
  EXPECT_NE(a0.stream.find("> lean_goal {oops\n< Error: lean_goal: the arguments are not valid JSON"),
            std::string::npos);
  EXPECT_EQ(*ReadFile(file), text);  // the agent's edits stayed in its working copy
  s.OnKey(Key::Char('a'));
  EXPECT_NE(s.text().find("-- goal: ⊢ double 0 = 0\n  rfl\n"), std::string::npos);
}

TEST(WorkerTest, CancelStopsTheRunningProof) {
  EventQueue q;
  Session s({.k = 1, .turns = 0});
  Worker w(Options(Replies{{"two_eq", {kGood}}}, 300, true), &q);
  s.Load("T.lean", kFile);
  Pump(s, w, q, [&] { return s.status().model == "scripted"; });
  s.OnKey(Key::Char('p'));
  for (Request& r : s.TakeRequests()) w.Handle(r);
  s.OnKey(Key::Special(Key::kEscape));
  Pump(s, w, q, [&] { return !s.run().running; });
  EXPECT_EQ(s.run().outcome, "cancelled");
}

TEST(WorkerTest, WithoutLeanTheBufferIsNotCheckedAndProofsAreRefused) {
  EventQueue q;
  Session s({.k = 1, .turns = 0});
  Worker w(Options(Replies{}, 0, false), &q);
  s.Load("T.lean", kFile);
  Pump(s, w, q, [&] { return !s.checking() && s.status().model == "scripted"; });
  EXPECT_FALSE(s.have_report());
  EXPECT_EQ(s.status().lean, "not found");
  EXPECT_EQ(s.check_error(), "Lean not found");
  s.OnKey(Key::Char('p'));
  Pump(s, w, q, [&] { return !s.run().running; });
  EXPECT_EQ(s.run().outcome, "cannot prove: Lean not found");
}

TEST(WorkerTest, AModelThatFailsToLoadIsReported) {
  EventQueue q;
  Session s({});
  Worker::Options o;
  o.open_model = [](const std::string& m, const std::string&, const std::atomic<bool>*) -> Result<ModelHandle> {
    return NotFound(m + ": no such file");
  };
  o.model = "missing.gguf";
  Worker w(std::move(o), &q);
  Pump(s, w, q, [&] { return s.status().model.rfind("no model", 0) == 0; });
  EXPECT_EQ(s.status().model, "no model (missing.gguf: no such file)");
  EXPECT_EQ(s.message(), "model: not found: missing.gguf: no such file");
}

}  // namespace
}  // namespace lr::tui
