// The tool layer against the scripted Lean server on a copy of the lake_sorries fixture: lean-lsp-mcp's result
// shapes, the working copy (edits seen by Lean, never written to disk), path confinement in every tool, argument
// validation, local search, and the unified diff.
#include "agent/tools.h"

#include <unistd.h>

#include <gtest/gtest.h>
#include <filesystem>

#include "agent/diff.h"
#include "agent/local_search.h"
#include "base/file.h"
#include "tests/agent/lake_fixture.h"

namespace lr::agent {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

// A fresh copy of tests/fixtures/lake_sorries, with a symlink pointing out of it and a file outside it.
std::string FixtureCopy(const std::string& name) {
  const fs::path project = testing::CopyLakeFixture("tools_" + name);
  const fs::path dir = project.parent_path();
  EXPECT_TRUE(WriteFileAtomic((dir / "secret.lean").string(), "theorem secret : True := trivial\n").ok());
  fs::create_directory_symlink(dir, dir / "project" / "escape");
  return (dir / "project").string();
}

class ToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = FixtureCopy(::testing::UnitTest::GetInstance()->current_test_info()->name());
    lsp::PoolOptions pool_options;
    pool_options.lean_command = {LR_SCRIPTED_LEAN_SERVER};
    pool_ = std::make_unique<lsp::ServerPool>(pool_options);
    auto copy = WorkingCopy::Open(root_);
    ASSERT_TRUE(copy.ok()) << copy.status().ToString();
    copy_ = std::move(*copy);
    ToolsOptions options;
    options.lean_timeout_seconds = 20;
    options.search_roots = {root_ + "/no_toolchain_here"};
    tools_ = std::make_unique<ToolBox>(*pool_, *copy_, options);
  }

  Json Ok(const std::string& name, const Json& args) {
    ToolOutcome r = tools_->Call(name, args.dump());
    EXPECT_FALSE(r.is_error) << name << ": " << r.text;
    EXPECT_EQ(Json::parse(r.text), r.structured);
    return r.structured;
  }

  std::string Error(const std::string& name, const Json& args) {
    ToolOutcome r = tools_->Call(name, args.dump());
    EXPECT_TRUE(r.is_error) << name << " should fail, got " << r.text;
    return r.text;
  }

  std::string root_;
  std::unique_ptr<lsp::ServerPool> pool_;
  std::unique_ptr<WorkingCopy> copy_;
  std::unique_ptr<ToolBox> tools_;
};

const char kFile[] = "Sorries/Basic.lean";

TEST_F(ToolsTest, DefinitionsCarryLeanLspMcpNamesAndSchemas) {
  std::vector<std::string> names;
  for (const ToolDefinition& d : tools_->Definitions()) {
    names.push_back(d.name);
    EXPECT_EQ(d.input_schema["type"], "object") << d.name;
    EXPECT_FALSE(d.description.empty()) << d.name;
  }
  for (const char* expected :
       {"lean_file_outline", "lean_diagnostic_messages", "lean_goal", "lean_term_goal", "lean_hover_info",
        "lean_completions", "lean_declaration_file", "lean_multi_attempt", "lean_run_code", "lean_local_search",
        "lean_build", "read_file", "edit_file", "write_file", "list_files"})
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  EXPECT_EQ(tools_->Specs().size(), names.size());
}

TEST_F(ToolsTest, GoalBeforeAndAfterAndAtAColumn) {
  Json g = Ok("lean_goal", {{"file_path", kFile}, {"line", 9}});
  EXPECT_EQ(g["line_context"], "  sorry");
  EXPECT_EQ(g["goals_before"], Json::array({"⊢ double 0 = 0"}));
  EXPECT_EQ(g["goals_after"], Json::array({"⊢ double 0 = 0"}));
  Json at = Ok("lean_goal", {{"file_path", kFile}, {"line", 9}, {"column", 3}});
  EXPECT_EQ(at["goals"], Json::array({"⊢ double 0 = 0"}));
  Json outside = Ok("lean_goal", {{"file_path", kFile}, {"line", 5}, {"column", 1}});
  EXPECT_TRUE(outside["goals"].is_null());  // not in a tactic block
  EXPECT_NE(Error("lean_goal", {{"file_path", kFile}, {"line", 99}}).find("out of range"), std::string::npos);
}

