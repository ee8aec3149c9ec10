#include "inference/local_model.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <limits>
#include <optional>

#include "inference/kv_calibration.h"
#include "inference/sampler.h"

namespace lr::inference {
namespace {

constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

}  // namespace

Result<std::string> FindDefaultModel() {
  namespace fs = std::filesystem;
  const fs::path here = fs::path("models") / kDefaultModelFile;
  std::error_code ec;
  if (fs::exists(here, ec)) return here.string();
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  fs::path beside;
  if (!ec) {
    beside = exe.parent_path() / ".." / "models" / kDefaultModelFile;
    if (fs::exists(beside, ec)) return beside.lexically_normal().string();
  }
  return NotFound(std::string("default model ") + kDefaultModelFile + " not found in ./models/ nor in " +
                  (beside.empty() ? std::string("the executable's ../models/") : beside.parent_path().string()) +
                  " (scripts/setup.sh downloads it; or pass -m MODEL)");
}

Result<std::unique_ptr<LocalModel>> LocalModel::Open(const LocalModelOptions& options) {
  if (options.n_ctx < 1 || options.prefill_chunk < 1)
    return InvalidArgument("context size and prefill chunk must be positive");
  if (options.kv_budget_mib < 1) return InvalidArgument("--kv-budget must be a positive number of MiB");
  auto cancelled = [&] { return options.cancel != nullptr && options.cancel->load(); };
  LR_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(options.path));
  if (cancelled()) return Cancelled("loading " + options.path + " cancelled");
  LR_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::FromGguf(model->gguf()));
  LR_ASSIGN_OR_RETURN(ChatFormat chat, ChatFormat::FromGguf(model->gguf()));
  // A one-page cache first: it checks --ctk/--ctv against the model and gives the bytes per token the pool size
  // comes from.
  KvCacheOptions kv = options.kv;
  kv.max_tokens = KvCache::kPageTokens;
  LR_ASSIGN_OR_RETURN(KvCache probe, KvCache::Create(model->kv_shape(), kv));
  const size_t budget = static_cast<size_t>(options.kv_budget_mib) << 20;
  const size_t tokens = budget / probe.bytes_per_token();
  if (tokens < static_cast<size_t>(options.n_ctx))
    return InvalidArgument("--kv-budget " + std::to_string(options.kv_budget_mib) + " MiB holds " +
                           std::to_string(tokens) + " tokens at " + std::to_string(probe.bytes_per_token()) +
                           " bytes per token, less than the context size " + std::to_string(options.n_ctx));
  kv.max_tokens = static_cast<int>(std::min<size_t>(tokens, std::numeric_limits<int>::max() / 2));
  std::error_code ec;
  const uintmax_t file_size = std::filesystem::file_size(options.path, ec);
  kv.identity = options.path + " " + std::to_string(ec ? 0 : file_size);
  // A compressed format stores rows relative to the model's channel centers and weights: stored, or one prefill of
  // the calibration text.
  if (kv.calibration == nullptr && (kv.k_format != "f16" || kv.v_format != "f16")) {
    LR_ASSIGN_OR_RETURN(kv.calibration,
                        CachedKvCalibration(*model, tokenizer, options.cache_dir, options.cancel, nullptr));
  }
  std::unique_ptr<ForwardPass> device;
  if (options.device) {
    LR_ASSIGN_OR_RETURN(device, options.device(*model));
    LR_RETURN_IF_ERROR(device->ConfigureCache(&kv));
  }
  LR_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(model->kv_shape(), kv));
  return std::unique_ptr<LocalModel>(new LocalModel(std::move(model), std::move(device), std::move(tokenizer),
                                                    std::move(chat), options, std::move(cache)));
}

// One Generate call. The caller fills the inputs and then only touches the shared part, under mu_; the engine owns
// the rest from admission until it sets `finished`.
struct LocalModel::Request {
  struct Live {
    int seq;
    Sampler sampler;
    StopMatcher stop;
    std::vector<int32_t> recent;  // prompt tail and generated tokens, for the repetition penalty
    std::vector<int32_t> tokens;  // the sequence's tokens: the prompt, then each generated token fed back
    int32_t next = -1;
    bool done = false;
  };

