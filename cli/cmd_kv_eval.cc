// `leanrotor kv-eval`: the error table of every KV-cache format (kvquant/eval.h) on synthetic and captured rows.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "base/file.h"
#include "cli/command.h"
#include "inference/kv_cache.h"
#include "inference/model.h"
#include "inference/tokenizer.h"
#include "kvquant/eval.h"
#include "kvquant/kvquant.h"

namespace lr::cli {
namespace {

struct KvEvalFlags {
  bool json = false;
  std::string rows;
  std::string model;
  std::string text;
  std::vector<std::string> formats;
  int dim = 128;
  int tokens = 1024;
  int queries = 64;
  uint64_t seed = 1;
};

// The key and value rows of every (layer, KV head) that `model_path` stores for the first max_tokens tokens of the
// file `text_path`, read back from an f16 cache, each with synthesized queries.
Result<std::vector<kvquant::EvalData>> CaptureRows(const std::string& model_path, const std::string& text_path,
                                                   int max_tokens, int n_q, uint64_t seed) {
  LR_ASSIGN_OR_RETURN(std::string text, ReadFile(text_path));
  LR_ASSIGN_OR_RETURN(std::unique_ptr<inference::Model> model, inference::Model::Load(model_path));
  LR_ASSIGN_OR_RETURN(inference::Tokenizer tokenizer, inference::Tokenizer::FromGguf(model->gguf()));
  std::vector<int32_t> ids = tokenizer.Encode(text, false);
  if (static_cast<int>(ids.size()) > max_tokens) ids.resize(max_tokens);
  if (ids.size() < 16)
    return InvalidArgument(text_path + ": " + std::to_string(ids.size()) + " tokens; expected at least 16");
  const inference::KvShape shape = model->kv_shape();
  if (shape.v_dim == 0)
    return Unsupported(model_path + ": MLA keeps values inside the key rows; capture needs separate K and V rows");
  inference::KvCacheOptions options;
  options.max_tokens = static_cast<int>(ids.size()) + inference::KvCache::kPageTokens;
  LR_ASSIGN_OR_RETURN(inference::KvCache cache, inference::KvCache::Create(shape, options));
  const int seq = cache.NewSequence();
  std::vector<float> logits;
  for (size_t start = 0; start < ids.size(); start += 256) {
    std::vector<inference::BatchToken> batch;
    for (size_t i = start; i < std::min(ids.size(), start + 256); ++i) batch.push_back({seq, ids[i], false});
    LR_RETURN_IF_ERROR(model->Forward(cache, batch, &logits));
  }
  std::vector<kvquant::EvalData> out;
  const int n = static_cast<int>(ids.size());
  for (int layer = 0; layer < shape.n_layer; ++layer) {
    for (int head = 0; head < shape.n_head_kv; ++head) {
      if (shape.k_dim != shape.v_dim)
        return Unsupported(model_path + ": key rows of " + std::to_string(shape.k_dim) + " and value rows of " +
                           std::to_string(shape.v_dim) + " values; kv-eval measures rows of one size");
      kvquant::EvalData d{"model", shape.k_dim, 0, n, {}, {}, {}};
      d.k.resize(static_cast<size_t>(n) * shape.k_dim);
      d.v.resize(d.k.size());
      for (int pos = 0; pos < n; ++pos) {
        cache.k_codec(layer, head).DecodeRow(cache.KRow(seq, layer, head, pos), &d.k[pos * shape.k_dim]);
        cache.v_codec(layer, head).DecodeRow(cache.VRow(seq, layer, head, pos), &d.v[pos * shape.v_dim]);
      }
      kvquant::SynthesizeQueries(d, n_q, seed + layer * 131 + head);
      out.push_back(std::move(d));
    }
  }
  return out;
}

// The mean of every metric over the captured (layer, head) sets.
Result<kvquant::EvalResult> EvaluateAveraged(const std::string& format, const std::vector<kvquant::EvalData>& sets,
                                             uint64_t seed) {
  kvquant::EvalResult sum;
  for (const kvquant::EvalData& d : sets) {
    LR_ASSIGN_OR_RETURN(kvquant::EvalResult r, kvquant::EvaluateFormat(format, d, seed));
    sum.format = r.format;
    sum.bits_per_element = r.bits_per_element;
    sum.data = r.data;
    sum.mse += r.mse / sets.size();
    sum.cosine += r.cosine / sets.size();
    sum.ip_error += r.ip_error / sets.size();
    sum.attn_rel_error += r.attn_rel_error / sets.size();
  }
  return sum;
}

int RunKvEval(const KvEvalFlags& f) {
  std::vector<std::string> formats = f.formats;
  if (formats.empty())
    for (const kvquant::FormatInfo& info : kvquant::ListFormats()) formats.emplace_back(info.name);
  for (const std::string& name : formats) {
    if (Result<kvquant::FormatInfo> r = kvquant::FindFormat(name); !r.ok()) {
      std::fprintf(stderr, "leanrotor kv-eval: --format: %s\n", r.status().ToString().c_str());
      return 1;
    }
  }
  if (f.dim < 64 || f.dim % 64 != 0 || f.tokens < 1 || f.queries < 1) {
    std::fprintf(stderr,
                 "leanrotor kv-eval: --dim %d, --tokens %d, --queries %d: expected a dim that is a positive "
                 "multiple of 64 (every format can hold it) and at least one token and query\n",
                 f.dim, f.tokens, f.queries);
    return 1;
  }
  std::vector<kvquant::EvalData> sets = {kvquant::GaussianData(f.dim, f.tokens, f.queries, f.seed),
                                         kvquant::OutlierData(f.dim, f.tokens, f.queries, f.seed)};
  if (!f.rows.empty()) {
    Result<kvquant::EvalData> r = kvquant::ReadRowsFile(f.rows, f.seed);
    if (!r.ok()) {
      std::fprintf(stderr, "leanrotor kv-eval: --rows: %s\n", r.status().ToString().c_str());
      return 1;
    }
    sets.push_back(std::move(r).value());
  }
  std::vector<kvquant::EvalData> captured;
  if (!f.model.empty()) {
    if (f.text.empty()) {
      std::fprintf(stderr, "leanrotor kv-eval: --model needs --text FILE, the text to run it on\n");
      return 1;
    }
    Result<std::vector<kvquant::EvalData>> r = CaptureRows(f.model, f.text, f.tokens, f.queries, f.seed);
    if (!r.ok()) {
      std::fprintf(stderr, "leanrotor kv-eval: --model: %s\n", r.status().ToString().c_str());
      return 1;
    }
    captured = std::move(r).value();
    if (!f.json)
      std::printf("model rows: %s on %d tokens of %s, %zu (layer, KV head) pairs of dim %d, metrics averaged\n",
                  f.model.c_str(), captured[0].n_rows, f.text.c_str(), captured.size(), captured[0].dim);
  }

  nlohmann::json out = nlohmann::json::array();
  if (!f.json)
    std::printf("%-9s %-8s %6s %10s %9s %9s %9s\n", "data", "format", "bits", "mse", "cosine", "ip_err", "attn_err");
  const size_t n_sets = sets.size() + (captured.empty() ? 0 : 1);
  for (size_t s = 0; s < n_sets; ++s) {
    for (const std::string& name : formats) {
      Result<kvquant::EvalResult> r =
          s < sets.size() ? kvquant::EvaluateFormat(name, sets[s], f.seed) : EvaluateAveraged(name, captured, f.seed);
      if (!r.ok()) {
        std::fprintf(stderr, "leanrotor kv-eval: %s: %s\n", name.c_str(), r.status().ToString().c_str());
        return 1;
      }
      if (f.json) {
        out.push_back({{"format", r->format},
                       {"bits_per_element", r->bits_per_element},
                       {"data", r->data},
                       {"mse", r->mse},
                       {"cosine", r->cosine},
                       {"ip_error", r->ip_error},
                       {"attn_rel_error", r->attn_rel_error}});
      } else {
        std::printf("%-9s %-8s %6.3f %10.6f %9.6f %9.5f %9.5f\n", r->data.c_str(), r->format.c_str(),
                    r->bits_per_element, r->mse, r->cosine, r->ip_error, r->attn_rel_error);
      }
    }
  }
  if (f.json) {
    std::printf("%s\n", out.dump(2).c_str());
  } else if (f.rows.empty() && f.model.empty()) {
    std::printf("(rows from a model: --model GGUF --text FILE, or --rows FILE in the layout of kvquant/eval.h)\n");
  }
  return 0;
}

}  // namespace

void AddKvEvalCommand(CLI::App& app, CommandSet& commands) {
  auto flags = std::make_shared<KvEvalFlags>();
  CLI::App* sub = app.add_subcommand(
      "kv-eval", "Measure every KV-cache format: bits per element, MSE, cosine, inner-product and attention error");
  sub->add_flag("--json", flags->json,
                "print a JSON array of {format, bits_per_element, data, mse, cosine, ip_error, attn_rel_error}");
  sub->add_option("--rows", flags->rows, "also measure on K/V rows captured from a model (LRKVROWS file)");
  sub->add_option("--model", flags->model,
                  "also measure on the K/V rows this GGUF model stores for --text (every layer and KV head)");
  sub->add_option("--text", flags->text, "the text to run --model on (its first --tokens tokens)");
  sub->add_option("--format", flags->formats, "only these formats (repeatable; default: all)");
  sub->add_option("--dim", flags->dim, "head dim of the synthetic rows")->capture_default_str();
  sub->add_option("--tokens", flags->tokens, "rows per synthetic set, and at most this many model tokens")
      ->capture_default_str();
  sub->add_option("--queries", flags->queries, "queries per synthetic set")->capture_default_str();
  sub->add_option("--seed", flags->seed, "seed of the data and of the rotations")->capture_default_str();
  commands.Add(sub, [flags] { return RunKvEval(*flags); });
}

}  // namespace lr::cli
