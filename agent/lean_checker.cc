#include "agent/lean_checker.h"

#include <chrono>

namespace lr::agent {

LeanReport ReportFromCheck(const lsp::CheckResult& result) {
  LeanReport report;
  for (const lsp::Diagnostic& d : result.diagnostics)
    report.messages.push_back({d.range.start.line, static_cast<int>(d.severity), d.message});
  for (const lsp::Goal& g : result.goals) {
    LeanGoal goal;
    goal.line = g.position.line;
    for (const std::string& text : g.goals) goal.goals += (goal.goals.empty() ? "" : "\n\n") + text;
    if (g.goals.empty() && g.term_goal) goal.goals = *g.term_goal;
    if (!goal.goals.empty()) report.goals.push_back(std::move(goal));
  }
  report.seconds = static_cast<double>(result.elapsed_ms) / 1000.0;
  report.worker_crash = result.worker_crash;
  return report;
}

Result<LeanReport> PoolChecker::Check(const CheckRequest& request) {
  lsp::CheckRequest r;
  r.project_root = request.project_root;
  r.path = request.path;
  r.text = request.text;
  r.timeout = std::chrono::milliseconds(static_cast<int64_t>(request.timeout_seconds * 1000));
  r.cancel = request.cancel;
  LR_ASSIGN_OR_RETURN(lsp::CheckResult result, pool_.Check(r));
  return ReportFromCheck(result);
}

}  // namespace lr::agent