TEST_F(ToolsTest, DiagnosticsWithRangesAndDeclarationFilter) {
  Json all = Ok("lean_diagnostic_messages", {{"file_path", kFile}});
  ASSERT_EQ(all["items"].size(), 3u);
  EXPECT_EQ(all["items"][0]["severity"], "warning");
  EXPECT_EQ(all["items"][0]["line"], 7);
  EXPECT_EQ(all["items"][0]["column"], 9);
  EXPECT_EQ(all["success"], true);
  Json range = Ok("lean_diagnostic_messages", {{"file_path", kFile}, {"start_line", 10}, {"end_line", 12}});
  EXPECT_EQ(range["items"].size(), 1u);
  Json decl = Ok("lean_diagnostic_messages", {{"file_path", kFile}, {"declaration_name", "double_eq"}});
  ASSERT_EQ(decl["items"].size(), 1u);
  EXPECT_EQ(decl["items"][0]["line"], 15);
  Error("lean_diagnostic_messages", {{"file_path", kFile}, {"declaration_name", "nope"}});
}

TEST_F(ToolsTest, OutlineHoverCompletionsDeclarationTermGoal) {
  Json outline = Ok("lean_file_outline", {{"file_path", kFile}});
  ASSERT_EQ(outline["declarations"].size(), 4u);
  EXPECT_EQ(outline["declarations"][0]["name"], "double");
  EXPECT_EQ(outline["declarations"][0]["kind"], "Def");
  EXPECT_EQ(outline["declarations"][1]["kind"], "Thm");
  EXPECT_EQ(outline["declarations"][1]["start_line"], 7);
  EXPECT_EQ(outline["declarations"][1]["end_line"], 9);
  EXPECT_EQ(outline["declarations"][0]["type_signature"], "double (n : Nat) : Nat");

  Json hover = Ok("lean_hover_info", {{"file_path", kFile}, {"line", 7}, {"column", 23}});
  EXPECT_EQ(hover["symbol"], "double");
  EXPECT_EQ(hover["info"], "double (n : Nat) : Nat");
  Error("lean_hover_info", {{"file_path", kFile}, {"line", 2}, {"column", 1}});  // nothing there

  Json completions =
      Ok("lean_completions", {{"file_path", kFile}, {"line", 7}, {"column", 26}, {"max_completions", 2}});
  ASSERT_EQ(completions["items"].size(), 2u);
  EXPECT_EQ(completions["items"][0]["label"], "double");
  EXPECT_EQ(completions["items"][0]["kind"], "function");

  Json decl = Ok("lean_declaration_file", {{"file_path", kFile}, {"symbol", "double"}});
  EXPECT_EQ(decl["file_path"], root_ + "/Sorries/Basic.lean");
  EXPECT_EQ(decl["start_line"], 5);
  EXPECT_EQ(decl["content"], "def double (n : Nat) : Nat := n + n\n");
  Error("lean_declaration_file", {{"file_path", kFile}, {"symbol", "absent_symbol"}});

  Json term = Ok("lean_term_goal", {{"file_path", kFile}, {"line", 9}});
  EXPECT_EQ(term["line_context"], "  sorry");
  EXPECT_EQ(term["expected_type"], "⊢ Prop");
}

TEST_F(ToolsTest, MultiAttemptGivesGoalsAndDiagnosticsPerSnippetAndLeavesTheFile) {
  std::string before = *ReadFile(root_ + "/" + kFile);
  Json r = Ok("lean_multi_attempt",
              {{"file_path", kFile}, {"line", 9}, {"snippets", {"rfl", "simp", "exact no_such_lemma"}}});
  ASSERT_EQ(r["items"].size(), 3u);
  EXPECT_EQ(r["items"][0]["snippet"], "rfl");
  EXPECT_EQ(r["items"][0]["goals"], Json::array());
  EXPECT_EQ(r["items"][0]["diagnostics"], Json::array());
  EXPECT_EQ(r["items"][1]["goals"], Json::array({"⊢ double 0 = 0"}));
  ASSERT_EQ(r["items"][2]["diagnostics"].size(), 1u);
  EXPECT_EQ(r["items"][2]["diagnostics"][0]["message"], "unknown identifier 'no_such_lemma'");
  EXPECT_EQ(*ReadFile(root_ + "/" + kFile), before);
  EXPECT_EQ(*copy_->Read(root_ + "/" + kFile), before);
  Error("lean_multi_attempt", {{"file_path", kFile}, {"line", 9}, {"snippets", Json::array()}});
}

TEST_F(ToolsTest, RunCodeWritesNothing) {
  Json r = Ok("lean_run_code", {{"code", "theorem t : True := by\n  exact absent -- ERROR: unknown identifier\n"}});
  EXPECT_EQ(r["success"], false);
  ASSERT_EQ(r["diagnostics"].size(), 1u);
  EXPECT_EQ(r["diagnostics"][0]["severity"], "error");
  for (const auto& e : fs::directory_iterator(root_))
    EXPECT_EQ(e.path().filename().string().find("_leanrotor_run"), std::string::npos);
}

