// The in-process model: a GGUF Model, its Tokenizer and a KV cache configuration behind the LanguageModel interface.
//
// Generate() is the core: the prompt is prefilled once (in chunks of prefill_chunk tokens, each a matrix-matrix
// pass), then each of the n choices is a fork of the prompt's sequence (pages shared, nothing copied) and all live
// choices advance together, one batched decode step per token.
//
// One KV cache lives as long as the model, its pool sized by kv_budget_mib. Across requests it is a prefix cache
// (inference/prefix_index.h): a request starts from the longest run of cached full pages matching its prompt and
// prefills only the rest (at least the prompt's last token, whose logits it needs, and with window rows the
// window's tokens before it, whose window rows are not cached); the prompt's full pages, and
// each finished choice's (prompt + reply, which a repair turn resends), are then indexed. Sequences are released at
// the end of each request; their indexed pages stay cached until the pool needs room (least recently used first).
//
// Requests run concurrently (continuous batching). Generate() hands its request to the model's engine thread, which
// alone touches the model and the cache: each engine step is one Forward over one token of every live choice of
// every running request, plus up to prefill_chunk prompt tokens of requests still prefilling, so that a new request
// joins the running ones at once and the choices of several clients advance together. A request is admitted when
// the pages it may need at most (its prompt, plus max_tokens for each choice) fit in the pool beside the pages
// reserved by running requests; otherwise it waits, first come first served. A request is always admitted when
// nothing else runs (and then fails with kResourceExhausted only if the whole pool is too small for it). The
// caller's thread waits and runs its own on_piece, so the engine never runs callers' code and a slow stream slows
// no one else. Each choice has its own Sampler, seeded with params.seed + its index, and a choice's tokens do not
// depend on what else shares its steps: runs are reproducible.
//
// A choice ends at the end-of-sequence token or an end-of-turn token ("<|im_end|>", "</s>"), at a stop string
// ("stop"), after max_tokens ("length"), or when the stream callback returns false ("cancelled", for every choice
// not yet ended; the engine sees the cancellation at its next step).
// Complete() renders the conversation with the model's chat format (inference/chat_format.h), generates, and parses
// each choice's reply (tool calls for formats that have them).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"
#include "inference/chat_format.h"
#include "inference/kv_cache.h"
#include "inference/model.h"
#include "inference/tokenizer.h"
#include "lm/language_model.h"

namespace lr::inference {

struct LocalModelOptions {
  std::string path;   // GGUF file
  KvCacheOptions kv;  // formats and seed; max_tokens and identity are set by Open from kv_budget_mib and the file
  int n_ctx = 4096;   // the longest sequence (prompt + completion) a request may build
  int prefill_chunk = 256;
  // The KV pool (`--kv-budget`, MiB): every sequence's pages and the cached prefix pages. At least one context's
  // worth (n_ctx tokens) is required. A request whose prompt and choices need more than the pages in use leave free
  // fails with kResourceExhausted.
  int kv_budget_mib = 1024;
  // OpenMP threads of the engine's Forward calls; 0: omp_get_max_threads() of the thread that calls Open.
  int threads = 0;
  // Where the KV calibration of compressed formats is stored and found (kv_calibration.h, CachedKvCalibration);
  // empty: computed at every Open, not stored.
  std::string cache_dir;
  // Set while Open runs: Open returns kCancelled soon after (the calibration prefill checks it between chunks).
  const std::atomic<bool>* cancel = nullptr;
  // Runs the forward pass elsewhere (a GPU: cuda/CudaModel), made from the loaded model; null: on the CPU. The KV
  // cache then takes its page storage from the pass (ForwardPass::ConfigureCache).
  std::function<Result<std::unique_ptr<ForwardPass>>(const Model&)> device;
};

// The default model, models/SmolLM2-135M-Instruct.Q4_1.gguf: relative to the current directory, then to the running
// executable's ../models. kNotFound naming both places when neither has it.
Result<std::string> FindDefaultModel();

// Counters of one Generate call, for the CLI's report.
struct GenerateStats {
  int prompt_tokens = 0;
  int prompt_tokens_computed = 0;  // prefilled; the rest came from the prefix cache
  int generated_tokens = 0;        // over all choices
  double prefill_seconds = 0;
  double decode_seconds = 0;
  double queued_seconds = 0;  // waiting for admission (for KV pages other requests reserved)
};

// The engine's counters since Open, for reports and tests.
struct EngineStats {
  long steps = 0;          // Forward calls
  long batched_steps = 0;  // of those, steps that carried tokens of two or more requests
  int peak_requests = 0;   // most requests in one step
  int peak_sequences = 0;  // most sequences in one step
  int running = 0;         // requests admitted and not finished, now
  int queued = 0;          // requests waiting for admission, now
};

class LocalModel : public LanguageModel {
 public:
  // Loads the model and its tokenizer; checks the KV formats against the model's head sizes; for compressed formats
  // loads the stored KV calibration or computes (and stores) it.
  static Result<std::unique_ptr<LocalModel>> Open(const LocalModelOptions& options);
  // Fails the requests still queued or running with kUnavailable and joins the engine.
  ~LocalModel() override;

