// Runs a batch with the scripted model and the scripted Lean, as `leanrotor batch` would, for the interrupt test:
//   agent_batch_driver TASKS.jsonl OUT.jsonl REPLIES.json [--resume] [--delay-ms N]
// REPLIES.json maps task names to lists of reply texts. SIGINT cancels the run (exit 130), like the CLI.
#include <csignal>
#include <cstdio>
#include <cstring>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/batch.h"
#include "base/file.h"
#include "tests/agent/scripted.h"

namespace {

std::atomic<bool> g_cancel{false};
void OnSigint(int) { g_cancel.store(true); }

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s TASKS OUT REPLIES [--resume] [--delay-ms N]\n", argv[0]);
    return 2;
  }
  bool resume = false;
  int delay_ms = 0;
  for (int i = 4; i < argc; ++i) {
    if (std::strcmp(argv[i], "--resume") == 0) resume = true;
    if (std::strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc) delay_ms = std::atoi(argv[++i]);
  }
  std::signal(SIGINT, OnSigint);

  lr::Result<std::string> replies_text = lr::ReadFile(argv[3]);
  if (!replies_text.ok()) return 2;
  lr::agent::testing::Replies replies;
  const nlohmann::json parsed = nlohmann::json::parse(*replies_text, nullptr, /*allow_exceptions=*/false);
  if (!parsed.is_object()) {
    std::fprintf(stderr, "%s: expected a JSON object of reply lists\n", argv[3]);
    return 2;
  }
  for (const auto& [name, texts] : parsed.items())
    for (const auto& t : texts) replies[name].push_back(t.get<std::string>());
  lr::agent::testing::ScriptedModel model(std::move(replies), delay_ms);
  lr::agent::testing::ScriptedChecker lean;

  lr::Result<std::vector<lr::agent::BatchTask>> tasks = lr::agent::LoadTasks(argv[1]);
  if (!tasks.ok()) {
    std::fprintf(stderr, "%s\n", tasks.status().ToString().c_str());
    return 2;
  }
  lr::agent::BatchOptions options;
  options.prover.k = 1;
  options.prover.turns = 0;
  options.out_path = argv[2];
  options.resume = resume;
  options.cancel = &g_cancel;
  lr::Result<lr::agent::BatchSummary> summary = lr::agent::RunBatch(*tasks, model, lean, options, nullptr);
  if (!summary.ok()) {
    std::fprintf(stderr, "%s\n", summary.status().ToString().c_str());
    return 1;
  }
  return summary->cancelled ? 130 : 0;
}
