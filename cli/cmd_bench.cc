// `leanrotor bench`: prompt and generation speed at a context depth, against the machine's memory-bandwidth bound.
//
// Decoding one token reads every weight once plus the KV rows of the context, so tokens/s cannot exceed
// read bandwidth / bytes per token. The bandwidth is measured here (a streaming read of a buffer much larger than the
// caches, with the same thread count) and the report says which fraction of that bound generation reaches.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
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
  bool json = false;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

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
      total += (buf[i] ^ buf[i + 1]) + (buf[i + 2] ^ buf[i + 3]) + (buf[i + 4] ^ buf[i + 5]) + (buf[i + 6] ^ buf[i + 7]);
    }
    const double dt = Now() - t0;
    sink += total;
    best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / dt);
  }
  if (sink == 42) std::fprintf(stderr, " ");  // keeps the reads
  return best;
}

// Runs `tokens` through sequence `seq` in chunks of 512 (logits for the last token only).
Status Feed(inference::Model& model, inference::KvCache& cache, int seq, const std::vector<int32_t>& tokens) {
  std::vector<inference::BatchToken> batch;
  std::vector<float> logits;
  for (size_t begin = 0; begin < tokens.size(); begin += 512) {
    const size_t end = std::min(tokens.size(), begin + 512);
    batch.clear();
    for (size_t i = begin; i < end; ++i) batch.push_back({seq, tokens[i], i + 1 == tokens.size()});
    LR_RETURN_IF_ERROR(model.Forward(cache, batch, &logits));
  }
  return Status::Ok();
}

int Fail(const Status& s) {
  std::fprintf(stderr, "leanrotor bench: %s\n", s.ToString().c_str());
  return s.code() == StatusCode::kNotFound ? 2 : 1;
}

int RunBench(BenchFlags f) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  const int threads = omp_get_max_threads();
  if (f.model.empty()) {
    Result<std::string> path = inference::FindDefaultModel();
    if (!path.ok()) return Fail(path.status());
    f.model = *path;
  }
  auto loaded = inference::Model::Load(f.model);
  if (!loaded.ok()) return Fail(loaded.status());
  inference::Model& model = **loaded;
  inference::KvCacheOptions o;
  o.k_format = f.ctk;
  o.v_format = f.ctv;
  o.max_tokens = f.depth + std::max(f.n_prompt, f.n_gen) + inference::KvCache::kPageTokens;
  auto made = inference::KvCache::Create(model.kv_shape(), o);
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
  Status s = Feed(model, cache, seq, random_tokens(f.depth));
  if (!s.ok()) return Fail(s);

  double pp_tok_s = 0;
  if (f.n_prompt > 0) {
    const std::vector<int32_t> prompt = random_tokens(f.n_prompt);
    const double t0 = Now();
    s = Feed(model, cache, seq, prompt);
    if (!s.ok()) return Fail(s);
    pp_tok_s = f.n_prompt / (Now() - t0);
    cache.Truncate(seq, f.depth);
  }
  double tg_tok_s = 0;
  if (f.n_gen > 0) {
    const std::vector<int32_t> gen = random_tokens(f.n_gen);
    std::vector<float> logits;
    const double t0 = Now();
    for (int32_t id : gen) {
      const inference::BatchToken t{seq, id, true};
      s = model.Forward(cache, {&t, 1}, &logits);
      if (!s.ok()) return Fail(s);
    }
    tg_tok_s = f.n_gen / (Now() - t0);
  }

  const double bandwidth = MeasureReadBandwidth();
  // KV rows read per generated token: the context at the middle of the generation run.
  const double kv_bytes = static_cast<double>(cache.bytes_per_token()) * (f.depth + f.n_gen / 2.0);
  const double bytes_per_token = static_cast<double>(model.weight_bytes_per_token()) + kv_bytes;
  const double bound = bandwidth / bytes_per_token;
  if (f.json) {
    nlohmann::json j = {{"pp_tok_s", pp_tok_s},   {"tg_tok_s", tg_tok_s}, {"bound_tg_tok_s", bound},
                        {"depth", f.depth},       {"threads", threads},   {"ctk", f.ctk},
                        {"ctv", f.ctv},           {"read_gb_s", bandwidth / 1e9},
                        {"bytes_per_token", bytes_per_token},            {"bound_fraction", tg_tok_s / bound},
                        {"simd", inference::SimdLevelName(inference::ActiveSimdLevel())}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("model %s, %d threads, %s kernels, K %s, V %s, depth %d\n", f.model.c_str(), threads,
                inference::SimdLevelName(inference::ActiveSimdLevel()), f.ctk.c_str(), f.ctv.c_str(), f.depth);
    std::printf("prompt      %8.1f tok/s (%d tokens)\n", pp_tok_s, f.n_prompt);
    std::printf("generation  %8.1f tok/s (%d tokens)\n", tg_tok_s, f.n_gen);
    std::printf("read bandwidth %.2f GB/s; %.2f MB per generated token (weights %.2f MB, KV %.2f MB)\n",
                bandwidth / 1e9, bytes_per_token / 1e6, model.weight_bytes_per_token() / 1e6, kv_bytes / 1e6);
    std::printf("bandwidth bound %.1f tok/s; generation reaches %.0f%% of it\n", bound, 100.0 * tg_tok_s / bound);
  }
  return 0;
}

}  // namespace

void AddBenchCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<BenchFlags>();
  CLI::App* sub = app.add_subcommand("bench", "Prompt and generation tokens/s against the memory-bandwidth bound");
  sub->add_option("-m,--model", flags->model, "GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("-p,--n-prompt", flags->n_prompt, "Prompt tokens to time")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-n,--n-gen", flags->n_gen, "Generated tokens to time")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--depth", flags->depth, "Tokens already in the context before timing")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("-t,--threads", flags->threads, "Threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->add_option("--ctk", flags->ctk, "KV cache format for keys")->capture_default_str();
  sub->add_option("--ctv", flags->ctv, "KV cache format for values")->capture_default_str();
  sub->add_flag("--json", flags->json, "Print {pp_tok_s, tg_tok_s, bound_tg_tok_s, depth, threads, ctk, ctv, ...}");
  commands.Add(sub, [flags]() { return RunBench(*flags); });
}

}  // namespace lr::cli