  // Inputs.
  std::vector<int32_t> prompt;
  SamplingParams params;
  int n = 1;
  bool streams = false;  // the caller has an on_piece: pieces go back to it (otherwise it is woken only at the end)
  int pages = 0;         // the most pages it may hold: reserved while it runs
  std::chrono::steady_clock::time_point arrived;

  // The engine's.
  int root = -1;
  int prefilled = 0;      // prompt positions in the cache
  bool decoding = false;  // prefill done, choices forked
  bool cancelled = false;
  bool failed = false;
  std::vector<int> seqs;  // every sequence it made, released at the end
  std::vector<Live> live;
  std::vector<Choice> choices;
  std::vector<std::pair<int, std::string>> outbox;  // pieces of the current step
  std::chrono::steady_clock::time_point admitted, prefill_done;

  // Shared, under mu_.
  std::vector<std::pair<int, std::string>> pieces;  // for the caller's on_piece, in order
  bool cancel = false;                              // the caller's on_piece returned false
  bool finished = false;                            // then status, choices and stats are the caller's
  Status status;
  GenerateStats stats;
  std::condition_variable cv;  // the caller waits on it

  bool Done() const {
    if (failed || cancelled) return true;
    if (!decoding) return false;
    return std::all_of(live.begin(), live.end(), [](const Live& l) { return l.done; });
  }
};

namespace {

double Seconds(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

// The most pages a request can hold: its prompt's, and for each choice the pages from the prompt's last partial one
// (copied on write) to prompt + max_tokens.
int PagesNeeded(int prompt_len, int max_new, int n) {
  const int t = KvCache::kPageTokens;
  const int prompt_pages = (prompt_len + t - 1) / t;
  const int choice_pages = (prompt_len + max_new + t - 1) / t - prompt_len / t;
  return prompt_pages + n * choice_pages;
}

}  // namespace

LocalModel::LocalModel(std::unique_ptr<Model> model, std::unique_ptr<ForwardPass> device, Tokenizer tokenizer,
                       ChatFormat chat, LocalModelOptions options, KvCache cache)
    : model_(std::move(model)),
      device_(std::move(device)),
      tokenizer_(std::move(tokenizer)),
      chat_(std::move(chat)),
      options_(std::move(options)),
      cache_(std::move(cache)) {
  end_of_turn_ = {tokenizer_.eos()};
  for (const char* marker : {"<|im_end|>", "<|endoftext|>", "</s>"})
    if (std::optional<int32_t> id = tokenizer_.FindSpecial(marker)) end_of_turn_.push_back(*id);
  if (options_.threads <= 0) options_.threads = omp_get_max_threads();
  PublishStats();
  engine_ = std::thread([this] { EngineLoop(); });
}

LocalModel::~LocalModel() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  engine_cv_.notify_one();
  engine_.join();
}

KvStats LocalModel::kv_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return kv_stats_;
}

EngineStats LocalModel::engine_stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return engine_stats_;
}

void LocalModel::PublishStats() {
  const KvStats st = cache_.Stats();
  std::lock_guard<std::mutex> lock(mu_);
  kv_stats_ = st;
}

std::string LocalModel::Name() const {
  const std::string& name = model_->config().name;
  return name.empty() ? std::filesystem::path(options_.path).filename().string() : name;
}

