// `leanrotor check FILE.lean [--project DIR] [--json] [--lean-cmd CMD] [--timeout S] [--lean-memory GIB]
// [--lean-cpu S]`: one Lean check, printed.
// Exit 0: no errors and no sorry; 1: errors or sorry (or Lean's file worker crashed on this text, repeatably);
// 2: Lean could not be run (or the file could not be read); 130/143: interrupted (SIGINT/SIGTERM).
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "base/interrupt.h"
#include "cli/command.h"
#include "cli/lean_flags.h"
#include "lsp/server_pool.h"
#include "lsp/utf16.h"

namespace lr::cli {
namespace {

struct CheckFlags {
  std::string file;
  std::string project;
  bool json = false;
  double timeout_s = 300;  // the whole check, the retry on a fresh server included
  LeanFlags lean;
};

// Column as Lean's command line prints it: 0-based, in Unicode characters.
int CharColumn(const std::string& text, lsp::Position p) {
  std::string_view line = lsp::LineOf(text, p.line);
  int chars = 0;
  for (int i = 0; i < p.character && i < static_cast<int>(line.size()); ++i)
    chars += (static_cast<unsigned char>(line[i]) & 0xC0) != 0x80;
  return chars;
}

const char* SiteName(lsp::GoalSite s) {
  return s == lsp::GoalSite::kSorry ? "sorry" : s == lsp::GoalSite::kError ? "error" : "requested";
}

std::string Indent(const std::string& s) {
  std::string out = "  ";
  for (char c : s) {
    out += c;
    if (c == '\n') out += "  ";
  }
  return out;
}

void PrintText(const std::string& file, const std::string& text, const lsp::CheckResult& r) {
  for (const lsp::Diagnostic& d : r.diagnostics) {
    if (d.is_silent) continue;
    std::printf("%s:%d:%d: %s: %s\n", file.c_str(), d.range.start.line + 1, CharColumn(text, d.range.start),
                lsp::SeverityName(d.severity), d.message.c_str());
  }
  for (const lsp::Goal& g : r.goals) {
    if (g.site != lsp::GoalSite::kSorry) continue;
    std::printf("%s:%d:%d: goal at sorry:\n", file.c_str(), g.position.line + 1, CharColumn(text, g.position));
    if (g.goals.empty() && g.term_goal)
      std::printf("%s\n", Indent(*g.term_goal).c_str());
    else if (g.goals.empty())
      std::printf("  %s\n", g.in_tactic_block ? "no goals" : "(no goal reported)");
    for (const std::string& goal : g.goals) std::printf("%s\n", Indent(goal).c_str());
  }
  int errors = 0, warnings = 0;
  for (const lsp::Diagnostic& d : r.diagnostics) {
    errors += d.severity == lsp::Severity::kError;
    warnings += d.severity == lsp::Severity::kWarning;
  }
  if (!r.worker_crash.empty()) std::printf("%s: error: %s\n", file.c_str(), r.worker_crash.c_str());
  std::printf("%s: %d error(s), %d warning(s)%s; checked in %lld ms\n", file.c_str(), errors, warnings,
              r.UsesSorry() ? ", uses sorry" : "", static_cast<long long>(r.elapsed_ms));
}

nlohmann::json PositionJson(const std::string& text, lsp::Position p) {
  return {{"line", p.line}, {"column", CharColumn(text, p)}, {"byte", p.character}};
}

bool Clean(const lsp::CheckResult& r) { return !r.HasErrors() && !r.UsesSorry() && r.worker_crash.empty(); }

void PrintJson(const std::string& file, const std::string& text, const lsp::CheckResult& r) {
  nlohmann::json out = {{"file", file},
                        {"elapsed_ms", r.elapsed_ms},
                        {"has_errors", r.HasErrors()},
                        {"uses_sorry", r.UsesSorry()},
                        {"ok", Clean(r)}};
  if (!r.worker_crash.empty()) out["worker_crash"] = r.worker_crash;
  out["diagnostics"] = nlohmann::json::array();
  for (const lsp::Diagnostic& d : r.diagnostics)
    out["diagnostics"].push_back(
        {{"severity", lsp::SeverityName(d.severity)},
         {"start", PositionJson(text, d.range.start)},
         {"end", PositionJson(text, d.range.end)},
         {"start_utf16", {{"line", d.range_utf16.start.line}, {"character", d.range_utf16.start.character}}},
         {"message", d.message},
         {"lean_tags", d.lean_tags}});
  out["goals"] = nlohmann::json::array();
  for (const lsp::Goal& g : r.goals) {
    nlohmann::json j = {{"site", SiteName(g.site)}, {"position", PositionJson(text, g.position)}, {"goals", g.goals}};
    if (g.term_goal) j["term_goal"] = *g.term_goal;
    out["goals"].push_back(j);
  }
  std::printf("%s\n", out.dump(2).c_str());
}

int RunCheck(const CheckFlags& flags) {
  namespace fs = std::filesystem;
  auto text = ReadFile(flags.file);
  if (!text.ok()) {
    std::fprintf(stderr, "leanrotor check: %s\n", text.status().ToString().c_str());
    return 2;
  }
  std::error_code ec;
  fs::path absolute = fs::absolute(flags.file, ec).lexically_normal();
  lsp::CheckRequest request;
  request.project_root = flags.project.empty() ? FindLakeRoot(absolute.parent_path())
                                               : fs::absolute(flags.project, ec).lexically_normal().string();
  if (Status s = CheckLeanAvailable(flags.lean, {request.project_root}); !s.ok()) {
    std::fprintf(stderr, "leanrotor check: %s\n", s.message().c_str());
    return 2;
  }
  request.path = absolute.string();
  request.text = *text;
  request.timeout = std::chrono::milliseconds(static_cast<int64_t>(flags.timeout_s * 1000));
  request.cancel = InstallInterruptHandler(nullptr);
  lsp::ServerPool pool(MakePoolOptions(flags.lean, 1));
  auto result = pool.Check(request);
  if (!result.ok() && Interrupted()) {
    std::fprintf(stderr, "leanrotor check: interrupted\n");
    return InterruptExitCode();
  }
  if (!result.ok()) {
    std::fprintf(stderr, "leanrotor check: Lean could not check %s: %s\n", flags.file.c_str(),
                 result.status().ToString().c_str());
    return 2;
  }
  if (flags.json)
    PrintJson(flags.file, *text, *result);
  else
    PrintText(flags.file, *text, *result);
  return Clean(*result) ? 0 : 1;
}

}  // namespace

void AddCheckCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<CheckFlags>();
  CLI::App* sub = app.add_subcommand("check",
                                     "Check a Lean file: print its diagnostics and the goal at each sorry "
                                     "(exit 0 clean, 1 errors or sorry, 2 Lean could not be run)");
  sub->add_option("file", flags->file, "the .lean file")->required();
  sub->add_option("--project", flags->project, "Lake project root (default: the nearest directory with a lakefile)");
  sub->add_flag("--json", flags->json, "print the result as JSON");
  sub->add_option("--timeout", flags->timeout_s,
                  "seconds for the whole check: starting Lean, the check, and its retry on a fresh server")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  AddLeanFlags(sub, &flags->lean);
  commands.Add(sub, [flags] { return RunCheck(*flags); });
}

}  // namespace lr::cli
