// LeanClient against the scripted Lean server (tests/lsp/scripted_lean_server.cc), one scenario per test.
#include "lsp/lean_client.h"

#include <gtest/gtest.h>

#include <thread>

#include "lsp/jsonrpc.h"

namespace lr::lsp {
namespace {

constexpr char kUri[] = "file:///tmp/leanrotor-test/Scratch.lean";

std::unique_ptr<LeanClient> StartScripted(const std::string& scenario) {
  ProcessSpec spec;
  spec.argv = {LR_SCRIPTED_LEAN_SERVER, "--scenario", scenario};
  ClientOptions options;
  options.initialize_timeout = std::chrono::seconds(10);
  auto client = LeanClient::Start(spec, options, Clock::now() + std::chrono::seconds(10));
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  return client.ok() ? std::move(*client) : nullptr;
}

Clock::time_point Soon(int ms = 10000) { return Clock::now() + std::chrono::milliseconds(ms); }

const char kSorryText[] =
    "theorem add_zero' (n : ℕ) : n + 0 = n := by\n"
    "  -- goal: n : ℕ\\n⊢ n + 0 = n\n"
    "  sorry\n";

const char kErrorText[] =
    "theorem t (x : ℕ) : x = x := by\n"
    "  -- goal: x : ℕ\\n⊢ x = x\n"
    "  simp [ℕ.foo] -- ERROR: unknown constant 'ℕ.foo'\n";

TEST(LeanClient, DiagnosticsAndGoalsAtSorry) {
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kSorryText, Soon());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->complete);
  EXPECT_FALSE(r->HasErrors());
  EXPECT_TRUE(r->UsesSorry());
  ASSERT_EQ(r->diagnostics.size(), 1u);
  const Diagnostic& d = r->diagnostics[0];
  EXPECT_EQ(d.severity, Severity::kWarning);
  EXPECT_EQ(d.range.start, (Position{0, 8}));
  EXPECT_EQ(d.range.end, (Position{0, 17}));
  EXPECT_EQ(d.source, "Lean 4");
  ASSERT_EQ(r->goals.size(), 1u);
  EXPECT_EQ(r->goals[0].site, GoalSite::kSorry);
  EXPECT_EQ(r->goals[0].position, (Position{2, 2}));
  ASSERT_EQ(r->goals[0].goals.size(), 1u);
  EXPECT_EQ(r->goals[0].goals[0], "n : ℕ\n⊢ n + 0 = n");
  EXPECT_GE(r->elapsed_ms, 0);
  EXPECT_TRUE(client->healthy());
}

TEST(LeanClient, Utf16ColumnsAreConvertedToUtf8) {
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kErrorText, Soon());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->diagnostics.size(), 1u);
  const Diagnostic& d = r->diagnostics[0];
  std::string line = "  simp [ℕ.foo] -- ERROR: unknown constant 'ℕ.foo'";
  int byte_col = static_cast<int>(line.find("ERROR:"));
  EXPECT_EQ(d.range.start, (Position{2, byte_col}));
  EXPECT_EQ(d.range_utf16.start, (Position{2, byte_col - 2}));  // ℕ is 3 bytes, 1 UTF-16 unit
  EXPECT_EQ(d.range.end.character, static_cast<int>(line.size()));
  EXPECT_EQ(d.message, "unknown constant 'ℕ.foo'");
  EXPECT_TRUE(r->HasErrors());
  ASSERT_EQ(r->goals.size(), 1u);
  EXPECT_EQ(r->goals[0].site, GoalSite::kError);
  EXPECT_EQ(r->goals[0].goals, std::vector<std::string>{"x : ℕ\n⊢ x = x"});
}

TEST(LeanClient, SorryInCommentsAndStringsIsNotAGoalSite) {
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  auto r =
      client->Check(kUri, "def s := \"sorry\" /- sorry -/\ntheorem t : True := by\n  trivial -- sorry later\n", Soon());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->goals.empty());
}

