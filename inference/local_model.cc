#include "inference/local_model.h"

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

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

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
  LR_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(options.path));
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
  // A compressed format stores rows minus the model's channel centers: one prefill of the calibration text.
  if (kv.centers == nullptr && (kv.k_format != "f16" || kv.v_format != "f16")) {
    LR_ASSIGN_OR_RETURN(kv.centers, ComputeKvCenters(*model, tokenizer));
  }
  LR_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(model->kv_shape(), kv));
  auto lm = std::unique_ptr<LocalModel>(
      new LocalModel(std::move(model), std::move(tokenizer), std::move(chat), options, std::move(cache)));
  lm->PublishStats();
  return lm;
}

KvStats LocalModel::kv_stats() const {
  std::lock_guard<std::mutex> lock(stats_mu_);
  return stats_;
}

void LocalModel::PublishStats() {
  const KvStats st = cache_.Stats();
  std::lock_guard<std::mutex> lock(stats_mu_);
  stats_ = st;
}

std::string LocalModel::Name() const {
  const std::string& name = model_->config().name;
  return name.empty() ? std::filesystem::path(options_.path).filename().string() : name;
}

Result<std::vector<Choice>> LocalModel::Generate(std::span<const int32_t> prompt, const SamplingParams& params, int n,
                                                 const StreamCallback& on_piece, GenerateStats* stats) {
  if (prompt.empty()) return InvalidArgument("empty prompt");
  if (n < 1) return InvalidArgument("n (number of choices) must be at least 1, got " + std::to_string(n));
  const int max_new = std::max(0, params.max_tokens);
  const int prompt_len = static_cast<int>(prompt.size());
  if (prompt_len + max_new > options_.n_ctx)
    return ResourceExhausted("prompt (" + std::to_string(prompt_len) + " tokens) + max_tokens (" +
                             std::to_string(max_new) + ") exceeds the context size " +
                             std::to_string(options_.n_ctx));
  GenerateStats local;
  GenerateStats& st = stats != nullptr ? *stats : local;
  st = GenerateStats{};
  st.prompt_tokens = prompt_len;
  std::lock_guard<std::mutex> lock(generate_mu_);
  std::vector<int> seqs;  // every sequence this request made, released whatever the outcome
  Result<std::vector<Choice>> choices = GenerateLocked(prompt, params, n, on_piece, st, seqs);
  for (int seq : seqs) cache_.Free(seq);
  PublishStats();
  return choices;
}

