// `leanrotor bench`: prompt and generation speed at a context depth, against the machine's memory-bandwidth bound.
//
// Decoding one token reads every weight once plus the KV rows of the context, so tokens/s cannot exceed
// read bandwidth / bytes per token. The bandwidth is measured here (a streaming read of a buffer much larger than the
// caches, with the same thread count) and the report says which fraction of that bound generation reaches.
//
// With --busy-neighbour, generation is timed twice: as above, then again while a child process spins on one of the
// CPUs this process may run on (a build or another job sharing the machine), so that the report shows what the
// OpenMP wait policy costs when a core is taken.
//
// With --pass-k K, the bench measures prefix sharing instead: K attempts at one prompt of P real tokens (the text of
// /usr/share/common-licenses/GPL-3, repeated as needed), G tokens each (end of sequence ignored; attempt c begins with
// the c-th best token after the prompt, then continues greedily), run "shared" (prefill once, K forks of it, all K
// decoded in one batched step per token) and "naive" (each attempt prefills the prompt again and decodes alone). It
// reports wall time, prompt tokens computed and the peak KV pool bytes of each, and for the shared mode's decode: the
// step time (one batched step of all K), the KV bytes attention reads per step (positions attended times the cache's
// bytes per position; a runner that reads shared pages once, Model::PlanSharedPrefix, counts them once) beside what
// per-sequence attention reads, the KV bytes held with all K attempts live, and how many attempts of that prompt and
// length fit in a --kv-budget pool, shared and naive; for MoE models the distinct experts a step reads per layer.
#include <omp.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/device.h"
#include "inference/kv_calibration.h"
#include "inference/local_model.h"

namespace lr::cli {
namespace {

struct BenchFlags {
  std::string model;
  int n_prompt = 512;
  int n_gen = 128;
  int depth = 0;
  int threads = 0;
  std::string ctk = "f16";
  std::string ctv = "f16";
  int kv_sinks = 0;
  int kv_window = 0;
  std::string kv_window_format = "f16";
  bool json = false;
  bool busy_neighbour = false;
  int pass_k = 0;  // > 0: the prefix-sharing bench
  int prompt_tokens = 2048;
  int gen_tokens = 256;
  int kv_budget_mib = 1024;  // --pass-k: the pool that the attempts-that-fit counts are for
  std::string device = "auto";
  std::string load_format = "auto";  // "dummy": random weights on the device (cli/device.h)
};

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Bytes per second of reading a 512 MiB buffer with the current OpenMP thread count: the best of 5 passes.
double MeasureReadBandwidth() {
  const size_t n = (size_t{512} << 20) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n);
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; ++i) buf[i] = i;  // touch every page, from the threads that will read it
  double best = 0;
  uint64_t sink = 0;
  for (int pass = 0; pass < 5; ++pass) {
    const double t0 = Now();
    uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (size_t i = 0; i < n; i += 8) {
      total +=
          (buf[i] ^ buf[i + 1]) + (buf[i + 2] ^ buf[i + 3]) + (buf[i + 4] ^ buf[i + 5]) + (buf[i + 6] ^ buf[i + 7]);
    }
    const double dt = Now() - t0;
    sink += total;
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / dt);
  }
  if (sink == 42) std::fprintf(stderr, " ");  // keeps the reads
  return best;
}

// A child process that spins on the last CPU of this process's affinity mask until the object dies (or this process
// does: PR_SET_PDEATHSIG).
class BusyNeighbour {
 public:
  BusyNeighbour() {
    cpu_set_t set;
    CPU_ZERO(&set);
    int cpu = -1;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      for (int c = 0; c < CPU_SETSIZE; ++c)
        if (CPU_ISSET(c, &set)) cpu = c;
    }
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (cpu >= 0) {
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        sched_setaffinity(0, sizeof(set), &set);
      }
      volatile uint64_t spin = 0;
      for (;;) spin = spin + 1;
    }
  }
  ~BusyNeighbour() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  bool ok() const { return pid_ > 0; }

 private:
  pid_t pid_;
};