Result<std::vector<Choice>> LocalModel::Generate(std::span<const int32_t> prompt, const SamplingParams& params, int n,
                                                 const StreamCallback& on_piece, GenerateStats* stats,
                                                 const std::atomic<bool>* cancel) {
  if (prompt.empty()) return InvalidArgument("empty prompt");
  if (n < 1) return InvalidArgument("n (number of choices) must be at least 1, got " + std::to_string(n));
  const int n_vocab = model_->config().n_vocab;
  for (int32_t id : prompt)
    if (id < 0 || id >= n_vocab)
      return InvalidArgument("prompt token id " + std::to_string(id) + " is outside the vocabulary (" +
                             std::to_string(n_vocab) + " tokens)");
  const int max_new = std::max(0, params.max_tokens);
  const int prompt_len = static_cast<int>(prompt.size());
  if (prompt_len + max_new > options_.n_ctx)
    return ResourceExhausted("prompt (" + std::to_string(prompt_len) + " tokens) + max_tokens (" +
                             std::to_string(max_new) + ") exceeds the context size " + std::to_string(options_.n_ctx));
  auto r = std::make_shared<Request>();
  r->prompt.assign(prompt.begin(), prompt.end());
  r->params = params;
  r->n = n;
  r->streams = static_cast<bool>(on_piece);
  r->pages = PagesNeeded(prompt_len, max_new, n);
  r->arrived = std::chrono::steady_clock::now();
  r->cancel = cancel != nullptr && cancel->load();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Unavailable("the model is closing");
    queue_.push_back(r);
    engine_stats_.queued = static_cast<int>(queue_.size());
  }
  engine_cv_.notify_one();

  std::vector<std::pair<int, std::string>> pieces;
  bool cancelled = false;
  for (bool finished = false; !finished;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Woken by pieces and the end; every 50 ms also, to see the caller's cancel flag.
      while (!r->cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return r->finished || !r->pieces.empty(); }))
        if (cancel != nullptr && cancel->load()) r->cancel = true;
      pieces.swap(r->pieces);
      finished = r->finished;
    }
    for (const auto& [c, text] : pieces) {
      if (cancelled || !on_piece || on_piece(c, text)) continue;
      cancelled = true;
      std::lock_guard<std::mutex> lock(mu_);
      r->cancel = true;
    }
    pieces.clear();
  }
  if (stats != nullptr) *stats = r->stats;
  if (!r->status.ok()) return r->status;
  return std::move(r->choices);
}

void LocalModel::EngineLoop() {
  omp_set_num_threads(options_.threads);
  const int pool_pages = cache_.Stats().pages_total;
  std::vector<std::shared_ptr<Request>> running, admitted, ended;
  for (;;) {
    admitted.clear();
    {
      std::unique_lock<std::mutex> lock(mu_);
      engine_cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || !running.empty(); });
      if (stopping_) {
        for (const auto& r : queue_) running.push_back(r);
        queue_.clear();
        for (const auto& r : running) {
          r->status = Unavailable("the model was closed before the request finished");
          r->finished = true;
          r->cv.notify_one();
        }
        return;
      }
      // First come, first served: the head waits for pages, and so does everyone behind it.
      while (!queue_.empty()) {
        const std::shared_ptr<Request>& r = queue_.front();
        if (!running.empty() && reserved_pages_ + r->pages > pool_pages) break;
        reserved_pages_ += r->pages;
        running.push_back(r);
        admitted.push_back(r);
        queue_.pop_front();
      }
      for (const auto& r : running) r->cancelled = r->cancel;
      engine_stats_.queued = static_cast<int>(queue_.size());
      engine_stats_.running = static_cast<int>(running.size());
    }
    for (const auto& r : admitted) Admit(*r);
    if (!admitted.empty()) PublishStats();

    Step(running);

    ended.clear();
    for (const auto& r : running)
      if (r->Done()) ended.push_back(r);
    for (const auto& r : ended) Release(*r);
    if (!ended.empty()) PublishStats();
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& r : running) {
      const bool end = r->Done();
      if (r->outbox.empty() && !end) continue;
      r->pieces.insert(r->pieces.end(), std::make_move_iterator(r->outbox.begin()),
                       std::make_move_iterator(r->outbox.end()));
      r->outbox.clear();
      if (end) {
        reserved_pages_ -= r->pages;
        r->finished = true;
      }
      r->cv.notify_one();
    }
    std::erase_if(running, [](const std::shared_ptr<Request>& r) { return r->finished; });
    engine_stats_.running = static_cast<int>(running.size());
  }
}

