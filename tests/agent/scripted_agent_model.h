// A scripted LanguageModel that works as Leanstral does in a repository, for tests only: it reads the conversation
// (the tool results so far) and answers with the next tool calls:
//   lean_diagnostic_messages (and, in its first reply, one malformed lean_goal call) -> read_file around the first
//   sorry -> lean_goal + lean_term_goal at the sorry (two calls in one reply) -> lean_local_search when the goal is
//   a commuted sum -> lean_multi_attempt -> edit_file with the first snippet that closes the goal without errors ->
//   lean_diagnostic_messages again; with no sorry left it answers in text, without calls.
// With `cheat`, lean_multi_attempt tries `native_decide` first (the scripted Lean server accepts it: the guard must
// not).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "lm/language_model.h"

namespace lr::agent::testing {

class ScriptedAgentModel : public LanguageModel {
 public:
  ScriptedAgentModel(std::string file, bool cheat = false) : file_(std::move(file)), cheat_(cheat) {}

  std::string Name() const override { return cheat_ ? "scripted-agent-cheater" : "scripted-agent"; }

  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback&) override {
    using Json = nlohmann::json;
    ++requests;
    tools_offered = request.tools.size();
    const auto& m = request.messages;
    // The last assistant reply and the results that answered it.
    int last = -1;
    for (int i = 0; i < static_cast<int>(m.size()); ++i)
      if (m[i].role == "assistant") last = i;
    Choice c;
    c.finish_reason = "tool_calls";
    c.completion_tokens = 10;
    auto call = [&](const std::string& name, const Json& args) { c.tool_calls.push_back({"", name, args.dump()}); };
    auto result_of = [&](const std::string& tool) -> Json {  // the latest result of `tool`, parsed
      for (int i = static_cast<int>(m.size()) - 1; i >= 0; --i) {
        if (m[i].role != "assistant") continue;
        for (const ToolCall& tc : m[i].tool_calls) {
          if (tc.name != tool) continue;
          for (size_t j = i + 1; j < m.size() && m[j].role == "tool"; ++j)
            if (m[j].tool_call_id == tc.id) return Json::parse(m[j].content, nullptr, false);
        }
      }
      return Json();
    };
    const std::string step = last < 0 || m[last].tool_calls.empty() ? "" : m[last].tool_calls.back().name;
    if (last < 0 || step.empty() || step == "edit_file") {
      call("lean_diagnostic_messages", {{"file_path", file_}});
      if (last < 0) c.tool_calls.push_back({"", "lean_goal", "{oops"});      // malformed: answered with a tool error
    } else if (step == "lean_diagnostic_messages" || step == "lean_goal") {  // lean_goal: the first reply's pair
      Json diags = result_of("lean_diagnostic_messages");
      int line = 0;
      for (const Json& d : diags.value("items", Json::array()))
        if (d["message"].get<std::string>().find("sorry") != std::string::npos) {
          line = d["line"];
          break;
        }
      if (line == 0) {
        c.text = "All proofs are complete.";
        c.finish_reason = "stop";
      } else {
        call("read_file", {{"path", file_}, {"start_line", line}, {"end_line", line + 3}});
      }
    } else if (step == "read_file") {
      Locate(result_of("read_file"));
      call("lean_goal", {{"file_path", file_}, {"line", sorry_line_}});
      call("lean_term_goal", {{"file_path", file_}, {"line", sorry_line_}});
    } else if (step == "lean_term_goal") {
      Json goal = result_of("lean_goal");
      std::string g =
          goal.value("goals_before", Json::array()).empty() ? "" : goal["goals_before"][0].get<std::string>();
      if (g.find("b + a") != std::string::npos)
        call("lean_local_search", {{"query", "add_swap"}});
      else
        call("lean_multi_attempt", {{"file_path", file_}, {"line", sorry_line_}, {"snippets", Snippets({})}});
    } else if (step == "lean_local_search") {
      std::vector<std::string> found;
      for (const Json& h : result_of("lean_local_search").value("items", Json::array()))
        found.push_back("exact " + h["name"].get<std::string>() + " a b");
      call("lean_multi_attempt", {{"file_path", file_}, {"line", sorry_line_}, {"snippets", Snippets(found)}});
    } else if (step == "lean_multi_attempt") {
      std::string chosen;
      for (const Json& t : result_of("lean_multi_attempt").value("items", Json::array())) {
        bool error = false;
        for (const Json& d : t["diagnostics"]) error = error || d["severity"] == "error";
        if (t["goals"].empty() && !error) {
          chosen = t["snippet"];
          break;
        }
      }
      call("edit_file",
           {{"path", file_}, {"old_text", header_ + "\n  sorry"}, {"new_text", header_ + "\n  " + chosen}});
    } else {
      c.text = "I do not know what to do after " + step + ".";
      c.finish_reason = "stop";
    }
    Completion out;
    out.choices.push_back(std::move(c));
    out.usage.completion_tokens = 10;
    out.usage.prompt_tokens = 100;
    return out;
  }

  int requests = 0;
  size_t tools_offered = 0;

 private:
  // Finds the sorry line and the line above it in a read_file result ("N: text" lines).
  void Locate(const nlohmann::json& read) {
    std::string content = read.value("content", "");
    std::string previous;
    size_t start = 0;
    while (start < content.size()) {
      size_t nl = content.find('\n', start);
      std::string line = content.substr(start, nl - start);
      start = nl == std::string::npos ? content.size() : nl + 1;
      size_t colon = line.find(": ");
      std::string body = line.substr(colon + 2);
      if (body == "  sorry") {
        sorry_line_ = std::stoi(line.substr(0, colon));
        header_ = previous;
        return;
      }
      previous = body;
    }
  }

  std::vector<std::string> Snippets(const std::vector<std::string>& found) const {
    std::vector<std::string> s;
    if (cheat_) s.push_back("native_decide");
    s.push_back("simp");
    s.insert(s.end(), found.begin(), found.end());
    s.push_back("rfl");
    return s;
  }

  std::string file_;
  bool cheat_;
  int sorry_line_ = 0;
  std::string header_;
};

}  // namespace lr::agent::testing