TEST_F(ToolsTest, LocalSearchFindsProjectDeclarationsRankedExactFirst) {
  Json r = Ok("lean_local_search", {{"query", "add_swap"}});
  ASSERT_EQ(r["items"].size(), 1u);
  EXPECT_EQ(r["items"][0]["name"], "add_swap_helper");
  EXPECT_EQ(r["items"][0]["kind"], "theorem");
  EXPECT_EQ(r["items"][0]["file"], "Sorries/Lemmas.lean");
  Json d = Ok("lean_local_search", {{"query", "double"}, {"limit", 2}});
  ASSERT_EQ(d["items"].size(), 2u);
  EXPECT_EQ(d["items"][0]["name"], "double");
  Error("lean_local_search", {{"query", "two words"}});
  Error("lean_local_search", {{"query", "x"}, {"project_root", "/"}});
}

TEST_F(ToolsTest, EditsGoToTheWorkingCopyAndLeanSeesThem) {
  const std::string path = root_ + "/" + kFile;
  std::string disk = *ReadFile(path);
  Error("edit_file", {{"path", kFile}, {"old_text", "  sorry"}, {"new_text", "  rfl"}});  // three occurrences
  Error("edit_file", {{"path", kFile}, {"old_text", "not in the file"}, {"new_text", "x"}});
  Json e = Ok("edit_file", {{"path", kFile},
                            {"old_text", "-- goal: ⊢ double 0 = 0\n  sorry"},
                            {"new_text", "-- goal: ⊢ double 0 = 0\n  rfl"}});
  EXPECT_EQ(e["line"], 8);
  EXPECT_EQ(*ReadFile(path), disk);  // the user's file is untouched
  Json diags = Ok("lean_diagnostic_messages", {{"file_path", kFile}});
  EXPECT_EQ(diags["items"].size(), 2u);  // Lean checked the edited text
  Json read = Ok("read_file", {{"path", kFile}, {"start_line", 9}, {"end_line", 9}});
  EXPECT_EQ(read["content"], "9:   rfl\n");
  EXPECT_EQ(read["total_lines"], 19);

  Ok("write_file", {{"path", "Sorries/New.lean"}, {"content", "theorem n : True := trivial\n"}});
  EXPECT_FALSE(fs::exists(root_ + "/Sorries/New.lean"));
  Json list = Ok("list_files", {{"path", "Sorries"}, {"pattern", "*.lean"}});
  EXPECT_EQ(list["items"], Json::array({"Sorries/Basic.lean", "Sorries/Lemmas.lean", "Sorries/New.lean"}));

  EXPECT_EQ(copy_->Changed(), (std::vector<std::string>{root_ + "/Sorries/Basic.lean", root_ + "/Sorries/New.lean"}));
  copy_->Reset();
  EXPECT_EQ(*copy_->Read(path), disk);
  EXPECT_TRUE(copy_->Changed().empty());
}

TEST_F(ToolsTest, EveryPathToolRefusesPathsOutsideTheProject) {
  const std::vector<std::string> outside = {"../secret.lean", root_ + "/../secret.lean", "/etc/passwd",
                                            "escape/secret.lean", "Sorries/../../secret.lean"};
  for (const std::string& p : outside) {
    for (const auto& [tool, args] : std::vector<std::pair<std::string, Json>>{
             {"lean_file_outline", {{"file_path", p}}},
             {"lean_diagnostic_messages", {{"file_path", p}}},
             {"lean_goal", {{"file_path", p}, {"line", 1}}},
             {"lean_term_goal", {{"file_path", p}, {"line", 1}}},
             {"lean_hover_info", {{"file_path", p}, {"line", 1}, {"column", 1}}},
             {"lean_completions", {{"file_path", p}, {"line", 1}, {"column", 1}}},
             {"lean_declaration_file", {{"file_path", p}, {"symbol", "secret"}}},
             {"lean_multi_attempt", {{"file_path", p}, {"line", 1}, {"snippets", {"rfl"}}}},
             {"lean_local_search", {{"query", "secret"}, {"project_root", p}}},
             {"lean_build", {{"lean_project_path", p}}},
             {"read_file", {{"path", p}}},
             {"edit_file", {{"path", p}, {"old_text", "a"}, {"new_text", "b"}}},
             {"write_file", {{"path", p}, {"content", "x"}}},
             {"list_files", {{"path", p}}}}) {
      std::string why = Error(tool, args);
      EXPECT_TRUE(why.find("outside the project") != std::string::npos ||
                  why.find("is not this server's project") != std::string::npos)
          << tool << " " << p << ": " << why;
    }
  }
  EXPECT_TRUE(copy_->Changed().empty());
  // lean_run_code takes no path; lean_local_search never reads outside its roots: the secret is not found.
  EXPECT_EQ(Ok("lean_local_search", {{"query", "secret"}})["items"].size(), 0u);
}

