// `leanrotor generate`: streams a completion of a prompt from the in-process model.
#include <omp.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "cli/model_flags.h"

namespace lr::cli {
namespace {

struct GenerateFlags {
  LocalModelFlags local;
  std::string prompt;
  int n_predict = 128;
  SamplingParams sampling;
  bool chat = false;
};

int RunGenerate(GenerateFlags f) {
  Result<inference::LocalModelOptions> options = MakeLocalModelOptions(f.local);
  if (!options.ok()) {
    std::fprintf(stderr, "leanrotor generate: %s\n", options.status().ToString().c_str());
    return 2;
  }
  auto lm = inference::LocalModel::Open(*options);
  if (!lm.ok()) {
    std::fprintf(stderr, "leanrotor generate: %s\n", lm.status().ToString().c_str());
    return lm.status().code() == StatusCode::kNotFound ? 2 : 1;
  }
  f.sampling.max_tokens = f.n_predict;
  auto stream = [](int, std::string_view piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  inference::GenerateStats stats;
  Status status;
  if (f.chat) {
    CompletionRequest request;
    request.messages.push_back({"user", f.prompt, {}, {}});
    request.sampling = f.sampling;
    auto done = (*lm)->Complete(request, stream, &stats);
    status = done.status();
  } else {
    const inference::Tokenizer& tok = (*lm)->tokenizer();
    std::vector<int32_t> prompt;
    if (tok.add_bos() && tok.bos() >= 0) prompt.push_back(tok.bos());
    const std::vector<int32_t> text = tok.Encode(f.prompt, false);
    prompt.insert(prompt.end(), text.begin(), text.end());
    std::fwrite(f.prompt.data(), 1, f.prompt.size(), stdout);
    auto done = (*lm)->Generate(prompt, f.sampling, 1, stream, &stats);
    status = done.status();
  }
  std::fputc('\n', stdout);
  std::fflush(stdout);  // the text ends before the statistics on stderr
  if (!status.ok()) {
    std::fprintf(stderr, "leanrotor generate: %s\n", status.ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "prompt: %d tokens, %.1f tok/s; generated: %d tokens, %.1f tok/s (%d threads, K %s, V %s)\n",
               stats.prompt_tokens, stats.prompt_tokens / std::max(stats.prefill_seconds, 1e-9), stats.generated_tokens,
               stats.generated_tokens / std::max(stats.decode_seconds, 1e-9), omp_get_max_threads(),
               f.local.ctk.c_str(), f.local.ctv.c_str());
  return 0;
}

}  // namespace

void AddGenerateCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<GenerateFlags>();
  // llama.cpp's defaults.
  flags->sampling.temperature = 0.8f;
  flags->sampling.top_k = 40;
  flags->sampling.top_p = 0.95f;
  flags->sampling.min_p = 0.05f;
  CLI::App* sub = app.add_subcommand("generate", "Stream a completion of a prompt from the in-process model");
  sub->add_option("-m,--model", flags->local.model, "GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("-p,--prompt", flags->prompt, "Prompt text")->required();
  sub->add_option("-n,--n-predict", flags->n_predict, "Tokens to generate")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--temp", flags->sampling.temperature, "Temperature (0: greedy)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--top-k", flags->sampling.top_k, "Top-k (0: off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--top-p", flags->sampling.top_p, "Top-p (1: off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--min-p", flags->sampling.min_p, "Min-p (0: off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  sub->add_option("--repeat-penalty", flags->sampling.repeat_penalty,
                  "Repetition penalty over the last 64 tokens (1: off)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--seed", flags->sampling.seed, "Sampling seed")->capture_default_str();
  AddLocalModelFlags(sub, &flags->local);
  sub->add_flag("--chat", flags->chat, "Send the prompt as a user message through the model's chat format");
  commands.Add(sub, [flags]() { return RunGenerate(*flags); });
}

}  // namespace lr::cli