Result<std::vector<Choice>> LocalModel::GenerateLocked(std::span<const int32_t> prompt, const SamplingParams& params,
                                                       int n, const StreamCallback& on_piece, GenerateStats& st,
                                                       std::vector<int>& seqs) {
  const int max_new = std::max(0, params.max_tokens);
  const int prompt_len = static_cast<int>(prompt.size());
  auto start = std::chrono::steady_clock::now();
  // Cached pages cover a prefix of the prompt; the last token is always computed, for its logits.
  const int root = cache_.NewSequenceFromCache(prompt, prompt_len - 1);
  seqs.push_back(root);
  const int cached = cache_.Length(root);
  st.prompt_tokens_computed = prompt_len - cached;
  std::vector<float> logits;
  std::vector<BatchToken> batch;
  for (int begin = cached; begin < prompt_len; begin += options_.prefill_chunk) {
    const int end = std::min(prompt_len, begin + options_.prefill_chunk);
    batch.clear();
    for (int i = begin; i < end; ++i) batch.push_back({root, prompt[i], i == prompt_len - 1});
    LR_RETURN_IF_ERROR(model_->Forward(cache_, batch, &logits));
  }
  cache_.IndexPages(root, prompt);
  PublishStats();
  st.prefill_seconds = Seconds(start);
  start = std::chrono::steady_clock::now();

  const int n_vocab = model_->config().n_vocab;
  struct Live {
    int seq;
    Sampler sampler;
    StopMatcher stop;
    std::vector<int32_t> recent;  // prompt tail and generated tokens, for the repetition penalty
    std::vector<int32_t> tokens;  // the sequence's tokens: the prompt, then each generated token fed back
    int32_t next = -1;
    bool done = false;
  };
  std::vector<Live> live;
  std::vector<Choice> choices(static_cast<size_t>(n));
  const size_t tail = std::min(prompt.size(), static_cast<size_t>(Sampler::kPenaltyWindow));
  for (int c = 0; c < n; ++c) {
    SamplingParams p = params;
    p.seed = params.seed + static_cast<uint64_t>(c);
    const int seq = c == 0 ? root : cache_.Fork(root);
    if (c > 0) seqs.push_back(seq);
    live.push_back(Live{seq, Sampler(p), StopMatcher(params.stop),
                        std::vector<int32_t>(prompt.end() - tail, prompt.end()),
                        std::vector<int32_t>(prompt.begin(), prompt.end())});
  }
  // Tokens that end a turn: EOS and the chat formats' end markers. Other control tokens ([TOOL_CALLS], ...) are
  // part of the reply's text.
  std::vector<int32_t> end_of_turn = {tokenizer_.eos()};
  for (const char* marker : {"<|im_end|>", "<|endoftext|>", "</s>"})
    if (std::optional<int32_t> id = tokenizer_.FindSpecial(marker)) end_of_turn.push_back(*id);
  // Every choice samples its first token from the prompt's last logits.
  std::vector<float> first(logits.begin(), logits.begin() + n_vocab);
  bool cancelled = false;
  auto emit = [&](int c, const std::string& text) {
    choices[c].text += text;
    if (!text.empty() && on_piece && !on_piece(c, text)) cancelled = true;
  };
  // Samples choice c's next token from row `row` of logits; returns whether the choice goes on.
  auto advance = [&](int c, const float* row) {
    Live& l = live[c];
    const int32_t tok = l.sampler.Sample({row, static_cast<size_t>(n_vocab)}, l.recent);
    if (std::find(end_of_turn.begin(), end_of_turn.end(), tok) != end_of_turn.end()) {
      emit(c, l.stop.Flush());
      choices[c].finish_reason = "stop";
      return false;
    }
    ++choices[c].completion_tokens;
    l.recent.push_back(tok);
    if (l.recent.size() > static_cast<size_t>(Sampler::kPenaltyWindow)) l.recent.erase(l.recent.begin());
    emit(c, l.stop.Push(tokenizer_.TokenPiece(tok)));
    if (l.stop.stopped()) {
      choices[c].finish_reason = "stop";
      return false;
    }
    if (choices[c].completion_tokens >= max_new) {
      emit(c, l.stop.Flush());
      choices[c].finish_reason = "length";
      return false;
    }
    l.next = tok;
    return true;
  };
  for (int c = 0; c < n; ++c) {
    if (max_new == 0) {
      choices[c].finish_reason = "length";
      live[c].done = true;
      continue;
    }
    live[c].done = !advance(c, first.data());
  }
  std::vector<int> order;
  while (!cancelled) {
    batch.clear();
    order.clear();
    for (int c = 0; c < n; ++c) {
      if (live[c].done) continue;
      batch.push_back({live[c].seq, live[c].next, true});
      live[c].tokens.push_back(live[c].next);
      order.push_back(c);
    }
    if (batch.empty()) break;
    LR_RETURN_IF_ERROR(model_->Forward(cache_, batch, &logits));
    for (size_t i = 0; i < order.size() && !cancelled; ++i)
      live[order[i]].done = !advance(order[i], logits.data() + i * n_vocab);
  }
  if (cancelled) {
    for (int c = 0; c < n; ++c)
      if (!live[c].done) choices[c].finish_reason = "cancelled";
  }
  // A repair turn resends prompt + reply: index each choice's full pages too.
  for (const Live& l : live) cache_.IndexPages(l.seq, l.tokens);
  st.decode_seconds = Seconds(start);
  for (const Choice& c : choices) st.generated_tokens += c.completion_tokens;
  return choices;
}

Result<Completion> LocalModel::Complete(const CompletionRequest& request, const StreamCallback& on_piece) {
  LR_ASSIGN_OR_RETURN(std::string text, chat_.Render(request.messages, request.tools, request.continue_final_message));
  std::vector<int32_t> prompt;
  if (!chat_.renders_bos() && tokenizer_.add_bos() && tokenizer_.bos() >= 0) prompt.push_back(tokenizer_.bos());
  const std::vector<int32_t> ids = tokenizer_.Encode(text, /*parse_special=*/true);
  prompt.insert(prompt.end(), ids.begin(), ids.end());
  GenerateStats stats;
  Completion out;
  LR_ASSIGN_OR_RETURN(out.choices, Generate(prompt, request.sampling, request.n, on_piece, &stats));
  for (Choice& c : out.choices) {
    LR_ASSIGN_OR_RETURN(AssistantReply reply, chat_.ParseReply(c.text));
    c.text = std::move(reply.text);
    c.tool_calls = std::move(reply.tool_calls);
    if (!c.tool_calls.empty() && c.finish_reason == "stop") c.finish_reason = "tool_calls";
  }
  out.usage.prompt_tokens = stats.prompt_tokens;
  out.usage.prompt_tokens_computed = stats.prompt_tokens_computed;
  out.usage.completion_tokens = stats.generated_tokens;
  return out;
}

}  // namespace lr::inference
