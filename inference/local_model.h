// The in-process model: a GGUF Model, its Tokenizer and a KV cache configuration behind the LanguageModel interface.
//
// Generate() is the core: the prompt is prefilled once (in chunks of prefill_chunk tokens, each a matrix-matrix
// pass), then each of the n choices is a fork of the prompt's sequence (pages shared, nothing copied) and all live
// choices advance together, one batched decode step per token.
//
// One KV cache lives as long as the model, its pool sized by kv_budget_mib. Across requests it is a prefix cache
// (inference/prefix_index.h): a request starts from the longest run of cached full pages matching its prompt and
// prefills only the rest (at least the prompt's last token, whose logits it needs); the prompt's full pages, and
// each finished choice's (prompt + reply, which a repair turn resends), are then indexed. Sequences are released at
// the end of each request; their indexed pages stay cached until the pool needs room (least recently used first).
// Requests run one at a time (Generate holds a lock). Each choice has its own Sampler, seeded with
// params.seed + its index, so choices differ and a run is reproducible.
//
// A choice ends at the end-of-sequence token or an end-of-turn token ("<|im_end|>", "</s>"), at a stop string
// ("stop"), after max_tokens ("length"), or when the stream callback returns false ("cancelled", for every choice).
// Complete() renders the conversation with the model's chat format (inference/chat_format.h), generates, and parses
// each choice's reply (tool calls for formats that have them).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "inference/chat_format.h"
#include "inference/kv_cache.h"
#include "inference/language_model.h"
#include "inference/model.h"
#include "inference/tokenizer.h"

namespace lr::inference {

struct LocalModelOptions {
  std::string path;    // GGUF file
  KvCacheOptions kv;   // formats and seed; max_tokens and identity are set by Open from kv_budget_mib and the file
  int n_ctx = 4096;    // the longest sequence (prompt + completion) a request may build
  int prefill_chunk = 256;
  // The KV pool (`--kv-budget`, MiB): every sequence's pages and the cached prefix pages. At least one context's
  // worth (n_ctx tokens) is required. A request whose prompt and choices need more than the pages in use leave free
  // fails with kResourceExhausted.
  int kv_budget_mib = 1024;
};

// The default model, models/SmolLM2-135M-Instruct.Q4_1.gguf: relative to the current directory, then to the running
// executable's ../models. kNotFound naming both places when neither has it.
Result<std::string> FindDefaultModel();

// Counters of one Generate call, for the CLI's report.
struct GenerateStats {
  int prompt_tokens = 0;
  int prompt_tokens_computed = 0;  // prefilled; the rest came from the prefix cache
  int generated_tokens = 0;  // over all choices
  double prefill_seconds = 0;
  double decode_seconds = 0;
};

class LocalModel : public LanguageModel {
 public:
  // Loads the model and its tokenizer; checks the KV formats against the model's head sizes.
  static Result<std::unique_ptr<LocalModel>> Open(const LocalModelOptions& options);

  Model& model() { return *model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The cache's options as opened: formats, pool size, and the centers computed for compressed formats.
  const KvCacheOptions& kv_options() const { return cache_.options(); }

  // n continuations of `prompt` (token ids, BOS included if the model wants one). on_piece streams each choice's
  // text as it becomes safe to show (may be empty). kResourceExhausted when prompt + max_tokens exceeds n_ctx;
  // kInvalidArgument for an empty prompt or n < 1.
  Result<std::vector<Choice>> Generate(std::span<const int32_t> prompt, const SamplingParams& params, int n,
                                       const StreamCallback& on_piece, GenerateStats* stats);

  // The KV cache's accounting after the last request (or its prefill); safe to call from any thread.
  KvStats kv_stats() const;

  std::string Name() const override;
  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece) override;

 private:
  LocalModel(std::unique_ptr<Model> model, Tokenizer tokenizer, ChatFormat chat, LocalModelOptions options,
             KvCache cache)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)), chat_(std::move(chat)), options_(std::move(options)),
        cache_(std::move(cache)) {}

  Result<std::vector<Choice>> GenerateLocked(std::span<const int32_t> prompt, const SamplingParams& params, int n,
                                             const StreamCallback& on_piece, GenerateStats& st,
                                             std::vector<int>& seqs);
  void PublishStats();

  std::unique_ptr<Model> model_;
  Tokenizer tokenizer_;
  ChatFormat chat_;
  LocalModelOptions options_;
  std::mutex generate_mu_;  // one request at a time: it owns cache_
  KvCache cache_;
  mutable std::mutex stats_mu_;
  KvStats stats_;  // cache_.Stats() as of the last PublishStats
};

}  // namespace lr::inference