TEST(LeanClient, ASorryAfterACharLiteralQuoteIsAGoalSite) {
  // '"' is a char literal, not the start of a string: the sorry after it is real (the guard's scanner says so too).
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, "def q := '\"'\ntheorem t : True := by\n  sorry\n", Soon());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->goals.size(), 1u);
  EXPECT_EQ(r->goals[0].site, GoalSite::kSorry);
  EXPECT_EQ(r->goals[0].position.line, 2);
  EXPECT_EQ(r->goals[0].position.character, 2);
}

TEST(LeanClient, ProgressBeforeDiagnosticsIsNotTheBarrier) {
  auto client = StartScripted("progress_first");
  ASSERT_TRUE(client);
  std::vector<size_t> progress;
  client->SetProgressCallback(
      [&](const std::string&, int, const std::vector<Range>& ranges) { progress.push_back(ranges.size()); });
  auto r = client->Check(kUri, kSorryText, Soon());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->UsesSorry());  // diagnostics that came after "done" progress are there
  ASSERT_GE(progress.size(), 2u);
  EXPECT_EQ(progress[1], 0u);  // "done" arrived before the diagnostics
}

TEST(LeanClient, StaleVersionsAreIgnored) {
  auto client = StartScripted("stale");
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->Check(kUri, kSorryText, Soon()).ok());
  auto r = client->Check(kUri, "theorem t : True := by\n  trivial\n", Soon());
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->diagnostics.empty()) << r->diagnostics[0].message;
}

TEST(LeanClient, IncrementalDiagnosticsAreAppended) {
  auto client = StartScripted("incremental");
  ASSERT_TRUE(client);
  std::string text = std::string(kSorryText) + "theorem u : False := by\n  UNSOLVED\n";
  auto r = client->Check(kUri, text, Soon());
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->diagnostics.size(), 2u);
  EXPECT_EQ(r->diagnostics[1].message.rfind("unsolved goals", 0), 0u);
  EXPECT_EQ(r->diagnostics[1].lean_tags, std::vector<int>{static_cast<int>(LeanTag::kUnsolvedGoals)});
  // A new version replaces, not appends.
  auto again = client->Check(kUri, kSorryText, Soon());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->diagnostics.size(), 1u);
}

TEST(LeanClient, AnswersServerRequestsBeforeItProceeds) {
  auto client = StartScripted("server_requests");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kSorryText, Soon(5000));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->UsesSorry());
}

TEST(LeanClient, CrashedWorkerIsUnavailable) {
  auto client = StartScripted("crash_worker");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kSorryText, Soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("-32902"), std::string::npos);
}

TEST(LeanClient, FatalErrorProgressIsUnavailable) {
  auto client = StartScripted("fatal_progress");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kSorryText, Soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
}

TEST(LeanClient, HangTimesOutAndIsNotReused) {
  auto client = StartScripted("hang");
  ASSERT_TRUE(client);
  auto start = Clock::now();
  auto r = client->Check(kUri, kSorryText, Soon(300));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kTimeout);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
  EXPECT_FALSE(client->healthy());
  auto again = client->Check(kUri, kSorryText, Soon(300));
  EXPECT_EQ(again.status().code(), StatusCode::kUnavailable);
}

TEST(LeanClient, DeathMidMessageIsUnavailable) {
  auto client = StartScripted("die_mid_message");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kSorryText, Soon());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(r.status().message().find("exited with status 1"), std::string::npos);
  EXPECT_FALSE(client->healthy());
}

TEST(LeanClient, NonJsonOnStdoutBreaksTheConnection) {
  ProcessSpec spec;
  spec.argv = {LR_SCRIPTED_LEAN_SERVER, "--scenario", "noise_stdout"};
  auto client = LeanClient::Start(spec, ClientOptions{}, Clock::now() + std::chrono::seconds(10));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(client.status().message().find("downloading toolchain"), std::string::npos);
}

