// Several clients at once on the in-process model: R requests of P prompt and G greedy tokens each, on the default
// model, submitted one after another (each waits for the previous) and all at once from R threads (the engine decodes
// them together, one Forward per step for all). Counters: generated tokens per second over all clients, and the most
// requests the engine put in one step. Each run opens a fresh model, so no run finds another's prompts cached.
// Prompts are R different slices of the GPL-3 text (Debian's /usr/share/common-licenses/GPL-3).
#include <benchmark/benchmark.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "inference/local_model.h"

namespace lr::inference {
namespace {

const std::string kDefaultModel = std::string(LR_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
std::vector<std::vector<int32_t>> Prompts(const LocalModel& lm, int clients, int prompt_tokens) {
  std::ifstream in("/usr/share/common-licenses/GPL-3");
  std::stringstream text;
  text << in.rdbuf();
  const std::vector<int32_t> all = lm.tokenizer().Encode(text.str(), /*parse_special=*/false);
  std::vector<std::vector<int32_t>> prompts;
  for (int c = 0; c < clients; ++c) {
    const size_t at = (static_cast<size_t>(c) * 997) % (all.size() - prompt_tokens);
    prompts.emplace_back(all.begin() + at, all.begin() + at + prompt_tokens);
  }
  return prompts;
}

void BM_Clients(benchmark::State& state) {
  const int clients = static_cast<int>(state.range(0));
  const int tokens = static_cast<int>(state.range(1));
  const bool together = state.range(2) != 0;
  const int prompt_tokens = static_cast<int>(state.range(3));
  LocalModelOptions o;
  o.path = kDefaultModel;
  o.n_ctx = 1024;
  Result<std::unique_ptr<LocalModel>> lm = LocalModel::Open(o);
  if (!lm.ok()) {
    state.SkipWithError(lm.status().ToString().c_str());
    return;
  }
  const std::vector<std::vector<int32_t>> prompts = Prompts(**lm, clients, prompt_tokens);
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = tokens;
  long generated = 0;
  for (auto _ : state) {
    std::vector<GenerateStats> stats(clients);
    auto run = [&](int c) {
      Result<std::vector<Choice>> r = (*lm)->Generate(prompts[c], p, 1, nullptr, &stats[c]);
      if (!r.ok()) state.SkipWithError(r.status().ToString().c_str());
    };
    if (together) {
      std::vector<std::thread> threads;
      for (int c = 0; c < clients; ++c) threads.emplace_back(run, c);
      for (std::thread& t : threads) t.join();
    } else {
      for (int c = 0; c < clients; ++c) run(c);
    }
    for (const GenerateStats& s : stats) generated += s.generated_tokens;
  }
  state.counters["gen_tok_s"] = benchmark::Counter(static_cast<double>(generated), benchmark::Counter::kIsRate);
  state.counters["peak_requests_per_step"] = (*lm)->engine_stats().peak_requests;
}
// {clients, generated tokens each, together, prompt tokens each}: short prompts (decode-bound), then long ones.
BENCHMARK(BM_Clients)
    ->ArgNames({"clients", "tokens", "together", "prompt"})
    ->Args({4, 64, 0, 32})
    ->Args({4, 64, 1, 32})
    ->Args({8, 64, 0, 32})
    ->Args({8, 64, 1, 32})
    ->Args({8, 64, 0, 256})
    ->Args({8, 64, 1, 256})
    ->Iterations(1)
    ->UseRealTime()
    ->Unit(benchmark::kSecond);

}  // namespace
}  // namespace lr::inference

BENCHMARK_MAIN();