// Runs `tokens` through sequence `seq` in chunks of 512; *logits: the last token's.
Status Feed(inference::ForwardPass& model, inference::KvCache& cache, int seq, const std::vector<int32_t>& tokens,
            std::vector<float>* logits) {
  std::vector<inference::BatchToken> batch;
  for (size_t begin = 0; begin < tokens.size(); begin += 512) {
    const size_t end = std::min(tokens.size(), begin + 512);
    batch.clear();
    for (size_t i = begin; i < end; ++i) batch.push_back({seq, tokens[i], i + 1 == tokens.size()});
    LR_RETURN_IF_ERROR(model.Forward(cache, batch, logits));
  }
  return Status::Ok();
}

int Fail(const Status& s) {
  std::fprintf(stderr, "leanrotor bench: %s\n", s.ToString().c_str());
  return s.code() == StatusCode::kNotFound ? 2 : 1;
}

// One mode of the pass-k bench: its wall time, prompt tokens run through the model, peak KV pool bytes, and the
// tokens of each attempt.
struct PassKRun {
  double wall_s = 0;
  double decode_s = 0;  // of wall_s, the decode steps after each prefill
  long prefill_tokens = 0;
  size_t kv_bytes = 0;
  double experts = 0;  // distinct routed experts per MoE layer in the last decode step (0: none counted)
  std::vector<std::vector<int32_t>> attempts;
  // The shared mode's decode steps: KV bytes read per step (averaged), as run and without sharing.
  double kv_read_bytes = 0, kv_read_bytes_unshared = 0;
  // KV bytes in use with every attempt live at its end (shared: all K; naive: one), and of those the prompt pages
  // all attempts share (shared mode).
  size_t kv_held_bytes = 0, kv_prompt_bytes = 0;
};

// "K hx3, V hx3", and the f16 sink rows and the window rows when there are any.
std::string KvLabel(const BenchFlags& f) {
  std::string label = "K " + f.ctk + ", V " + f.ctv;
  if (f.kv_sinks > 0) label += ", " + std::to_string(f.kv_sinks) + " f16 sinks";
  if (f.kv_window > 0) label += ", " + f.kv_window_format + " window " + std::to_string(f.kv_window);
  return label;
}

