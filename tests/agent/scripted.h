// Test doubles for the agent: a model that replies with canned texts, and an in-process stand-in for Lean.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "agent/lean_checker.h"
#include "lm/language_model.h"

namespace lr::agent::testing {

// Replies with canned texts, per theorem: a request is matched to the first theorem name (a key of `replies`) its
// messages mention, and gets the next texts from that theorem's queue (an empty ```lean block once it runs dry).
// A text "@check_proof ARGS" is a check_proof tool call with ARGS as its arguments (ids call_0, call_1, ...).
// Tokens are counted as whitespace-separated words.
using Replies = std::map<std::string, std::deque<std::string>>;

class ScriptedModel : public LanguageModel {
 public:
  explicit ScriptedModel(Replies replies, int delay_ms = 0) : replies_(std::move(replies)), delay_ms_(delay_ms) {}

  std::string Name() const override { return "scripted"; }

  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece) override {
    if (delay_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
    std::lock_guard<std::mutex> lock(mu_);
    requests_.push_back(request);
    std::string all;
    for (const auto& m : request.messages) all += m.content;
    std::deque<std::string>* queue = nullptr;
    for (auto& [name, q] : replies_)
      if (all.find(name) != std::string::npos) {
        queue = &q;
        break;
      }
    Completion c;
    for (int i = 0; i < request.n; ++i) {
      Choice choice;
      if (queue != nullptr && !queue->empty()) {
        choice.text = queue->front();
        queue->pop_front();
      } else {
        choice.text = "```lean\n```";
      }
      const std::string kCall = "@check_proof ";  // a canned tool call: the rest is its arguments
      if (choice.text.rfind(kCall, 0) == 0) {
        choice.tool_calls.push_back(
            {"call_" + std::to_string(calls_++), "check_proof", choice.text.substr(kCall.size())});
        choice.text.clear();
      }
      choice.finish_reason = on_piece(i, choice.text) ? "stop" : "cancelled";
      choice.completion_tokens = Words(choice.text);
      c.usage.completion_tokens += choice.completion_tokens;
      c.choices.push_back(std::move(choice));
    }
    c.usage.prompt_tokens = Words(all);
    return c;
  }

  std::vector<CompletionRequest> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

 private:
  static int Words(const std::string& s) {
    int n = 0;
    bool in_word = false;
    for (char ch : s) {
      bool space = ch == ' ' || ch == '\n' || ch == '\t';
      if (!space && !in_word) ++n;
      in_word = !space;
    }
    return n;
  }

  std::mutex mu_;
  Replies replies_;
  std::vector<CompletionRequest> requests_;
  int delay_ms_;
  int calls_ = 0;
};

// Plays Lean on a checked text (preamble + theorem + `#print axioms NAME` on the last line), by rules:
// `bad_tactic` on a line is an error there with a goal; `sorry` gives "declaration uses 'sorry'"; the axioms report
// lists propext, plus Lean.ofReduceBool when the text uses native_decide. The first `unavailable_calls` checks fail
// with kUnavailable, as a dead server would.
class ScriptedChecker : public LeanChecker {
 public:
  explicit ScriptedChecker(int unavailable_calls = 0) : unavailable_calls_(unavailable_calls) {}

  Result<LeanReport> Check(const CheckRequest& request) override {
    std::lock_guard<std::mutex> lock(mu_);
    texts_.push_back(request.text);
    if (unavailable_calls_ > 0) {
      --unavailable_calls_;
      return Unavailable("scripted Lean server is down");
    }
    LeanReport report;
    std::vector<std::string> lines;
    size_t start = 0;
    while (start < request.text.size()) {
      size_t end = request.text.find('\n', start);
      if (end == std::string::npos) end = request.text.size();
      lines.push_back(request.text.substr(start, end - start));
      start = end + 1;
    }
    int theorem_line = 0;
    for (int i = 0; i < static_cast<int>(lines.size()); ++i) {
      if (lines[i].rfind("theorem ", 0) == 0) theorem_line = i;
      if (lines[i].find("bad_tactic") != std::string::npos) {
        report.messages.push_back({i, 1, "unknown tactic 'bad_tactic'"});
        report.goals.push_back({i, "n : ℕ\n⊢ n + 0 = 2"});
      }
      if (lines[i].find("sorry") != std::string::npos)
        report.messages.push_back({theorem_line, 2, "declaration uses 'sorry'"});
    }
    const std::string& last = lines.back();
    const std::string name = last.substr(last.find("axioms ") + 7);
    std::string axioms = "propext";
    if (request.text.find("native_decide") != std::string::npos) axioms += ", Lean.ofReduceBool";
    report.messages.push_back(
        {static_cast<int>(lines.size()) - 1, 3, "'" + name + "' depends on axioms: [" + axioms + "]"});
    report.seconds = 0.001;
    return report;
  }

  std::vector<std::string> texts() {
    std::lock_guard<std::mutex> lock(mu_);
    return texts_;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> texts_;
  int unavailable_calls_;
};

}  // namespace lr::agent::testing