// Starts a request's sequence from the prefix cache; its prefill then runs in Step.
void LocalModel::Admit(Request& r) {
  r.admitted = std::chrono::steady_clock::now();
  r.stats.queued_seconds = Seconds(r.arrived, r.admitted);
  r.stats.prompt_tokens = static_cast<int>(r.prompt.size());
  r.choices.resize(static_cast<size_t>(r.n));
  // Cached pages cover a prefix of the prompt; the last token is always computed, for its logits, and so are the
  // last window_tokens before it, whose f16 window rows cached pages do not have.
  const KvCacheOptions& kv = cache_.options();
  const int window = kv.k_format != "f16" || kv.v_format != "f16" ? kv.window_tokens : 0;
  r.root = cache_.NewSequenceFromCache(r.prompt, std::max(0, static_cast<int>(r.prompt.size()) - 1 - window));
  r.seqs.push_back(r.root);
  r.prefilled = cache_.Length(r.root);
  r.stats.prompt_tokens_computed = static_cast<int>(r.prompt.size()) - r.prefilled;
}

// One Forward over the running requests: a token of every live choice, and prompt tokens of requests still
// prefilling, at most prefill_chunk of them, oldest request first.
void LocalModel::Step(const std::vector<std::shared_ptr<Request>>& running) {
  struct Row {
    Request* r;
    int choice;  // -1: the prompt's last token
  };
  std::vector<BatchToken> batch;
  std::vector<Row> rows;
  std::vector<Request*> in_step;
  int prefill_budget = options_.prefill_chunk;
  for (const auto& rp : running) {
    Request& r = *rp;
    if (r.Done()) continue;
    const size_t before = batch.size();
    if (!r.decoding) {
      const int prompt_len = static_cast<int>(r.prompt.size());
      const int end = std::min(prompt_len, r.prefilled + prefill_budget);
      for (int i = r.prefilled; i < end; ++i) {
        const bool last = i == prompt_len - 1;
        batch.push_back({r.root, r.prompt[i], last});
        if (last) rows.push_back({&r, -1});
      }
      prefill_budget -= end - r.prefilled;
      r.prefilled = end;
    } else {
      for (int c = 0; c < r.n; ++c) {
        Request::Live& l = r.live[c];
        if (l.done) continue;
        batch.push_back({l.seq, l.next, true});
        l.tokens.push_back(l.next);
        rows.push_back({&r, c});
      }
    }
    if (batch.size() > before) in_step.push_back(&r);
  }
  if (batch.empty()) return;
  std::vector<float> logits;
  const Status s = forward_pass().Forward(cache_, batch, &logits);
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++engine_stats_.steps;
    if (in_step.size() > 1) ++engine_stats_.batched_steps;
    engine_stats_.peak_requests = std::max(engine_stats_.peak_requests, static_cast<int>(in_step.size()));
    int sequences = 0;
    for (size_t i = 0; i < batch.size(); ++i) sequences += i == 0 || batch[i].seq != batch[i - 1].seq;
    engine_stats_.peak_sequences = std::max(engine_stats_.peak_sequences, sequences);
  }
  if (!s.ok()) {
    for (Request* r : in_step) {
      r->failed = true;
      r->status = s;
    }
    return;
  }
  const int n_vocab = model_->config().n_vocab;
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* row = logits.data() + i * n_vocab;
    Request& r = *rows[i].r;
    if (rows[i].choice < 0) {
      StartChoices(r, row);
    } else {
      r.live[rows[i].choice].done = !Advance(r, rows[i].choice, row);
    }
  }
}

// The prompt is in the cache: index its pages, fork the choices, and sample each one's first token from the
// prompt's last logits.
void LocalModel::StartChoices(Request& r, const float* logits) {
  cache_.IndexPages(r.root, r.prompt);
  r.prefill_done = std::chrono::steady_clock::now();
  r.stats.prefill_seconds = Seconds(r.admitted, r.prefill_done);
  const size_t tail = std::min(r.prompt.size(), static_cast<size_t>(Sampler::kPenaltyWindow));
  for (int c = 0; c < r.n; ++c) {
    SamplingParams p = r.params;
    p.seed = r.params.seed + static_cast<uint64_t>(c);
    const int seq = c == 0 ? r.root : cache_.Fork(r.root);
    if (c > 0) r.seqs.push_back(seq);
    r.live.push_back(Request::Live{seq, Sampler(p), StopMatcher(r.params.stop),
                                   std::vector<int32_t>(r.prompt.end() - tail, r.prompt.end()), r.prompt});
  }
  r.decoding = true;
  for (int c = 0; c < r.n; ++c) {
    if (r.params.max_tokens <= 0) {
      r.choices[c].finish_reason = "length";
      r.live[c].done = true;
      continue;
    }
    r.live[c].done = !Advance(r, c, logits);
  }
}

