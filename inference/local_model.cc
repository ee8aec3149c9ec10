#include "inference/local_model.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>

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
  LR_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(options.path));
  LR_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::FromGguf(model->gguf()));
  LR_ASSIGN_OR_RETURN(ChatFormat chat, ChatFormat::FromGguf(model->gguf()));
  // Build one cache now so that a bad --ctk/--ctv fails at open, not at the first request.
  LR_RETURN_IF_ERROR(KvCache::Create(model->kv_shape(), options.kv).status());
  if (options.n_ctx < 1 || options.prefill_chunk < 1)
    return InvalidArgument("context size and prefill chunk must be positive");
  return std::unique_ptr<LocalModel>(
      new LocalModel(std::move(model), std::move(tokenizer), std::move(chat), options));
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
  KvCacheOptions kv = options_.kv;
  // The prompt's pages once, plus each choice's own pages (its first one may be a copy of the prompt's last).
  kv.max_tokens = prompt_len + n * (max_new + KvCache::kPageTokens);
  LR_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(model_->kv_shape(), kv));

  GenerateStats local;
  GenerateStats& st = stats != nullptr ? *stats : local;
  st = GenerateStats{};
  st.prompt_tokens = prompt_len;

  auto start = std::chrono::steady_clock::now();
  const int root = cache.NewSequence();
  std::vector<float> logits;
  std::vector<BatchToken> batch;
  for (int begin = 0; begin < prompt_len; begin += options_.prefill_chunk) {
    const int end = std::min(prompt_len, begin + options_.prefill_chunk);
    batch.clear();
    for (int i = begin; i < end; ++i) batch.push_back({root, prompt[i], i == prompt_len - 1});
    LR_RETURN_IF_ERROR(model_->Forward(cache, batch, &logits));
  }
  st.prefill_seconds = Seconds(start);
  start = std::chrono::steady_clock::now();

  const int n_vocab = model_->config().n_vocab;
  struct Live {
    int seq;
    Sampler sampler;
    StopMatcher stop;
    std::vector<int32_t> recent;  // prompt tail and generated tokens, for the repetition penalty
    int32_t next = -1;
    bool done = false;
  };
  std::vector<Live> live;
  std::vector<Choice> choices(static_cast<size_t>(n));
  const size_t tail = std::min(prompt.size(), static_cast<size_t>(Sampler::kPenaltyWindow));
  for (int c = 0; c < n; ++c) {
    SamplingParams p = params;
    p.seed = params.seed + static_cast<uint64_t>(c);
    live.push_back(Live{c == 0 ? root : cache.Fork(root), Sampler(p), StopMatcher(params.stop),
                        std::vector<int32_t>(prompt.end() - tail, prompt.end())});
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
      order.push_back(c);
    }
    if (batch.empty()) break;
    LR_RETURN_IF_ERROR(model_->Forward(cache, batch, &logits));
    for (size_t i = 0; i < order.size() && !cancelled; ++i)
      live[order[i]].done = !advance(order[i], logits.data() + i * n_vocab);
  }
  if (cancelled) {
    for (int c = 0; c < n; ++c)
      if (!live[c].done) choices[c].finish_reason = "cancelled";
  }
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
  out.usage.prompt_tokens_computed = stats.prompt_tokens;
  out.usage.completion_tokens = stats.generated_tokens;
  return out;
}

}  // namespace lr::inference
