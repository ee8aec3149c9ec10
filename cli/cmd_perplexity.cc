// `leanrotor perplexity`: perplexity of a text under the model, and the KL divergence that a compressed KV cache adds.
//
// As llama.cpp's perplexity: the text is cut into non-overlapping windows of CTX tokens; each window is run from an
// empty cache and only its second half is scored (every scored token has at least CTX/2 tokens of context). With
// --ctk/--ctv other than f16, every window also runs with an f16 cache, and the mean KL(p_f16 || p_cache) over the
// scored tokens is reported.
#include <omp.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/file.h"
#include "cli/command.h"
#include "inference/kv_calibration.h"
#include "inference/local_model.h"
#include "inference/sampler.h"

namespace lr::cli {
namespace {

struct PerplexityFlags {
  std::string model;
  std::string file = "/usr/share/common-licenses/GPL-3";
  int ctx = 512;
  int chunks = 0;  // 0: all windows
  std::string ctk = "f16";
  std::string ctv = "f16";
  int threads = 0;
  bool json = false;
  bool no_center = false;
};

// Logits of every position of one window, from an empty cache of the given formats and centers (null: none).
Status WindowLogits(inference::Model& model, const int32_t* tokens, int n, const std::string& ctk,
                    const std::string& ctv, std::shared_ptr<const inference::KvCenters> centers,
                    std::vector<float>* logits) {
  inference::KvCacheOptions o;
  o.k_format = ctk;
  o.v_format = ctv;
  o.max_tokens = n;
  o.centers = std::move(centers);
  LR_ASSIGN_OR_RETURN(inference::KvCache cache, inference::KvCache::Create(model.kv_shape(), o));
  const int seq = cache.NewSequence();
  std::vector<inference::BatchToken> batch;
  for (int i = 0; i < n; ++i) batch.push_back({seq, tokens[i], true});
  return model.Forward(cache, batch, logits);
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
  inference::LocalModelOptions options;
  options.path = f.model;
  options.kv.k_format = f.ctk;
  options.kv.v_format = f.ctv;
  auto lm = inference::LocalModel::Open(options);
  if (!lm.ok()) return Fail(lm.status());
  inference::Model& model = (*lm)->model();
  const inference::Tokenizer& tok = (*lm)->tokenizer();
  const bool bos = tok.add_bos() && tok.bos() >= 0;
  const std::vector<int32_t> tokens = tok.Encode(*text, false);
  // Each window holds ctx tokens, the first replaced by BOS when the model expects one (as llama.cpp does).
  int windows = static_cast<int>(tokens.size() / f.ctx);
  if (f.chunks > 0) windows = std::min(windows, f.chunks);
  if (windows == 0)
    return Fail(InvalidArgument(f.file + " has " + std::to_string(tokens.size()) + " tokens, fewer than one window of " +
                                std::to_string(f.ctx)));
  const bool compare = f.ctk != "f16" || f.ctv != "f16";
  const int n_vocab = model.config().n_vocab;
  const int first = f.ctx / 2;
  double nll = 0, kld = 0;
  long scored = 0;
  std::vector<float> logits, ref_logits;
  std::vector<double> lp;
  for (int w = 0; w < windows; ++w) {
    std::vector<int32_t> window(tokens.begin() + static_cast<long>(w) * f.ctx,
                                tokens.begin() + static_cast<long>(w + 1) * f.ctx);
    if (bos) window[0] = tok.bos();
    // The channel centers LocalModel computed for the compressed formats, as its own cache uses them.
    Status s = WindowLogits(model, window.data(), f.ctx, f.ctk, f.ctv,
                            f.no_center ? nullptr : (*lm)->kv_options().centers, &logits);
    if (!s.ok()) return Fail(s);
    if (compare) {
      s = WindowLogits(model, window.data(), f.ctx, "f16", "f16", nullptr, &ref_logits);
      if (!s.ok()) return Fail(s);
    }
    for (int i = first; i < f.ctx - 1; ++i) {
      const std::span<const float> row(&logits[static_cast<size_t>(i) * n_vocab], n_vocab);
      inference::LogSoftmax(row, &lp);
      nll -= lp[window[i + 1]];
      if (compare) kld += inference::KlDivergence({&ref_logits[static_cast<size_t>(i) * n_vocab], row.size()}, row);
      ++scored;
    }
    if (!f.json)
      std::fprintf(stderr, "[%d/%d] ppl %.4f\n", w + 1, windows, std::exp(nll / static_cast<double>(scored)));
  }
  const double ppl = std::exp(nll / static_cast<double>(scored));
  const double mean_kld = kld / static_cast<double>(scored);
  if (f.json) {
    nlohmann::json j = {{"ppl", ppl}, {"kld", mean_kld}, {"tokens", scored}, {"ctk", f.ctk}, {"ctv", f.ctv}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("perplexity %.4f over %ld scored tokens (%d windows of %d), K %s, V %s", ppl, scored, windows, f.ctx,
                f.ctk.c_str(), f.ctv.c_str());
    if (compare) std::printf(", mean KL vs f16 %.6f", mean_kld);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

void AddPerplexityCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<PerplexityFlags>();
  CLI::App* sub = app.add_subcommand("perplexity", "Perplexity of a text, and KL divergence of a compressed KV cache vs f16");
  sub->add_option("-m,--model", flags->model, "GGUF model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf)");
  sub->add_option("-f,--file", flags->file, "Text file")->capture_default_str();
  sub->add_option("-c,--ctx", flags->ctx, "Window size in tokens; the second half of each is scored")
      ->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--chunks", flags->chunks, "Score at most this many windows (0: all)")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--ctk", flags->ctk, "KV cache format for keys")->capture_default_str();
  sub->add_option("--ctv", flags->ctv, "KV cache format for values")->capture_default_str();
  sub->add_option("-t,--threads", flags->threads, "Threads (default: all cores)")->check(CLI::NonNegativeNumber);
  sub->add_flag("--no-center", flags->no_center,
                "Store compressed rows without the model's KV channel centers (to measure what centering gives)");
  sub->add_flag("--json", flags->json, "Print {ppl, kld, tokens, ctk, ctv} as JSON");
  commands.Add(sub, [flags]() { return RunPerplexity(*flags); });
}

}  // namespace lr::cli
