// `leanrotor perplexity`: perplexity of a text under the model, and the KL divergence that a compressed KV cache adds.
//
// As llama.cpp's perplexity: the text is cut into non-overlapping windows of CTX tokens; each window is run from an
// empty cache and only its second half is scored (every scored token has at least CTX/2 tokens of context). With
// --ctk/--ctv other than f16, every window also runs with an f16 cache, and the mean KL(p_f16 || p_cache) over the
// scored tokens is reported. --ctk/--ctv/--kv-sinks/--kv-window/--kv-window-format may be given several times: run i
// is (ctk[i], ctv[i], sinks[i], window[i], window_format[i]), and a list given once applies to every run. The f16
// reference of each window is then computed once for all runs, and one line (or JSON object) per run is printed: a
// whole table of formats costs one f16 pass plus one pass per format.
//
// Uncertainty. Both runs score the same tokens, so the perplexity ratio's uncertainty is that of a paired mean:
// ln(PPL_run / PPL_f16) is the mean over scored tokens of d_t = nll_run(t) - nll_f16(t), reported with its standard
// error sd(d) / sqrt(N); the mean KL likewise. Tokens are treated as independent, which neighbouring tokens are not
// quite, so the error is a lower bound; on the default model it matches how far two runs that differ by float rounding
// alone land apart (docs/RESULTS.md).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "cli/command.h"
#include "cli/device.h"
#include "inference/kv_calibration.h"
#include "inference/local_model.h"
#include "inference/sampler.h"
#include "kvquant/kvquant.h"
#include "ops/ops.h"