// The k best token ids of a logits row, best first (ties: the smaller id): the pass-k attempts' first tokens, so that
// the attempts differ from their first token on, as sampled attempts would (greedy attempts from one prompt would be
// one sequence k times, which for a mixture of experts also means the same experts every step).
std::vector<int32_t> TopTokens(const float* row, int n, int k) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) ids[i] = i;
  const int m = std::min(k, n);
  std::partial_sort(ids.begin(), ids.begin() + m, ids.end(),
                    [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
  ids.resize(static_cast<size_t>(m));
  while (static_cast<int>(ids.size()) < k) ids.push_back(ids[ids.size() % m]);
  return ids;
}

// The calibration the runner stores compressed rows with (inference/kv_calibration.h; stored in the default cache
// directory once computed); none for an f16 cache, nor for a dummy preset (model null: random weights, nothing to
// measure).
Result<std::shared_ptr<const inference::KvCalibration>> BenchCalibration(inference::Model* model, const BenchFlags& f) {
  if ((f.ctk == "f16" && f.ctv == "f16") || model == nullptr) return std::shared_ptr<const inference::KvCalibration>();
  LR_ASSIGN_OR_RETURN(inference::Tokenizer tok, inference::Tokenizer::FromGguf(model->gguf()));
  return inference::CachedKvCalibration(*model, tok, inference::DefaultCacheDir(), nullptr, nullptr);
}

// The KV cache the flags ask for, for max_tokens positions, stored as the runner stores it.
Result<inference::KvCache> BenchCache(inference::ForwardPass& model, const BenchFlags& f,
                                      std::shared_ptr<const inference::KvCalibration> calibration, int max_tokens) {
  inference::KvCacheOptions o;
  o.k_format = f.ctk;
  o.v_format = f.ctv;
  o.sink_tokens = f.kv_sinks;
  o.window_tokens = f.kv_window;
  o.window_format = f.kv_window_format;
  o.max_tokens = max_tokens;
  o.calibration = std::move(calibration);
  LR_RETURN_IF_ERROR(model.ConfigureCache(&o));
  return inference::KvCache::Create(model.kv_shape(), o);
}

// Prefill once, fork K times (no copy), decode the K attempts together, one batched Forward per token.
Result<PassKRun> PassKShared(inference::ForwardPass& model, const BenchFlags& f, const std::vector<int32_t>& prompt,
                             std::shared_ptr<const inference::KvCalibration> calibration) {
  const int n_vocab = model.config().n_vocab;
  // The prompt's pages once, plus each attempt's own pages (its first one may be a copy of the prompt's last).
  LR_ASSIGN_OR_RETURN(inference::KvCache cache,
                      BenchCache(model, f, std::move(calibration),
                                 f.prompt_tokens + f.pass_k * (f.gen_tokens + inference::KvCache::kPageTokens)));
  PassKRun run;
  run.attempts.resize(static_cast<size_t>(f.pass_k));
  const double t0 = Now();
  std::vector<float> logits;
  const int root = cache.NewSequence();
  LR_RETURN_IF_ERROR(Feed(model, cache, root, prompt, &logits));
  run.prefill_tokens = static_cast<long>(prompt.size());
  std::vector<int> seqs = {root};
  for (int c = 1; c < f.pass_k; ++c) seqs.push_back(cache.Fork(root));
  const std::vector<int32_t> firsts = TopTokens(logits.data(), n_vocab, f.pass_k);
  for (int c = 0; c < f.pass_k; ++c) run.attempts[c].push_back(firsts[c]);
  std::vector<inference::BatchToken> batch;
  std::vector<int32_t> ids;
  double decode_s = 0, read = 0, read_unshared = 0;
  for (int step = 1; step < f.gen_tokens; ++step) {
    batch.clear();
    for (int c = 0; c < f.pass_k; ++c) batch.push_back({seqs[c], run.attempts[c].back(), true});
    const double t_step = Now();
    LR_RETURN_IF_ERROR(model.ForwardGreedy(cache, batch, &ids));
    decode_s += Now() - t_step;
    for (int c = 0; c < f.pass_k; ++c) run.attempts[c].push_back(ids[c]);
    // Positions attended this step: every attempt's whole range, less what its group reads once for all.
    long positions = 0;
    for (int seq : seqs) positions += cache.Length(seq);
    read_unshared += static_cast<double>(positions);
    if (model.shares_prefix_pages()) {
      for (const inference::SharedPrefixGroup& g : inference::Model::PlanSharedPrefix(cache, batch))
        positions -= static_cast<long>(g.members.size() - 1) * g.shared_end;
    }
    read += static_cast<double>(positions);
  }
  run.wall_s = Now() - t0;
  run.decode_s = decode_s;
  const double steps = std::max(1, f.gen_tokens - 1), per_position = static_cast<double>(cache.bytes_per_token());
  run.kv_read_bytes = read / steps * per_position;
  run.kv_read_bytes_unshared = read_unshared / steps * per_position;
  run.experts = model.last_step_experts();
  run.kv_bytes = cache.Stats().bytes_peak();
  run.kv_held_bytes = cache.Stats().bytes_in_use();
  run.kv_prompt_bytes = static_cast<size_t>(f.prompt_tokens / inference::KvCache::kPageTokens) * cache.page_bytes();
  for (int seq : seqs) cache.Free(seq);
  return run;
}

// Each attempt prefills the prompt again and decodes alone.
Result<PassKRun> PassKNaive(inference::ForwardPass& model, const BenchFlags& f, const std::vector<int32_t>& prompt,
                            std::shared_ptr<const inference::KvCalibration> calibration) {
  const int n_vocab = model.config().n_vocab;
  LR_ASSIGN_OR_RETURN(inference::KvCache cache,
                      BenchCache(model, f, std::move(calibration), f.prompt_tokens + f.gen_tokens));
  PassKRun run;
  const double t0 = Now();
  std::vector<float> logits;
  for (int c = 0; c < f.pass_k; ++c) {
    const int seq = cache.NewSequence();
    LR_RETURN_IF_ERROR(Feed(model, cache, seq, prompt, &logits));
    run.prefill_tokens += static_cast<long>(prompt.size());
    std::vector<int32_t> attempt = {TopTokens(logits.data(), n_vocab, f.pass_k)[c]}, ids;
    const double t_decode = Now();
    for (int step = 1; step < f.gen_tokens; ++step) {
      const inference::BatchToken t{seq, attempt.back(), true};
      LR_RETURN_IF_ERROR(model.ForwardGreedy(cache, {&t, 1}, &ids));
      attempt.push_back(ids[0]);
    }
    run.decode_s += Now() - t_decode;
    run.experts = model.last_step_experts();
    run.attempts.push_back(std::move(attempt));
    run.kv_held_bytes = cache.Stats().bytes_in_use();
    cache.Free(seq);
  }
  run.wall_s = Now() - t0;
  run.kv_bytes = cache.Stats().bytes_peak();
  return run;
}

// The bench's prompt: the first n tokens of the GPL-3 text (repeated if shorter), after BOS when the model wants one;
// for a dummy preset (model null: no tokenizer) n token ids drawn at random.
Result<std::vector<int32_t>> PassKPrompt(const inference::Model* model, const inference::ModelConfig& config, int n) {
  if (model == nullptr) {
    std::mt19937 rng(99);
    std::uniform_int_distribution<int32_t> any(0, config.n_vocab - 1);
    std::vector<int32_t> prompt(static_cast<size_t>(n));
    for (int32_t& id : prompt) id = any(rng);
    return prompt;
  }
  const char* path = "/usr/share/common-licenses/GPL-3";
  std::ifstream in(path);
  if (!in) return NotFound(std::string("bench --pass-k: cannot read the prompt text ") + path);
  std::stringstream text;
  text << in.rdbuf();
  LR_ASSIGN_OR_RETURN(inference::Tokenizer tok, inference::Tokenizer::FromGguf(model->gguf()));
  const std::vector<int32_t> ids = tok.Encode(text.str(), /*parse_special=*/false);
  if (ids.empty()) return InvalidArgument(std::string("bench --pass-k: ") + path + " encodes to no tokens");
  std::vector<int32_t> prompt;
  if (tok.add_bos() && tok.bos() >= 0) prompt.push_back(tok.bos());
  while (static_cast<int>(prompt.size()) < n) prompt.push_back(ids[prompt.size() % ids.size()]);
  prompt.resize(static_cast<size_t>(n));
  return prompt;
}

int RunPassK(const BenchFlags& f, inference::Model* cpu_model, inference::ForwardPass& model, int threads,
             const std::string& tag) {
  Result<std::vector<int32_t>> prompt = PassKPrompt(cpu_model, model.config(), f.prompt_tokens);
  if (!prompt.ok()) return Fail(prompt.status());
  Result<std::shared_ptr<const inference::KvCalibration>> calibration = BenchCalibration(cpu_model, f);
  if (!calibration.ok()) return Fail(calibration.status());
  Result<PassKRun> shared = PassKShared(model, f, *prompt, *calibration);
  if (!shared.ok()) return Fail(shared.status());
  Result<PassKRun> naive = PassKNaive(model, f, *prompt, *calibration);
  if (!naive.ok()) return Fail(naive.status());
  int same = 0;  // attempts whose tokens agree between the modes (batched and lone decodes round differently)
  for (int c = 0; c < f.pass_k; ++c) same += shared->attempts[c] == naive->attempts[c] ? 1 : 0;
  const double decoded = static_cast<double>(f.pass_k) * (f.gen_tokens - 1);
  const double step_s = shared->decode_s / std::max(1, f.gen_tokens - 1);
  // Attempts of this prompt and length that fit in the budget: shared, the prompt's full pages once and each
  // attempt's own bytes (its share of the rest); naive, an attempt's whole bytes each.
  const double budget = static_cast<double>(f.kv_budget_mib) * 1048576.0;
  const double own = static_cast<double>(shared->kv_held_bytes - shared->kv_prompt_bytes) / f.pass_k;
  const long fit_shared = static_cast<long>(std::max(0.0, (budget - shared->kv_prompt_bytes) / own));
  const long fit_naive = static_cast<long>(budget / static_cast<double>(naive->kv_held_bytes));
  auto mode = [&](const PassKRun& r) {
    nlohmann::json j{{"wall_s", r.wall_s},
                     {"prefill_tokens", r.prefill_tokens},
                     {"kv_bytes", r.kv_bytes},
                     {"decode_tok_s", decoded / r.decode_s}};
    if (r.experts > 0) j["experts_per_layer"] = r.experts;
    return j;
  };
  nlohmann::json shared_json = mode(*shared);
  shared_json["step_s"] = step_s;
  shared_json["kv_read_bytes_per_step"] = shared->kv_read_bytes;
  shared_json["kv_read_bytes_per_step_unshared"] = shared->kv_read_bytes_unshared;
  shared_json["kv_held_bytes"] = shared->kv_held_bytes;
  shared_json["attempts_in_budget"] = fit_shared;
  nlohmann::json naive_json = mode(*naive);
  naive_json["kv_held_bytes"] = naive->kv_held_bytes;
  naive_json["attempts_in_budget"] = fit_naive;
  if (f.json) {
    nlohmann::json j = {{"k", f.pass_k},
                        {"prompt_tokens", f.prompt_tokens},
                        {"gen_tokens", f.gen_tokens},
                        {"ctk", f.ctk},
                        {"ctv", f.ctv},
                        {"threads", threads},
                        {"kv_budget_mib", f.kv_budget_mib},
                        {"shared", shared_json},
                        {"naive", naive_json},
                        {"same_attempts", same},
                        {"device", model.device()},
                        {"dummy_weights", !tag.empty()}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  }
  std::printf("%smodel %s on %s, %d threads, %s: k=%d attempts, %d prompt tokens, %d generated tokens each\n",
              tag.c_str(), f.model.c_str(), model.device().c_str(), threads, KvLabel(f).c_str(), f.pass_k,
              f.prompt_tokens, f.gen_tokens);
  for (const auto& [name, r] : {std::pair<const char*, const PassKRun&>{"shared", *shared}, {"naive", *naive}}) {
    std::printf("%s%-7s wall %8.2f s, prompt tokens computed %7ld, peak KV %8.2f MiB, decode %8.1f tok/s\n",
                tag.c_str(), name, r.wall_s, r.prefill_tokens, r.kv_bytes / 1048576.0, decoded / r.decode_s);
    if (r.experts > 0)
      std::printf("%s%-7s distinct routed experts per MoE layer in a decode step: %.1f\n", tag.c_str(), name,
                  r.experts);
  }
  std::printf("%snaive / shared: wall %.2fx, prompt tokens %.2fx, KV %.2fx; %d of %d attempts decode the same tokens\n",
              tag.c_str(), naive->wall_s / shared->wall_s,
              static_cast<double>(naive->prefill_tokens) / shared->prefill_tokens,
              static_cast<double>(naive->kv_bytes) / shared->kv_bytes, same, f.pass_k);
  std::printf(
      "%sshared decode: step %.2f ms, KV read per step %.2f MiB (%.2f MiB without sharing), KV held %.2f MiB; "
      "attempts in --kv-budget %d MiB: %ld shared, %ld naive\n",
      tag.c_str(), step_s * 1e3, shared->kv_read_bytes / 1048576.0, shared->kv_read_bytes_unshared / 1048576.0,
      shared->kv_held_bytes / 1048576.0, f.kv_budget_mib, fit_shared, fit_naive);
  return 0;
}

int RunBench(BenchFlags f) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  const int threads = omp_get_max_threads();
  const bool dummy = f.load_format == "dummy";
  if (f.model.empty()) {
    Result<std::string> path = inference::FindDefaultModel();
    if (!path.ok()) return Fail(path.status());
    f.model = *path;
  }
  // The CPU model (null for a dummy preset) and what runs the steps: it, or a device pass.
  std::unique_ptr<inference::Model> cpu_model;
  std::unique_ptr<inference::ForwardPass> device_pass;
  if (!(dummy && IsDummyPreset(f.model))) {
    auto loaded = inference::Model::Load(f.model);
    if (!loaded.ok()) return Fail(loaded.status());
    cpu_model = std::move(loaded).value();
  }
  const int max_tokens = std::max(f.depth + std::max(f.n_prompt, f.n_gen) + inference::KvCache::kPageTokens,
                                  f.pass_k > 0 ? f.prompt_tokens + f.pass_k * (f.gen_tokens + 32) : 0);
  if (dummy) {
    Result<std::unique_ptr<inference::ForwardPass>> pass = MakeDummyPass(f.model, cpu_model.get());
    if (!pass.ok()) return Fail(pass.status());
    device_pass = std::move(pass).value();
  } else {
    const inference::KvShape kv = cpu_model->kv_shape();
    const size_t kv_bytes = static_cast<size_t>(max_tokens) * kv.n_layer * kv.n_head_kv * (kv.k_dim + kv.v_dim) * 2;
    const bool compressed = f.ctk != "f16" || f.ctv != "f16";
    std::error_code ec;
    const size_t file_bytes = std::filesystem::file_size(f.model, ec);
    Result<DeviceFactory> device =
        ChooseDevice(compressed && f.device == "auto" ? "cpu" : f.device, ec ? 0 : file_bytes, kv_bytes);
    if (!device.ok()) return Fail(device.status());
    if (*device) {
      Result<std::unique_ptr<inference::ForwardPass>> pass = (*device)(*cpu_model);
      if (!pass.ok()) return Fail(pass.status());
      device_pass = std::move(pass).value();
    }
  }
  inference::ForwardPass& model = device_pass ? *device_pass : *cpu_model;
  const bool on_cpu = device_pass == nullptr;
  // Every line of a dummy-weights run says so.
  const std::string tag = dummy ? "[dummy weights] " : "";
  if (f.pass_k > 0) return RunPassK(f, cpu_model.get(), model, threads, tag);
  const int n_ctx_train = model.config().n_ctx_train;
  if (n_ctx_train > 0 && f.depth + std::max(f.n_prompt, f.n_gen) > n_ctx_train)
    std::fprintf(stderr,
                 "leanrotor bench: warning: depth %d + %d tokens is past the model's training context (%d tokens): "
                 "the speed is measured all the same, but text at such positions would be meaningless\n",
                 f.depth, std::max(f.n_prompt, f.n_gen), n_ctx_train);
  Result<std::shared_ptr<const inference::KvCalibration>> calibration = BenchCalibration(cpu_model.get(), f);
  if (!calibration.ok()) return Fail(calibration.status());
  auto made = BenchCache(model, f, *calibration, max_tokens);
  if (!made.ok()) return Fail(made.status());
  inference::KvCache& cache = *made;

  // Token ids do not change the work: a fixed pseudo-random sequence.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> any(0, model.config().n_vocab - 1);
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& id : t) id = any(rng);
    return t;
  };
  const int seq = cache.NewSequence();
  std::vector<float> feed_logits;
  Status s = Feed(model, cache, seq, random_tokens(f.depth), &feed_logits);
  if (!s.ok()) return Fail(s);

  double pp_tok_s = 0;
  if (f.n_prompt > 0) {
    const std::vector<int32_t> prompt = random_tokens(f.n_prompt);
    // A device's first steps load modules and capture graphs: one untimed pass of the same shape first.
    if (!on_cpu) {
      s = Feed(model, cache, seq, prompt, &feed_logits);
      if (!s.ok()) return Fail(s);
      cache.Truncate(seq, f.depth);
    }
    const double t0 = Now();
    s = Feed(model, cache, seq, prompt, &feed_logits);
    if (!s.ok()) return Fail(s);
    pp_tok_s = f.n_prompt / (Now() - t0);
    cache.Truncate(seq, f.depth);
  }
  // Generation speed from `depth` on; a device pass runs two steps first (its graphs are captured on first use).
  const std::vector<int32_t> gen = random_tokens(f.n_gen);
  auto generate = [&](double* tok_s) -> Status {
    std::vector<int32_t> ids;
    const double t0 = Now();
    for (int32_t id : gen) {
      const inference::BatchToken t{seq, id, true};
      LR_RETURN_IF_ERROR(model.ForwardGreedy(cache, {&t, 1}, &ids));
    }
    *tok_s = f.n_gen / (Now() - t0);
    cache.Truncate(seq, f.depth);
    return Status::Ok();
  };
  double tg_tok_s = 0, busy_tg_tok_s = 0;
  double experts = 0;  // distinct routed experts per MoE layer in a decode step
  if (f.n_gen > 0) {
    if (!on_cpu) {
      std::vector<int32_t> ids;
      for (int i = 0; i < 2; ++i) {
        const inference::BatchToken t{seq, gen[0], true};
        s = model.ForwardGreedy(cache, {&t, 1}, &ids);
        if (!s.ok()) return Fail(s);
      }
      cache.Truncate(seq, f.depth);
    }
    s = generate(&tg_tok_s);
    if (!s.ok()) return Fail(s);
    experts = model.last_step_experts();
    if (f.busy_neighbour) {
      BusyNeighbour neighbour;
      if (!neighbour.ok()) return Fail(Internal("bench --busy-neighbour: fork failed"));
      s = generate(&busy_tg_tok_s);
      if (!s.ok()) return Fail(s);
    }
  }

  double bandwidth = 0;
  if (on_cpu) {
    bandwidth = MeasureReadBandwidth();
  } else {
    Result<double> copy = DeviceCopyBandwidth();
    if (!copy.ok()) return Fail(copy.status());
    bandwidth = *copy;
  }
  // KV rows read per generated token: the context at the middle of the generation run.
  const double kv_bytes = static_cast<double>(cache.bytes_per_token()) * (f.depth + f.n_gen / 2.0);
  const double bytes_per_token = static_cast<double>(model.weight_bytes_per_token()) + kv_bytes;
  const double bound = bandwidth / bytes_per_token;
  const char* kernels = on_cpu ? IsaName(ops::ActiveIsa()) : "cuda";
  if (f.json) {
    nlohmann::json j = {{"pp_tok_s", pp_tok_s},
                        {"tg_tok_s", tg_tok_s},
                        {"bound_tg_tok_s", bound},
                        {"depth", f.depth},
                        {"threads", threads},
                        {"ctk", f.ctk},
                        {"ctv", f.ctv},
                        {"read_gb_s", bandwidth / 1e9},
                        {"bytes_per_token", bytes_per_token},
                        {"bound_fraction", tg_tok_s / bound},
                        {"simd", kernels},
                        {"device", model.device()},
                        {"dummy_weights", dummy},
                        {"n_prompt", f.n_prompt},
                        {"n_gen", f.n_gen}};
    if (cpu_model) j["pp_weight_bytes"] = cpu_model->weight_bytes();
    if (f.busy_neighbour) j["busy_tg_tok_s"] = busy_tg_tok_s;
    if (experts > 0) j["experts_per_layer"] = experts;
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%smodel %s on %s, %d threads, %s kernels, %s, depth %d\n", tag.c_str(), f.model.c_str(),
                model.device().c_str(), threads, kernels, KvLabel(f).c_str(), f.depth);
    std::printf("%sprompt      %8.1f tok/s (%d tokens)\n", tag.c_str(), pp_tok_s, f.n_prompt);
    std::printf("%sgeneration  %8.1f tok/s (%d tokens)\n", tag.c_str(), tg_tok_s, f.n_gen);
    if (f.busy_neighbour)
      std::printf("%sgeneration  %8.1f tok/s with a busy neighbour on one CPU\n", tag.c_str(), busy_tg_tok_s);
    if (cpu_model)
      std::printf("%sprompt chunks read at most %.2f MB of weights each (every matrix once, every expert included)\n",
                  tag.c_str(), cpu_model->weight_bytes() / 1e6);
    std::printf("%s%s %.2f GB/s; %.2f MB per generated token (weights %.2f MB, KV %.2f MB)\n", tag.c_str(),
                on_cpu ? "read bandwidth" : "device copy bandwidth (read + write)", bandwidth / 1e9,
                bytes_per_token / 1e6, model.weight_bytes_per_token() / 1e6, kv_bytes / 1e6);
    std::printf("%sbandwidth bound %.1f tok/s; generation reaches %.0f%% of it\n", tag.c_str(), bound,
                100.0 * tg_tok_s / bound);
    if (experts > 0)
      std::printf("%sdistinct routed experts per MoE layer in a decode step: %.1f\n", tag.c_str(), experts);
  }
  return 0;
}

}  // namespace

void AddBenchCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* sub = app.add_subcommand("bench", "Prompt and generation tokens/s against the memory-bandwidth bound");
  sub->add_option("-m,--model", flags->model, "GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("-p,--n-prompt", flags->n_prompt, "Prompt tokens to time")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-n,--n-gen", flags->n_gen, "Generated tokens to time")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--depth", flags->depth, "Tokens already in the context before timing")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-t,--threads", flags->threads, "Threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->add_option("--ctk", flags->ctk, "KV cache format for keys")->capture_default_str();
  sub->add_option("--ctv", flags->ctv, "KV cache format for values")->capture_default_str();
  sub->add_option("--kv-sinks", flags->kv_sinks, "keep the first N positions as f16 rows too")
      ->check(CLI::Range(0, 32));
  sub->add_option("--kv-window", flags->kv_window, "attend to the last N positions from window rows too")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--kv-window-format", flags->kv_window_format, "format of the window rows")->capture_default_str();
  sub->add_flag("--busy-neighbour", flags->busy_neighbour,
                "Also time generation while a child process spins on one CPU (a shared machine)");
  sub->add_option("--pass-k", flags->pass_k,
                  "Prefix-sharing bench instead: K attempts at one prompt, shared (prefill once, fork, batched decode) "
                  "vs naive (prefill each, decode alone)")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--prompt-tokens", flags->prompt_tokens, "--pass-k: prompt tokens (GPL-3 text)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--gen-tokens", flags->gen_tokens, "--pass-k: greedy tokens per attempt")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--kv-budget", flags->kv_budget_mib,
                  "--pass-k: KV cache pool in MiB that the report counts the attempts that fit in")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  AddDeviceFlag(sub, &flags->device);
  sub->add_option("--load-format", flags->load_format,
                  "auto: the model's weights; dummy: random weights generated on the CUDA device, of -m's shape and "
                  "types, or of a preset (-m llama-7b-q4_0), for timing (every output line says so)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "dummy"}));
  sub->add_flag("--json", flags->json,
                "Print {pp_tok_s, tg_tok_s, bound_tg_tok_s, bytes_per_token, pp_weight_bytes, busy_tg_tok_s, depth, "
                "threads, ctk, ctv, experts_per_layer (MoE), ...}; with --pass-k "
                "{k, prompt_tokens, gen_tokens, kv_budget_mib, shared:{wall_s, prefill_tokens, kv_bytes, decode_tok_s, "
                "step_s, kv_read_bytes_per_step, kv_read_bytes_per_step_unshared, kv_held_bytes, attempts_in_budget, "
                "experts_per_layer}, "
                "naive:{..., kv_held_bytes, attempts_in_budget}}");
  commands.Add(sub, [flags]() { return RunBench(*flags); });
}

}  // namespace lr::cli