// Samples choice c's next token from its logits and emits its text; returns whether the choice goes on.
bool LocalModel::Advance(Request& r, int c, const float* logits) {
  Request::Live& l = r.live[c];
  Choice& choice = r.choices[c];
  auto emit = [&](std::string text) {
    if (text.empty()) return;
    choice.text += text;
    if (r.streams) r.outbox.emplace_back(c, std::move(text));
  };
  const int n_vocab = model_->config().n_vocab;
  const int32_t tok = l.sampler.Sample({logits, static_cast<size_t>(n_vocab)}, l.recent);
  if (std::find(end_of_turn_.begin(), end_of_turn_.end(), tok) != end_of_turn_.end()) {
    emit(l.stop.Flush());
    choice.finish_reason = "stop";
    return false;
  }
  ++choice.completion_tokens;
  l.recent.push_back(tok);
  if (l.recent.size() > static_cast<size_t>(Sampler::kPenaltyWindow)) l.recent.erase(l.recent.begin());
  emit(l.stop.Push(tokenizer_.TokenPiece(tok)));
  if (l.stop.stopped()) {
    choice.finish_reason = "stop";
    return false;
  }
  if (choice.completion_tokens >= r.params.max_tokens) {
    emit(l.stop.Flush());
    choice.finish_reason = "length";
    return false;
  }
  l.next = tok;
  return true;
}

// A request ended: index each choice's full pages (a repair turn resends prompt + reply) and release its sequences.
void LocalModel::Release(Request& r) {
  if (r.cancelled)
    for (size_t c = 0; c < r.choices.size(); ++c)
      if (!r.decoding || !r.live[c].done) r.choices[c].finish_reason = "cancelled";
  if (!r.failed)
    for (const Request::Live& l : r.live) cache_.IndexPages(l.seq, l.tokens);
  for (int seq : r.seqs) cache_.Free(seq);
  r.seqs.clear();
  if (r.decoding) r.stats.decode_seconds = Seconds(r.prefill_done, std::chrono::steady_clock::now());
  for (const Choice& c : r.choices) r.stats.generated_tokens += c.completion_tokens;
}

Result<Completion> LocalModel::Complete(const CompletionRequest& request, const StreamCallback& on_piece) {
  return Complete(request, on_piece, nullptr);
}

Result<Completion> LocalModel::Complete(const CompletionRequest& request, const StreamCallback& on_piece,
                                        GenerateStats* stats_out) {
  LR_ASSIGN_OR_RETURN(std::string text, chat_.Render(request.messages, request.tools, request.continue_final_message));
  std::vector<int32_t> prompt;
  if (!chat_.renders_bos() && tokenizer_.add_bos() && tokenizer_.bos() >= 0) prompt.push_back(tokenizer_.bos());
  const std::vector<int32_t> ids = tokenizer_.Encode(text, /*parse_special=*/true);
  prompt.insert(prompt.end(), ids.begin(), ids.end());
  GenerateStats stats;
  Completion out;
  LR_ASSIGN_OR_RETURN(out.choices, Generate(prompt, request.sampling, request.n, on_piece, &stats, request.cancel));
  for (Choice& c : out.choices) {
    LR_ASSIGN_OR_RETURN(AssistantReply reply, chat_.ParseReply(c.text));
    c.text = std::move(reply.text);
    c.tool_calls = std::move(reply.tool_calls);
    if (!c.tool_calls.empty() && c.finish_reason == "stop") c.finish_reason = "tool_calls";
  }
  out.usage.prompt_tokens = stats.prompt_tokens;
  out.usage.prompt_tokens_computed = stats.prompt_tokens_computed;
  out.usage.completion_tokens = stats.generated_tokens;
  if (stats_out != nullptr) *stats_out = stats;
  return out;
}

}  // namespace lr::inference