namespace lr::cli {
namespace {

struct PerplexityFlags {
  std::string model;
  std::string file = "/usr/share/common-licenses/GPL-3";
  int ctx = 512;
  int chunks = 0;  // 0: all windows
  std::vector<std::string> ctk = {"f16"};
  std::vector<std::string> ctv = {"f16"};
  std::vector<int> sinks = {0};
  std::vector<int> window = {0};
  std::vector<std::string> window_format = {"f16"};
  int threads = 0;
  bool json = false;
  bool no_calibration = false;
  std::string device = "auto";
};

// Logits of every position of one window, from an empty cache of the given formats and calibration (null: none).
Status WindowLogits(inference::ForwardPass& model, const int32_t* tokens, int n, const std::string& ctk,
                    const std::string& ctv, int sinks, int window, const std::string& window_format,
                    std::shared_ptr<const inference::KvCalibration> calibration, std::vector<float>* logits) {
  inference::KvCacheOptions o;
  o.k_format = ctk;
  o.v_format = ctv;
  o.sink_tokens = sinks;
  o.window_tokens = window;
  o.window_format = window_format;
  o.max_tokens = n;
  o.calibration = std::move(calibration);
  LR_RETURN_IF_ERROR(model.ConfigureCache(&o));
  LR_ASSIGN_OR_RETURN(inference::KvCache cache, inference::KvCache::Create(model.kv_shape(), o));
  const int seq = cache.NewSequence();
  std::vector<inference::BatchToken> batch;
  for (int i = 0; i < n; ++i) batch.push_back({seq, tokens[i], true});
  return model.Forward(cache, batch, logits);
}

// Sum and sum of squares of a per-token quantity: its mean and the mean's standard error.
struct PerToken {
  double sum = 0, sum_sq = 0;
  void Add(double x) { sum += x, sum_sq += x * x; }
  double Mean(long n) const { return sum / static_cast<double>(n); }
  double StandardError(long n) const {
    if (n < 2) return 0;
    const double mean = Mean(n), var = (sum_sq - n * mean * mean) / static_cast<double>(n - 1);
    return std::sqrt(std::max(var, 0.0) / static_cast<double>(n));
  }
};

// One (K, V) format pair with its sink and window rows to score, and what it accumulates.
struct Run {
  std::string ctk, ctv;
  int sinks = 0, window = 0;
  std::string window_format;
  double nll = 0;
  PerToken nll_vs_ref, kld;  // d_t = nll(t) - nll_f16(t), and KL(p_f16 || p) per token
  bool is_ref() const { return ctk == "f16" && ctv == "f16"; }
};

// Mean stored bits per cached value (K and V rows together, scales included) of a run on this model's rows, over a
// context of ctx positions: the f16 copies of the sink rows and the window rows are counted on top of every position's
// encoded rows (the window as it stays between forward passes: a prefill batch holds its own rows too while it runs).
double BitsPerValue(const inference::KvShape& shape, const Run& r, int ctx) {
  auto row_bytes = [&](const std::string& format, int dim) {
    return dim > 0 ? static_cast<double>(kvquant::RowCodec::Create(format, dim, 0, 0, 0)->row_bytes()) : 0.0;
  };
  const int sinks = r.is_ref() ? 0 : std::min(r.sinks, ctx), window = r.is_ref() ? 0 : std::min(r.window, ctx);
  const double bytes = ctx * (row_bytes(r.ctk, shape.k_dim) + row_bytes(r.ctv, shape.v_dim)) +
                       sinks * 2.0 * (shape.k_dim + shape.v_dim) +
                       window * (row_bytes(r.window_format, shape.k_dim) + row_bytes(r.window_format, shape.v_dim));
  return 8.0 * bytes / (static_cast<double>(ctx) * (shape.k_dim + shape.v_dim));
}

int Fail(const Status& s) {
  std::fprintf(stderr, "leanrotor perplexity: %s\n", s.ToString().c_str());
  return s.code() == StatusCode::kNotFound ? 2 : 1;
}

int RunPerplexity(PerplexityFlags f) {
  if (f.threads > 0) omp_set_num_threads(f.threads);
  if (f.model.empty()) {
    Result<std::string> path = inference::FindDefaultModel();
    if (!path.ok()) return Fail(path.status());
    f.model = *path;
  }
  if (f.ctx < 4) return Fail(InvalidArgument("-c must be at least 4 tokens, got " + std::to_string(f.ctx)));
  Result<std::string> text = ReadFile(f.file);
  if (!text.ok()) return Fail(text.status());
  const size_t n_runs = std::max({f.ctk.size(), f.ctv.size(), f.sinks.size(), f.window.size(), f.window_format.size()});
  for (size_t size : {f.ctk.size(), f.ctv.size(), f.sinks.size(), f.window.size(), f.window_format.size()})
    if (size != 1 && size != n_runs)
      return Fail(InvalidArgument("--ctk given " + std::to_string(f.ctk.size()) + " times, --ctv " +
                                  std::to_string(f.ctv.size()) + ", --kv-sinks " + std::to_string(f.sinks.size()) +
                                  ", --kv-window " + std::to_string(f.window.size()) + " and --kv-window-format " +
                                  std::to_string(f.window_format.size()) +
                                  "; expected equal counts, or once for a value every run shares"));
  std::vector<Run> runs;
  auto nth = [](const auto& list, size_t i) { return list[std::min(i, list.size() - 1)]; };
  for (size_t i = 0; i < n_runs; ++i) {
    Run& r = runs.emplace_back();
    r.ctk = nth(f.ctk, i), r.ctv = nth(f.ctv, i), r.window_format = nth(f.window_format, i);
    r.sinks = nth(f.sinks, i), r.window = nth(f.window, i);
  }
  for (const Run& r : runs) {
    for (const std::string& name : {r.ctk, r.ctv, r.window_format})
      if (Result<kvquant::FormatInfo> info = kvquant::FindFormat(name); !info.ok()) return Fail(info.status());
  }
  inference::LocalModelOptions options;
  options.path = f.model;
  std::error_code ec;
  const size_t file_bytes = std::filesystem::file_size(f.model, ec);
  // The CUDA backend stores f16 rows only: compressed runs pick the CPU unless --device cuda says otherwise (and
  // fails).
  const bool any_compressed = std::any_of(runs.begin(), runs.end(), [](const Run& r) { return !r.is_ref(); });
  Result<DeviceFactory> device = ChooseDevice(any_compressed && f.device == "auto" ? "cpu" : f.device,
                                              ec ? 0 : file_bytes, static_cast<size_t>(options.kv_budget_mib) << 20);
  if (!device.ok()) return Fail(device.status());
  options.device = *device;
  auto lm = inference::LocalModel::Open(options);
  if (!lm.ok()) return Fail(lm.status());
  inference::Model& model = (*lm)->model();
  inference::ForwardPass& pass = (*lm)->forward_pass();
  const inference::Tokenizer& tok = (*lm)->tokenizer();
  const bool bos = tok.add_bos() && tok.bos() >= 0;
  const std::vector<int32_t> tokens = tok.Encode(*text, false);
  // The channel centers and weights compressed formats are stored with, as LocalModel finds them when it opens a
  // cache (stored in the default cache directory once computed).
  std::shared_ptr<const inference::KvCalibration> calibration;
  if (any_compressed && !f.no_calibration) {
    Result<std::shared_ptr<const inference::KvCalibration>> c =
        inference::CachedKvCalibration(model, tok, inference::DefaultCacheDir(), nullptr, nullptr);
    if (!c.ok()) return Fail(c.status());
    calibration = *c;
  }
  // Each window holds ctx tokens, the first replaced by BOS when the model expects one (as llama.cpp does).
  int windows = static_cast<int>(tokens.size() / f.ctx);
  if (f.chunks > 0) windows = std::min(windows, f.chunks);
  if (windows == 0)
    return Fail(InvalidArgument(f.file + " has " + std::to_string(tokens.size()) +
                                " tokens, fewer than one window of " + std::to_string(f.ctx)));
  const int n_vocab = model.config().n_vocab;
  const int first = f.ctx / 2;
  long scored = 0;
  std::vector<float> logits, ref_logits;
  std::vector<double> lp, ref_nll;
  for (int w = 0; w < windows; ++w) {
    std::vector<int32_t> window(tokens.begin() + static_cast<long>(w) * f.ctx,
                                tokens.begin() + static_cast<long>(w + 1) * f.ctx);
    if (bos) window[0] = tok.bos();
    Status s = WindowLogits(pass, window.data(), f.ctx, "f16", "f16", 0, 0, "f16", nullptr, &ref_logits);
    if (!s.ok()) return Fail(s);
    ref_nll.clear();
    for (int i = first; i < f.ctx - 1; ++i) {
      ops::LogSoftmax({&ref_logits[static_cast<size_t>(i) * n_vocab], static_cast<size_t>(n_vocab)}, &lp);
      ref_nll.push_back(-lp[window[i + 1]]);
    }
    for (Run& r : runs) {
      if (r.is_ref()) {  // its nll is the reference's, its differences and KL zero
        for (double nll : ref_nll) r.nll += nll, r.nll_vs_ref.Add(0.0), r.kld.Add(0.0);
        continue;
      }
      s = WindowLogits(pass, window.data(), f.ctx, r.ctk, r.ctv, r.sinks, r.window, r.window_format, calibration,
                       &logits);
      if (!s.ok()) return Fail(s);
      for (int i = first; i < f.ctx - 1; ++i) {
        const std::span<const float> row(&logits[static_cast<size_t>(i) * n_vocab], n_vocab);
        ops::LogSoftmax(row, &lp);
        r.nll -= lp[window[i + 1]];
        r.nll_vs_ref.Add(-lp[window[i + 1]] - ref_nll[i - first]);
        r.kld.Add(inference::KlDivergence({&ref_logits[static_cast<size_t>(i) * n_vocab], row.size()}, row));
      }
    }
    scored += f.ctx - 1 - first;
    if (!f.json)
      for (const Run& r : runs)
        std::fprintf(stderr, "[%d/%d] K %s, V %s, %d sinks, %s window %d: ppl %.4f\n", w + 1, windows, r.ctk.c_str(),
                     r.ctv.c_str(), r.sinks, r.window_format.c_str(), r.window,
                     std::exp(r.nll / static_cast<double>(scored)));
  }
  for (const Run& r : runs) {
    const double ppl = std::exp(r.nll / static_cast<double>(scored));
    const double mean_kld = r.kld.Mean(scored), ln_ratio = r.nll_vs_ref.Mean(scored);
    const double ln_ratio_se = r.nll_vs_ref.StandardError(scored);
    if (f.json) {
      nlohmann::json j = {{"ppl", ppl},
                          {"kld", mean_kld},
                          {"kld_se", r.kld.StandardError(scored)},
                          {"ln_ppl_ratio", ln_ratio},
                          {"ln_ppl_ratio_se", ln_ratio_se},
                          {"tokens", scored},
                          {"ctk", r.ctk},
                          {"ctv", r.ctv},
                          {"sinks", r.is_ref() ? 0 : r.sinks},
                          {"window", r.is_ref() ? 0 : r.window},
                          {"window_format", r.window_format},
                          {"bits_per_value", BitsPerValue(model.kv_shape(), r, f.ctx)}};
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf(
          "perplexity %.4f over %ld scored tokens (%d windows of %d), K %s, V %s, %d sinks, %s window %d "
          "(%.3f bits/value)",
          ppl, scored, windows, f.ctx, r.ctk.c_str(), r.ctv.c_str(), r.is_ref() ? 0 : r.sinks, r.window_format.c_str(),
          r.is_ref() ? 0 : r.window, BitsPerValue(model.kv_shape(), r, f.ctx));
      if (!r.is_ref())
        std::printf(", vs f16 %+.2f%% +- %.2f%%, mean KL vs f16 %.6f +- %.6f", 100 * std::expm1(ln_ratio),
                    100 * ln_ratio_se, mean_kld, r.kld.StandardError(scored));
      std::printf("\n");
    }
  }
  return 0;
}

}  // namespace

void AddPerplexityCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<PerplexityFlags>();
  CLI::App* sub =
      app.add_subcommand("perplexity", "Perplexity of a text, and KL divergence of a compressed KV cache vs f16");
  sub->add_option("-m,--model", flags->model, "GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("-f,--file", flags->file, "Text file")->capture_default_str();
  sub->add_option("-c,--ctx", flags->ctx, "Window size in tokens; the second half of each is scored")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  sub->add_option("--chunks", flags->chunks, "Score at most this many windows (0: all)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--ctk", flags->ctk, "KV cache format for keys (repeatable: one run per --ctk/--ctv pair)")
      ->capture_default_str();
  sub->add_option("--ctv", flags->ctv, "KV cache format for values (repeatable)")->capture_default_str();
  sub->add_option("--kv-sinks", flags->sinks,
                  "Keep the first N positions of each window as f16 rows too (attention sinks; repeatable)")
      ->capture_default_str()
      ->check(CLI::Range(0, inference::KvCache::kPageTokens));
  sub->add_option("--kv-window", flags->window,
                  "Read the last N positions before each token from window rows too (recent window; repeatable)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--kv-window-format", flags->window_format, "Format of the window rows (repeatable)")
      ->capture_default_str();
  sub->add_option("-t,--threads", flags->threads, "Threads (default: all cores)")->check(CLI::NonNegativeNumber);
  AddDeviceFlag(sub, &flags->device);
  sub->add_flag("--no-kv-calibration", flags->no_calibration,
                "Store compressed rows without the model's KV channel centers and weights (to measure what they give)");
  sub->add_flag("--json", flags->json,
                "Print {ppl, kld, kld_se, ln_ppl_ratio, ln_ppl_ratio_se, tokens, ctk, ctv, sinks, window, "
                "window_format, bits_per_value} as JSON, one line per run (_se: standard errors over the scored "
                "tokens)");
  commands.Add(sub, [flags]() { return RunPerplexity(*flags); });
}

}  // namespace lr::cli