  // The model itself, for callers that run Forward on a KvCache of their own (perplexity); not while requests run,
  // as Forward must not run concurrently with the engine's.
  Model& model() { return *model_; }
  // What runs the forward steps: the model itself, or the device pass of LocalModelOptions::device. Same rule.
  ForwardPass& forward_pass() { return device_ != nullptr ? *device_ : *model_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  // The cache's options as opened: formats, pool size, and the calibration computed for compressed formats.
  const KvCacheOptions& kv_options() const { return cache_.options(); }

  // n continuations of `prompt` (token ids, BOS included if the model wants one). on_piece streams each choice's
  // text as it becomes safe to show (may be empty). kResourceExhausted when prompt + max_tokens exceeds n_ctx;
  // kInvalidArgument for an empty prompt, a token outside the vocabulary or n < 1. Safe to call from many threads.
  // `cancel` (may be null), once set, ends the request at the engine's next step (a prefill chunk or a decode step)
  // as if on_piece had returned false.
  Result<std::vector<Choice>> Generate(std::span<const int32_t> prompt, const SamplingParams& params, int n,
                                       const StreamCallback& on_piece, GenerateStats* stats,
                                       const std::atomic<bool>* cancel = nullptr);

  // The KV cache's accounting as of the engine's last admission or finished request; safe to call from any thread.
  KvStats kv_stats() const;
  EngineStats engine_stats() const;

  std::string Name() const override;
  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece) override;
  // The same, with the request's counters and timings.
  Result<Completion> Complete(const CompletionRequest& request, const StreamCallback& on_piece, GenerateStats* stats);

 private:
  struct Request;  // one Generate call (local_model.cc)

  LocalModel(std::unique_ptr<Model> model, std::unique_ptr<ForwardPass> device, Tokenizer tokenizer, ChatFormat chat,
             LocalModelOptions options, KvCache cache);

  // The engine thread's loop and its parts (which run on it and use the cache without a lock).
  void EngineLoop();
  void Admit(Request& r);
  void Step(const std::vector<std::shared_ptr<Request>>& running);
  void StartChoices(Request& r, const float* logits);
  bool Advance(Request& r, int c, const float* logits);
  void Release(Request& r);
  void PublishStats();

  std::unique_ptr<Model> model_;
  std::unique_ptr<ForwardPass> device_;  // null: model_ runs the steps
  Tokenizer tokenizer_;
  ChatFormat chat_;
  LocalModelOptions options_;
  std::vector<int32_t> end_of_turn_;  // EOS and the chat formats' end markers
  KvCache cache_;                     // the engine's alone

  mutable std::mutex mu_;  // guards what follows and each Request's shared part
  std::condition_variable engine_cv_;
  std::deque<std::shared_ptr<Request>> queue_;  // waiting for admission, in arrival order
  int reserved_pages_ = 0;                      // by running requests
  bool stopping_ = false;
  KvStats kv_stats_;  // cache_.Stats() as the engine last published it
  EngineStats engine_stats_;
  std::thread engine_;
};

}  // namespace lr::inference