TEST_F(ToolsTest, BadArgumentsAreToolErrorsNamingTheField) {
  EXPECT_NE(Error("lean_goal", {{"file_path", kFile}}).find("missing required argument `line`"), std::string::npos);
  EXPECT_NE(Error("lean_goal", {{"file_path", kFile}, {"line", "9"}}).find("`line` must be of type integer"),
            std::string::npos);
  EXPECT_NE(Error("lean_goal", {{"file_path", kFile}, {"line", 0}}).find("at least 1"), std::string::npos);
  EXPECT_NE(Error("lean_goal", {{"file_path", kFile}, {"line", 9}, {"col", 1}}).find("unknown argument `col`"),
            std::string::npos);
  EXPECT_NE(Error("no_such_tool", Json::object()).find("unknown tool"), std::string::npos);
  ToolOutcome bad = tools_->Call("lean_goal", "{not json");
  EXPECT_TRUE(bad.is_error);
  EXPECT_NE(bad.text.find("not valid JSON"), std::string::npos);
  EXPECT_NE(Error("lean_goal", {{"file_path", "lean-toolchain"}, {"line", 1}}).find("not a Lean file"),
            std::string::npos);
}

TEST_F(ToolsTest, BuildRunsTheCommandAndReportsProgress) {
  ToolsOptions options;
  options.build_command = {"sh", "-c",
                           "echo '[1/2] Building Sorries.Lemmas (0.4s)'; echo 'note [x/y] not progress'; "
                           "echo '[2/2] Building Sorries.Basic'; echo 'error: boom' >&2; exit 3"};
  ToolBox tools(*pool_, *copy_, options);
  std::vector<std::string> progress;
  ToolCallContext context;
  context.progress = [&](double p, double total, const std::string& m) {
    progress.push_back(std::to_string(static_cast<int>(p)) + "/" + std::to_string(static_cast<int>(total)) + " " + m);
  };
  ToolOutcome r = tools.Call("lean_build", "{}", context);
  ASSERT_FALSE(r.is_error) << r.text;
  EXPECT_EQ(r.structured["success"], false);
  EXPECT_EQ(r.structured["errors"], Json::array({"error: boom"}));
  EXPECT_NE(r.structured["output"].get<std::string>().find("[2/2] Building Sorries.Basic"), std::string::npos);
  EXPECT_EQ(progress, (std::vector<std::string>{"1/2 Building Sorries.Lemmas", "2/2 Building Sorries.Basic"}));

  std::atomic<bool> cancel{true};
  ToolCallContext cancelled;
  cancelled.cancel = &cancel;
  EXPECT_TRUE(tools.Call("lean_build", "{}", cancelled).is_error);
}

TEST(UnifiedDiff, HunksWithContext) {
  EXPECT_EQ(UnifiedDiff("a\nb\n", "a\nb\n", "a/f", "b/f"), "");
  std::string a, b;
  for (int i = 1; i <= 20; ++i) {
    a += std::to_string(i) + "\n";
    b += (i == 5 ? std::string("five") : i == 15 ? std::string("fifteen") : std::to_string(i)) + "\n";
  }
  EXPECT_EQ(UnifiedDiff(a, b, "a/f", "b/f"),
            "--- a/f\n+++ b/f\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
            "@@ -12,7 +12,7 @@\n 12\n 13\n 14\n-15\n+fifteen\n 16\n 17\n 18\n");
}

TEST(SearchDeclarations, ModifiersAttributesAndComponents) {
  fs::path dir = fs::path(::testing::TempDir()) / ("lr_search_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / ".git");
  ASSERT_TRUE(WriteFileAtomic((dir / "A.lean").string(),
                              "@[simp] private theorem Nat.my_add_comm (a b : Nat) : a + b = b + a := by omega\n"
                              "  def not_at_line_start_is_fine : Nat := 1\n"
                              "-- theorem in_comment_is_not_found\n"
                              "noncomputable def my_add_comm_aux : Nat := 0\n")
                  .ok());
  ASSERT_TRUE(WriteFileAtomic((dir / ".git" / "B.lean").string(), "theorem my_add_comm_git : True := trivial\n").ok());
  auto hits = SearchDeclarations({dir.string()}, "my_add_comm", 10);
  ASSERT_TRUE(hits.ok());
  ASSERT_EQ(hits->size(), 2u);
  EXPECT_EQ((*hits)[0].name, "Nat.my_add_comm");
  EXPECT_EQ((*hits)[0].kind, "theorem");
  EXPECT_EQ((*hits)[0].line, 1);
  EXPECT_EQ((*hits)[1].name, "my_add_comm_aux");
  EXPECT_EQ((*hits)[1].line, 4);
  EXPECT_EQ(SearchDeclarations({dir.string()}, "in_comment", 10)->size(), 0u);
  EXPECT_EQ(SearchDeclarations({dir.string()}, "not_at_line", 10)->size(), 1u);
}

}  // namespace
}  // namespace lr::agent