TEST(LeanClient, NonJsonOnStderrIsLogged) {
  auto client = StartScripted("noise_stderr");
  ASSERT_TRUE(client);
  auto r = client->Check(kUri, kSorryText, Soon());
  ASSERT_TRUE(r.ok());
  EXPECT_NE(client->StderrTail().find("not JSON"), std::string::npos);
}

TEST(LeanClient, ServerThatExitsAtStartIsUnavailable) {
  ProcessSpec spec;
  spec.argv = {LR_SCRIPTED_LEAN_SERVER, "--scenario", "exit_on_start"};
  auto client = LeanClient::Start(spec, ClientOptions{}, Clock::now() + std::chrono::seconds(10));
  ASSERT_FALSE(client.ok());
  EXPECT_EQ(client.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(client.status().message().find("exited with status 3"), std::string::npos);
}

TEST(LeanClient, RangedEdit) {
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->Check(kUri, kSorryText, Soon()).ok());
  // Replace `sorry` on line 2 (bytes 2..7) by `rfl`; the server applies the UTF-16 range to its own copy.
  auto r = client->Edit(kUri, Range{{2, 2}, {2, 7}}, "rfl", Soon());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_FALSE(r->UsesSorry());
  EXPECT_TRUE(r->diagnostics.empty());
  // An edit after a multi-byte character: the server must end with the same text as we do.
  auto r2 = client->Edit(kUri, Range{{0, 45}, {0, 45}}, " ERROR: edited", Soon());
  ASSERT_TRUE(r2.ok());
  ASSERT_EQ(r2->diagnostics.size(), 1u);
  EXPECT_EQ(r2->diagnostics[0].message, "edited");
}

TEST(LeanClient, MultiAttemptReportsEachSnippet) {
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  auto r = client->MultiAttempt(kUri, kSorryText, 2, {"rfl", "simp -- ERROR: simp made no progress", "omega\nsorry"},
                                Soon());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_TRUE((*r)[0].diagnostics.empty());
  EXPECT_TRUE((*r)[0].goal_after.in_tactic_block);
  EXPECT_TRUE((*r)[0].goal_after.goals.empty());  // solved
  ASSERT_EQ((*r)[1].diagnostics.size(), 1u);
  EXPECT_EQ((*r)[1].diagnostics[0].message, "simp made no progress");
  EXPECT_EQ((*r)[1].goal_after.goals, std::vector<std::string>{"n : ℕ\n⊢ n + 0 = n"});
  EXPECT_EQ((*r)[2].goal_after.position.line, 3);
  auto bad = client->MultiAttempt(kUri, kSorryText, 40, {"rfl"}, Soon());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(LeanClient, GoalAtTermGoalAndHover) {
  auto client = StartScripted("normal");
  ASSERT_TRUE(client);
  ASSERT_TRUE(client->Check(kUri, kSorryText, Soon()).ok());
  auto g = client->GoalAt(kUri, {2, 2}, Soon());
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->goals.size(), 1u);
  auto term = client->GoalAt(kUri, {0, 20}, Soon());  // before `by`: no tactic goal, a term goal
  ASSERT_TRUE(term.ok());
  EXPECT_FALSE(term->in_tactic_block);
  EXPECT_EQ(term->term_goal.value_or(""), "⊢ Prop");
  auto hover = client->Hover(kUri, {0, 10}, Soon());
  ASSERT_TRUE(hover.ok());
  EXPECT_EQ(*hover, "```lean\nadd_zero' (n : ℕ) : n + 0 = n\n```");  // the declaration's signature, as Lean shows it
  EXPECT_EQ(client->GoalAt("file:///not/open.lean", {0, 0}, Soon()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(client->Close(kUri).ok());
}

TEST(Uri, RoundTrip) {
  std::string path = "/tmp/a dir/Théorème#1.lean";
  std::string uri = PathToUri(path);
  EXPECT_EQ(uri, "file:///tmp/a%20dir/Th%C3%A9or%C3%A8me%231.lean");
  auto back = UriToPath(uri);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, path);
  EXPECT_EQ(UriToPath("http://x").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(UriToPath("file:///a%2").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lr::lsp
