#include "tui/session.h"

#include <gtest/gtest.h>

#include <string>

namespace lr::tui {
namespace {

// Two theorems, the second with a sorry, plus a doc comment mentioning sorry (which must not count).
constexpr const char* kFile =
    "import Mathlib\n"                                // 0
    "\n"                                              // 1
    "theorem done (n : Nat) : n + 0 = n := by\n"      // 2
    "  simp\n"                                        // 3
    "\n"                                              // 4
    "/-- no sorry in here -/\n"                       // 5
    "theorem todo (a b : ℕ) : a + b = b + a := by\n"  // 6
    "  sorry\n";                                      // 7

template <typename T>
std::vector<T> Take(Session& s) {
  std::vector<T> out;
  for (Request& r : s.TakeRequests())
    if (T* t = std::get_if<T>(&r)) out.push_back(std::move(*t));
  return out;
}

void Type(Session& s, std::string_view text) {
  for (char c : text) s.OnKey(Key::Char(static_cast<unsigned char>(c)));
}

Session Loaded() {
  Session s({.k = 2, .turns = 1});
  s.Load("Demo.lean", kFile);
  return s;
}

TEST(SplitLinesTest, TrailingNewlineAndEmptyText) {
  EXPECT_EQ(SplitLines("a\nb\n"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(SplitLines("a\n\nb"), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_EQ(SplitLines(""), (std::vector<std::string>{""}));
}

TEST(DiffLinesTest, KeepsCommonLinesAndMarksChanges) {
  std::vector<DiffLine> d = DiffLines("theorem t := by\n  sorry\n", "theorem t := by\n  simp\n  ring\n");
  ASSERT_EQ(d.size(), 4u);
  EXPECT_EQ(d[0].op, ' ');
  EXPECT_EQ(d[0].text, "theorem t := by");
  EXPECT_EQ(d[1].op, '-');  // the old line first, then the new ones
  EXPECT_EQ(d[1].text, "  sorry");
  EXPECT_EQ(d[2].op, '+');
  EXPECT_EQ(d[2].text, "  simp");
  EXPECT_EQ(d[3].op, '+');
  EXPECT_EQ(d[3].text, "  ring");
  for (const DiffLine& l : DiffLines("x\ny", "x\ny")) EXPECT_EQ(l.op, ' ');
}

TEST(SessionTest, LoadFindsTheoremsJumpsToTheSorryAndAsksForACheck) {
  Session s = Loaded();
  ASSERT_EQ(s.theorems().size(), 2u);
  EXPECT_EQ(s.cursor(), 6);
  EXPECT_EQ(s.theorems()[s.current_theorem()].name, "todo");
  EXPECT_FALSE(s.dirty());
  std::vector<CheckRequest> checks = Take<CheckRequest>(s);
  ASSERT_EQ(checks.size(), 1u);
  EXPECT_EQ(checks[0].text, kFile);
  EXPECT_EQ(checks[0].path, "Demo.lean");
  EXPECT_EQ(checks[0].version, s.version());
  EXPECT_TRUE(s.checking());
}

TEST(SessionTest, CursorMovesAndSelectsTheTheoremAboveIt) {
  Session s = Loaded();
  s.OnKey(Key::Special(Key::kHome));
  EXPECT_EQ(s.cursor(), 0);
  EXPECT_EQ(s.current_theorem(), 0);  // above every theorem: the first one
  s.OnKey(Key::Special(Key::kDown));
  s.OnKey(Key::Special(Key::kDown));
  s.OnKey(Key::Special(Key::kDown));
  EXPECT_EQ(s.cursor(), 3);
  EXPECT_EQ(s.theorems()[s.current_theorem()].name, "done");
  s.OnKey(Key::Special(Key::kPageDown));
  EXPECT_EQ(s.cursor(), 7);  // clamped to the last line
  s.OnKey(Key::Special(Key::kUp));
  EXPECT_EQ(s.cursor(), 6);
}

TEST(SessionTest, NextAndPreviousSorryWrapAround) {
  Session s({});
  s.Load("", "theorem a : True := by\n  sorry\ntheorem b : True := trivial\ntheorem c : True := by\n  sorry\n");
  EXPECT_EQ(s.cursor(), 0);
  s.OnKey(Key::Char('n'));
  EXPECT_EQ(s.cursor(), 3);
  s.OnKey(Key::Char('n'));
  EXPECT_EQ(s.cursor(), 0);
  s.OnKey(Key::Char('N'));
  EXPECT_EQ(s.cursor(), 3);
}

TEST(SessionTest, ProveAsksForTheTheoremUnderTheCursor) {
  Session s = Loaded();
  s.TakeRequests();
  s.OnKey(Key::Special(Key::kEnter));
  std::vector<ProveRequest> proves = Take<ProveRequest>(s);
  ASSERT_EQ(proves.size(), 1u);
  EXPECT_EQ(proves[0].task.name, "todo");
  EXPECT_EQ(proves[0].task.statement, "theorem todo (a b : ℕ) : a + b = b + a :=");
  EXPECT_EQ(proves[0].task.proof, " by\n  sorry");
  EXPECT_EQ(proves[0].task.preamble,
            "import Mathlib\n\ntheorem done (n : Nat) : n + 0 = n := by\n  simp\n\n/-- no sorry in here -/\n");
  EXPECT_EQ(proves[0].k, 2);
  EXPECT_EQ(proves[0].turns, 1);
  EXPECT_TRUE(s.run().running);
  EXPECT_EQ(s.run().attempts.size(), 2u);
  // A second prove while one runs is refused.
  s.OnKey(Key::Char('p'));
  EXPECT_TRUE(Take<ProveRequest>(s).empty());
  EXPECT_NE(s.message().find("running"), std::string::npos);
}

TEST(SessionTest, EventsDriveTheAttemptsAndOldRunsAreIgnored) {
  Session s = Loaded();
  s.OnKey(Key::Char('p'));
  const int id = s.run().id;
  s.OnEvent(AttemptEvent{id, 1, 0, AttemptState::kGenerating, "", ""});
  s.OnEvent(PieceEvent{id, 1, "```lean\n"});
  s.OnEvent(PieceEvent{id, 1, "theorem"});
  s.OnEvent(PieceEvent{id - 1, 1, "from an old run"});
  EXPECT_EQ(s.run().attempts[1].state, AttemptState::kGenerating);
  EXPECT_EQ(s.run().attempts[1].stream, "```lean\ntheorem");
  EXPECT_EQ(s.run().attempts[0].state, AttemptState::kWaiting);

  s.OnEvent(AttemptEvent{id, 1, 0, AttemptState::kChecking, "", ""});
  s.OnEvent(AttemptEvent{id, 1, 0, AttemptState::kFailed, " by\n  simp", "line 2: simp failed", 12});
  EXPECT_EQ(s.run().attempts[1].reason, "line 2: simp failed");
  EXPECT_EQ(s.run().attempts[1].stream, "```lean\ntheorem");  // kept until the next turn starts

  s.OnEvent(AttemptEvent{id, 1, 1, AttemptState::kGenerating, "", ""});
  EXPECT_EQ(s.run().attempts[1].stream, "");
  EXPECT_EQ(s.run().attempts[1].turn, 1);
  s.OnEvent(AttemptEvent{id, 1, 1, AttemptState::kAccepted, " by\n  omega", "", 5});
  EXPECT_EQ(s.run().attempts[1].tokens, 17);
  EXPECT_EQ(s.selected_attempt(), 1);  // the first accepted attempt gets selected

  s.OnEvent(RunFinishedEvent{id, "proved"});
  EXPECT_FALSE(s.run().running);
  EXPECT_EQ(s.run().outcome, "proved");
  EXPECT_EQ(s.run().attempts[0].state, AttemptState::kNotChecked);  // never judged: not "failed"
  EXPECT_EQ(AttemptStateName(s.run().attempts[0].state), "not checked");
}

TEST(SessionTest, TokensCountWhileStreamingAndTheModelsCountWhenJudged) {
  Session s = Loaded();
  s.OnKey(Key::Char('p'));
  const int id = s.run().id;
  s.OnEvent(AttemptEvent{id, 0, 0, AttemptState::kGenerating, "", ""});
  EXPECT_EQ(s.run().attempts[0].shown_tokens(), 0);
  for (const char* piece : {"```", "lean", "\n", "theorem"}) s.OnEvent(PieceEvent{id, 0, piece});
  EXPECT_EQ(s.run().attempts[0].shown_tokens(), 4);  // one piece, one token, as they stream
  s.OnEvent(AttemptEvent{id, 0, 0, AttemptState::kFailed, " by\n  simp", "unsolved goals", 5});
  EXPECT_EQ(s.run().attempts[0].shown_tokens(), 5);  // the model's own count once judged
  s.OnEvent(AttemptEvent{id, 0, 1, AttemptState::kGenerating, "", ""});
  s.OnEvent(PieceEvent{id, 0, "```"});
  s.OnEvent(PieceEvent{id, 0, "lean"});
  EXPECT_EQ(s.run().attempts[0].shown_tokens(), 7);  // earlier turns plus this one's so far
}

TEST(SessionTest, AttemptsNeverJudgedShowWhyNotFailed) {
  Session s = Loaded();
  s.OnKey(Key::Char('p'));
  int id = s.run().id;
  s.OnEvent(AttemptEvent{id, 0, 0, AttemptState::kGenerating, "", ""});
  s.OnEvent(PieceEvent{id, 0, "```lean"});
  s.OnEvent(AttemptEvent{id, 1, 0, AttemptState::kChecking, "", ""});
  s.OnEvent(RunFinishedEvent{id, "cancelled"});
  for (const AttemptView& a : s.run().attempts) {
    EXPECT_EQ(a.state, AttemptState::kCancelled);
    EXPECT_NE(a.reason.find("cancelled"), std::string::npos) << a.reason;
  }
  EXPECT_EQ(s.run().attempts[0].shown_tokens(), 1);  // its text streamed: not "0 tok"
  // A Lean failure ends the run: the candidate being checked was not judged either.
  s.TakeRequests();
  s.OnKey(Key::Char('p'));
  id = s.run().id;
  s.OnEvent(AttemptEvent{id, 0, 0, AttemptState::kChecking, "", ""});
  s.OnEvent(RunFinishedEvent{id, "error: Lean could not check ..."});
  EXPECT_EQ(s.run().attempts[0].state, AttemptState::kNotChecked);
  EXPECT_NE(s.run().attempts[0].reason.find("Lean could not check"), std::string::npos);
}

TEST(SessionTest, AcceptWritesTheProofIntoTheBufferOnlyWhenLeanAcceptedIt) {
  Session s = Loaded();
  s.OnKey(Key::Char('p'));
  const int id = s.run().id;
  s.OnEvent(AttemptEvent{id, 0, 0, AttemptState::kFailed, " by\n  simp", "unsolved goals", 3});
  s.OnEvent(AttemptEvent{id, 1, 0, AttemptState::kAccepted, " by\n  omega", "", 4});
  s.OnEvent(RunFinishedEvent{id, "proved"});
  s.TakeRequests();

  s.OnKey(Key::Char('1'));
  s.OnKey(Key::Char('a'));
  EXPECT_FALSE(s.dirty());
  EXPECT_NE(s.message().find("only a proof Lean accepted"), std::string::npos);

  s.OnKey(Key::Special(Key::kTab));
  EXPECT_EQ(s.selected_attempt(), 1);
  s.OnKey(Key::Char('d'));
  EXPECT_TRUE(s.diff_visible());
  std::vector<DiffLine> diff = s.SelectedDiff();
  ASSERT_EQ(diff.size(), 3u);
  EXPECT_EQ(diff[0].op, ' ');
  EXPECT_EQ(diff[1].op, '-');
  EXPECT_EQ(diff[1].text, "  sorry");
  EXPECT_EQ(diff[2].op, '+');
  EXPECT_EQ(diff[2].text, "  omega");

  s.OnKey(Key::Char('a'));
  EXPECT_TRUE(s.dirty());
  EXPECT_EQ(s.lines()[7], "  omega");
  EXPECT_EQ(s.text().substr(s.text().find("theorem todo")), "theorem todo (a b : ℕ) : a + b = b + a := by\n  omega\n");
  EXPECT_FALSE(s.theorems()[1].has_sorry);
  EXPECT_EQ(Take<CheckRequest>(s).size(), 1u);

  // Quitting with unsaved changes asks again; saving clears the flag once the same version is written.
  s.OnKey(Key::Char('q'));
  EXPECT_TRUE(Take<QuitRequest>(s).empty());
  s.OnKey(Key::Char('s'));
  std::vector<SaveRequest> saves = Take<SaveRequest>(s);
  ASSERT_EQ(saves.size(), 1u);
  EXPECT_EQ(saves[0].path, "Demo.lean");
  EXPECT_EQ(saves[0].text, s.text());
  s.OnEvent(SavedEvent{"Demo.lean", saves[0].version, true, ""});
  EXPECT_FALSE(s.dirty());
  s.OnKey(Key::Char('q'));
  EXPECT_EQ(Take<QuitRequest>(s).size(), 1u);
}

TEST(SessionTest, EscAndCtrlCCancelARunningProofFirst) {
  Session s = Loaded();
  s.OnKey(Key::Char('p'));
  s.TakeRequests();
  s.OnKey(Key::Special(Key::kEscape));
  EXPECT_EQ(Take<CancelRequest>(s).size(), 1u);
  s.OnKey(Key::Special(Key::kCtrlC));
  std::vector<Request> r = s.TakeRequests();
  ASSERT_EQ(r.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<CancelRequest>(r[0]));
  s.OnEvent(RunFinishedEvent{s.run().id, "cancelled"});
  s.OnKey(Key::Special(Key::kCtrlC));  // not running, clean buffer: quits
  EXPECT_EQ(Take<QuitRequest>(s).size(), 1u);
}

TEST(SessionTest, CtrlCTwiceQuitsWithUnsavedChanges) {
  Session s = Loaded();
  s.RunCommand("/theorem extra : 1 = 1 := rfl");
  ASSERT_TRUE(s.dirty());
  s.TakeRequests();
  s.OnKey(Key::Special(Key::kCtrlC));
  EXPECT_TRUE(Take<QuitRequest>(s).empty());
  s.OnKey(Key::Special(Key::kCtrlC));
  EXPECT_EQ(Take<QuitRequest>(s).size(), 1u);
}

TEST(SessionTest, CommandLineEditsRunsAndRemembersHistory) {
  Session s = Loaded();
  Type(s, "/k 8");
  EXPECT_TRUE(s.command_active());
  EXPECT_EQ(s.command_line(), "/k 8");
  s.OnKey(Key::Special(Key::kEnter));
  EXPECT_FALSE(s.command_active());
  EXPECT_EQ(s.k(), 8);

  Type(s, "/turns x");
  s.OnKey(Key::Special(Key::kEnter));
  EXPECT_EQ(s.turns(), 1);
  EXPECT_NE(s.message().find("expected a number"), std::string::npos);

  Type(s, "/k 0");
  s.OnKey(Key::Special(Key::kEnter));
  EXPECT_EQ(s.k(), 8);

  // Up walks back through the history, Down forward to an empty line.
  s.OnKey(Key::Char('/'));
  s.OnKey(Key::Special(Key::kUp));
  EXPECT_EQ(s.command_line(), "/k 0");
  s.OnKey(Key::Special(Key::kUp));
  EXPECT_EQ(s.command_line(), "/turns x");
  s.OnKey(Key::Special(Key::kDown));
  s.OnKey(Key::Special(Key::kDown));
  EXPECT_EQ(s.command_line(), "/");
  s.OnKey(Key::Special(Key::kEscape));
  EXPECT_FALSE(s.command_active());
  EXPECT_EQ(s.history().size(), 3u);

  // Unicode typed in the command line is kept as UTF-8, and Backspace removes a whole character.
  s.OnKey(Key::Char('/'));
  s.OnKey(Key::Char(U'ℕ'));
  EXPECT_EQ(s.command_line(), "/ℕ");
  s.OnKey(Key::Special(Key::kBackspace));
  EXPECT_EQ(s.command_line(), "/");

  s.RunCommand("/nonsense");
  EXPECT_NE(s.message().find("unknown command /nonsense"), std::string::npos);
}

TEST(SessionTest, ModelKvOpenAndHelpCommands) {
  Session s = Loaded();
  s.TakeRequests();
  s.RunCommand("/model models/other.gguf");
  s.RunCommand("/kv q8_0,iso3");
  std::vector<LoadModelRequest> loads = Take<LoadModelRequest>(s);
  ASSERT_EQ(loads.size(), 2u);
  EXPECT_EQ(loads[0].model, "models/other.gguf");
  EXPECT_EQ(loads[1].kv, "q8_0,iso3");
  s.RunCommand("/open Other.lean");
  std::vector<OpenRequest> opens = Take<OpenRequest>(s);
  ASSERT_EQ(opens.size(), 1u);
  EXPECT_EQ(opens[0].path, "Other.lean");
  s.OnEvent(OpenedEvent{"Other.lean", true, "theorem x : True := by\n  sorry\n", ""});
  EXPECT_EQ(s.path(), "Other.lean");
  EXPECT_EQ(s.theorems().size(), 1u);
  s.OnEvent(OpenedEvent{"Missing.lean", false, "", "NOT_FOUND: Missing.lean"});
  EXPECT_EQ(s.path(), "Other.lean");
  EXPECT_NE(s.message().find("Missing.lean"), std::string::npos);
  s.RunCommand("/help");
  EXPECT_TRUE(s.help_visible());
  s.OnKey(Key::Special(Key::kEscape));
  EXPECT_FALSE(s.help_visible());
}

TEST(SessionTest, TheoremCommandAddsADeclarationAndRejectsGarbage) {
  Session s({});
  s.RunCommand("/theorem two : 1 + 1 = 2");
  ASSERT_EQ(s.theorems().size(), 1u);
  EXPECT_EQ(s.theorems()[0].name, "two");
  EXPECT_TRUE(s.theorems()[0].has_sorry);
  EXPECT_EQ(s.cursor(), 0);
  s.RunCommand("/theorem three : 1 + 2 = 3 := by decide");
  ASSERT_EQ(s.theorems().size(), 2u);
  EXPECT_EQ(s.theorems()[s.current_theorem()].name, "three");
  s.RunCommand("/theorem");
  EXPECT_EQ(s.theorems().size(), 2u);
  // An unnamed buffer cannot be saved without a name.
  s.TakeRequests();
  s.OnKey(Key::Char('s'));
  EXPECT_TRUE(Take<SaveRequest>(s).empty());
  EXPECT_NE(s.message().find("/save FILE"), std::string::npos);
}

TEST(SessionTest, ReportIsShownForTheTheoremUnderTheCursorAndGoesStale) {
  Session s = Loaded();
  agent::LeanReport report;
  report.messages = {{3, 1, "simp made no progress"}, {6, 2, "declaration uses 'sorry'"}};
  report.goals = {{7, "a b : ℕ\n⊢ a + b = b + a"}};
  s.OnEvent(CheckedEvent{s.version() - 1, true, report, ""});  // an older version: ignored
  EXPECT_FALSE(s.have_report());
  s.OnEvent(CheckedEvent{s.version(), true, report, ""});
  EXPECT_FALSE(s.checking());
  ASSERT_EQ(s.MessagesAtCursor().size(), 1u);
  EXPECT_EQ(s.MessagesAtCursor()[0].text, "declaration uses 'sorry'");
  ASSERT_EQ(s.GoalsAtCursor().size(), 1u);
  EXPECT_EQ(s.GoalsAtCursor()[0].goals, "a b : ℕ\n⊢ a + b = b + a");
  s.OnKey(Key::Special(Key::kHome));
  s.OnKey(Key::Special(Key::kDown));
  s.OnKey(Key::Special(Key::kDown));
  ASSERT_EQ(s.MessagesAtCursor().size(), 1u);
  EXPECT_EQ(s.MessagesAtCursor()[0].text, "simp made no progress");
  EXPECT_TRUE(s.GoalsAtCursor().empty());
  EXPECT_FALSE(s.report_stale());
  s.RunCommand("/theorem extra : True := trivial");
  EXPECT_TRUE(s.report_stale());

  // A failed check says why; the last report stays.
  s.OnEvent(CheckedEvent{s.version(), false, {}, "Lean not found"});
  EXPECT_EQ(s.check_error(), "Lean not found");
  EXPECT_TRUE(s.have_report());
}

TEST(SessionTest, StatusEventsKeepTheLeanStateUnlessTheyCarryOne) {
  Session s({});
  s.OnEvent(LeanStateEvent{"ready"});
  StatusView v;
  v.model = "SmolLM2";
  v.tokens_per_second = 42;
  s.OnEvent(StatusEvent{v});
  EXPECT_EQ(s.status().model, "SmolLM2");
  EXPECT_EQ(s.status().lean, "ready");
  EXPECT_DOUBLE_EQ(s.status().tokens_per_second, 42);
}

}  // namespace
}  // namespace lr::tui
