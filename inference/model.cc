#include "inference/model.h"

#include <algorithm>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstring>
#include <numeric>

namespace lr::inference {
namespace {

Result<int> GetInt(const GgufFile& g, const std::string& key) {
  LR_ASSIGN_OR_RETURN(uint32_t v, g.GetU32(key));
  if (v > static_cast<uint32_t>(INT_MAX)) return Corrupt(g.path() + ": " + key + " = " + std::to_string(v) + " is too large");
  return static_cast<int>(v);
}

Result<int> GetIntOr(const GgufFile& g, const std::string& key, int fallback) {
  if (!g.Has(key)) return fallback;
  return GetInt(g, key);
}

Result<float> GetF32Or(const GgufFile& g, const std::string& key, float fallback) {
  if (!g.Has(key)) return fallback;
  return g.GetF32(key);
}

Result<bool> GetBoolOr(const GgufFile& g, const std::string& key, bool fallback) {
  if (!g.Has(key)) return fallback;
  return g.GetBool(key);
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// y = x / sqrt(mean(x^2) + eps) * w, for one row of n values.
void RmsNorm(const float* x, const float* w, int n, float eps, float* y) {
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(ss / n + eps));
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

void RmsNormRows(const float* x, const std::vector<float>& w, int rows, float eps, float* y) {
  const int n = static_cast<int>(w.size());
  for (int r = 0; r < rows; ++r) RmsNorm(x + static_cast<size_t>(r) * n, w.data(), n, eps, y + static_cast<size_t>(r) * n);
}

// Rotates the first n_rot values of one head by position-dependent angles (cos_sin: n_rot/2 pairs).
void Rope(float* v, const float* cos_sin, int n_rot, RopeStyle style) {
  const int half = n_rot / 2;
  for (int i = 0; i < half; ++i) {
    const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
    float* a = style == RopeStyle::kAdjacentPairs ? &v[2 * i] : &v[i];
    float* b = style == RopeStyle::kAdjacentPairs ? &v[2 * i + 1] : &v[i + half];
    const float x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x0 * s + x1 * c;
  }
}

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace

Result<ModelConfig> ReadModelConfig(const GgufFile& g) {
  ModelConfig c;
  LR_ASSIGN_OR_RETURN(c.arch, g.GetString("general.architecture"));
  if (g.Has("general.name")) {
    LR_ASSIGN_OR_RETURN(c.name, g.GetString("general.name"));
  }
  const std::string a = c.arch + ".";
  if (c.arch == "llama") {
    c.rope_style = RopeStyle::kAdjacentPairs;
  } else if (c.arch == "qwen3") {
    c.rope_style = RopeStyle::kHalves;
    c.qk_norm = true;
  } else if (c.arch == "deepseek2") {
    c.rope_style = RopeStyle::kAdjacentPairs;
  } else {
    return Unsupported(g.path() + ": architecture '" + c.arch + "' is not supported (llama, qwen3, deepseek2)");
  }
  LR_ASSIGN_OR_RETURN(c.n_layer, GetInt(g, a + "block_count"));
  LR_ASSIGN_OR_RETURN(c.n_embd, GetInt(g, a + "embedding_length"));
  LR_ASSIGN_OR_RETURN(c.n_head, GetInt(g, a + "attention.head_count"));
  LR_ASSIGN_OR_RETURN(c.n_head_kv, GetIntOr(g, a + "attention.head_count_kv", c.n_head));
  LR_ASSIGN_OR_RETURN(c.n_ff, GetInt(g, a + "feed_forward_length"));
  LR_ASSIGN_OR_RETURN(c.n_ctx_train, GetIntOr(g, a + "context_length", 0));
  if (c.n_layer < 1 || c.n_embd < 1 || c.n_head < 1 || c.n_head_kv < 1 || c.n_ff < 1)
    return Corrupt(g.path() + ": block_count, embedding_length, head counts and feed_forward_length must be positive");
  if (c.n_head % c.n_head_kv != 0)
    return Corrupt(g.path() + ": " + a + "attention.head_count (" + std::to_string(c.n_head) +
                   ") is not a multiple of head_count_kv (" + std::to_string(c.n_head_kv) + ")");
  LR_ASSIGN_OR_RETURN(c.head_dim, GetIntOr(g, a + "attention.key_length", c.n_embd / c.n_head));
  LR_ASSIGN_OR_RETURN(c.head_dim_v, GetIntOr(g, a + "attention.value_length", c.head_dim));
  LR_ASSIGN_OR_RETURN(c.rms_eps, GetF32Or(g, a + "attention.layer_norm_rms_epsilon", 1e-5f));
  LR_ASSIGN_OR_RETURN(c.rope_base, GetF32Or(g, a + "rope.freq_base", 10000.0f));
  LR_ASSIGN_OR_RETURN(c.n_rot, GetIntOr(g, a + "rope.dimension_count", c.head_dim));
  if (c.head_dim < 1 || c.head_dim_v < 1 || c.n_rot < 0 || c.n_rot > c.head_dim || c.n_rot % 2 != 0)
    return Corrupt(g.path() + ": " + a + "rope.dimension_count (" + std::to_string(c.n_rot) +
                   ") must be even and at most the head size (" + std::to_string(c.head_dim) + ")");

  LR_ASSIGN_OR_RETURN(c.n_expert, GetIntOr(g, a + "expert_count", 0));
  LR_ASSIGN_OR_RETURN(c.n_expert_used, GetIntOr(g, a + "expert_used_count", 0));
  LR_ASSIGN_OR_RETURN(c.n_expert_shared, GetIntOr(g, a + "expert_shared_count", 0));
  LR_ASSIGN_OR_RETURN(c.n_ff_expert, GetIntOr(g, a + "expert_feed_forward_length", c.n_ff));
  LR_ASSIGN_OR_RETURN(c.n_leading_dense, GetIntOr(g, a + "leading_dense_block_count", 0));
  LR_ASSIGN_OR_RETURN(int gating, GetIntOr(g, a + "expert_gating_func", 1));
  if (gating != 1 && gating != 2)
    return Unsupported(g.path() + ": " + a + "expert_gating_func " + std::to_string(gating) +
                       " (expected 1 softmax or 2 sigmoid)");
  c.gating = static_cast<ExpertGating>(gating);
  // llama.cpp renormalises Mixtral's (llama + experts) top-k weights without a key.
  LR_ASSIGN_OR_RETURN(c.expert_weights_norm, GetBoolOr(g, a + "expert_weights_norm", c.arch == "llama"));
  LR_ASSIGN_OR_RETURN(c.expert_weights_scale, GetF32Or(g, a + "expert_weights_scale", 1.0f));
  LR_ASSIGN_OR_RETURN(c.n_expert_groups, GetIntOr(g, a + "expert_group_count", 1));
  LR_ASSIGN_OR_RETURN(c.n_expert_groups_used, GetIntOr(g, a + "expert_group_used_count", 1));

  LR_ASSIGN_OR_RETURN(c.q_lora_rank, GetIntOr(g, a + "attention.q_lora_rank", 0));
  LR_ASSIGN_OR_RETURN(c.kv_lora_rank, GetIntOr(g, a + "attention.kv_lora_rank", 0));
  if (c.kv_lora_rank > 0) {
    c.qk_rope_dim = c.n_rot;
    c.qk_nope_dim = c.head_dim - c.n_rot;
  }
  if (g.Has(a + "rope.scaling.type")) {
    LR_ASSIGN_OR_RETURN(std::string type, g.GetString(a + "rope.scaling.type"));
    if (type != "yarn" && type != "none")
      return Unsupported(g.path() + ": " + a + "rope.scaling.type '" + type + "' is not supported (yarn, none)");
  }
  LR_ASSIGN_OR_RETURN(c.rope_scaling_factor, GetF32Or(g, a + "rope.scaling.factor", 1.0f));
  LR_ASSIGN_OR_RETURN(c.rope_original_ctx, GetIntOr(g, a + "rope.scaling.original_context_length", 0));
  LR_ASSIGN_OR_RETURN(c.yarn_log_multiplier, GetF32Or(g, a + "rope.scaling.yarn_log_multiplier", 0.0f));
  LR_ASSIGN_OR_RETURN(c.yarn_beta_fast, GetF32Or(g, a + "rope.scaling.yarn_beta_fast", 32.0f));
  LR_ASSIGN_OR_RETURN(c.yarn_beta_slow, GetF32Or(g, a + "rope.scaling.yarn_beta_slow", 1.0f));
  LR_ASSIGN_OR_RETURN(c.attn_temperature_scale, GetF32Or(g, a + "attention.temperature_scale", 0.0f));
  LR_ASSIGN_OR_RETURN(c.attn_temperature_length, GetIntOr(g, a + "attention.temperature_length", 0));

  LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* embd, g.FindTensor("token_embd.weight"));
  if (embd->shape.size() != 2 || embd->shape[0] != c.n_embd)
    return Corrupt(g.path() + ": tensor token_embd.weight has shape " + ShapeText(embd->shape) + ", expected [" +
                   std::to_string(c.n_embd) + ", n_vocab]");
  c.n_vocab = static_cast<int>(embd->shape[1]);
  c.tied_output = !g.FindTensor("output.weight").ok();
  return c;
}

Result<std::unique_ptr<Model>> Model::Load(const std::string& path) {
  LR_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::Open(path));
  LR_ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(gguf));
  std::unique_ptr<Model> m(new Model(std::move(gguf), std::move(config)));
  LR_RETURN_IF_ERROR(m->BindWeights());
  return m;
}

Status Model::BindWeights() {
  const ModelConfig& c = config_;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, ops::WeightMatrix* out) -> Status {
    LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* t, gguf_.FindTensor(name));
    if (t->shape.size() != 2 || t->shape[0] != cols || t->shape[1] != rows)
      return Corrupt(gguf_.path() + ": tensor " + name + " has shape " + ShapeText(t->shape) + ", expected [" +
                     std::to_string(cols) + ", " + std::to_string(rows) + "]");
    *out = ops::WeightMatrix{t->type, t->data, rows, cols, ops::RowBytes(t->type, cols)};
    return Status::Ok();
  };
  auto vector = [&](const std::string& name, int64_t n, std::vector<float>* out) -> Status {
    LR_ASSIGN_OR_RETURN(const GgufFile::Tensor* t, gguf_.FindTensor(name));
    if (t->shape.size() != 1 || t->shape[0] != n)
      return Corrupt(gguf_.path() + ": tensor " + name + " has shape " + ShapeText(t->shape) + ", expected [" +
                     std::to_string(n) + "]");
    out->resize(static_cast<size_t>(n));
    ops::DequantizeRow(t->type, t->data, out->data(), n);
    return Status::Ok();
  };
  LR_RETURN_IF_ERROR(matrix("token_embd.weight", c.n_vocab, c.n_embd, &token_embd_));
  if (c.tied_output) {
    output_ = token_embd_;
  } else {
    LR_RETURN_IF_ERROR(matrix("output.weight", c.n_vocab, c.n_embd, &output_));
  }
  LR_RETURN_IF_ERROR(vector("output_norm.weight", c.n_embd, &output_norm_));
  layers_.resize(static_cast<size_t>(c.n_layer));
  for (int i = 0; i < c.n_layer; ++i) {
    LayerWeights& l = layers_[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    LR_RETURN_IF_ERROR(vector(p + "attn_norm.weight", c.n_embd, &l.attn_norm));
    if (c.kv_lora_rank > 0) {
      l.attention = AttentionKind::kMla;
      LR_ASSIGN_OR_RETURN(l.mla, BindMlaWeights(gguf_, c, i));
    } else {
      LR_RETURN_IF_ERROR(matrix(p + "attn_q.weight", int64_t{c.n_head} * c.head_dim, c.n_embd, &l.wq));
      LR_RETURN_IF_ERROR(matrix(p + "attn_k.weight", int64_t{c.n_head_kv} * c.head_dim, c.n_embd, &l.wk));
      LR_RETURN_IF_ERROR(matrix(p + "attn_v.weight", int64_t{c.n_head_kv} * c.head_dim_v, c.n_embd, &l.wv));
      LR_RETURN_IF_ERROR(matrix(p + "attn_output.weight", c.n_embd, int64_t{c.n_head} * c.head_dim_v, &l.wo));
    }
    if (c.qk_norm) {
      LR_RETURN_IF_ERROR(vector(p + "attn_q_norm.weight", c.head_dim, &l.q_norm));
      LR_RETURN_IF_ERROR(vector(p + "attn_k_norm.weight", c.head_dim, &l.k_norm));
    }
    LR_RETURN_IF_ERROR(vector(p + "ffn_norm.weight", c.n_embd, &l.ffn_norm));
    if (c.n_expert > 0 && i >= c.n_leading_dense) {
      l.ffn = FfnKind::kMoe;
      LR_ASSIGN_OR_RETURN(l.moe, BindMoeWeights(gguf_, c, i));
    } else {
      LR_RETURN_IF_ERROR(matrix(p + "ffn_gate.weight", c.n_ff, c.n_embd, &l.gate));
      LR_RETURN_IF_ERROR(matrix(p + "ffn_up.weight", c.n_ff, c.n_embd, &l.up));
      LR_RETURN_IF_ERROR(matrix(p + "ffn_down.weight", c.n_embd, c.n_ff, &l.down));
    }
  }
  // The dense blocks' Q4_1 / Q8_0 products and the output run on copies repacked to 16 interleaved rows where the
  // CPU has kernels for them (kernels.h). A tied output copies token_embd; the lookup keeps reading its GGUF rows.
  if (BestIsa() >= Isa::kAvx2) {
    auto repack = [&](ops::WeightMatrix& w) {
      if (!ops::Repack16Applies(w)) return;
      ops::OwnedWeightMatrix copy = ops::Repack16(w);
      w = copy.view;
      repacked_.push_back(std::move(copy.bytes));
    };
    repack(output_);
    for (LayerWeights& l : layers_) {
      for (ops::WeightMatrix* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) repack(*w);
    }
  }
  rope_inv_freq_ = RopeInvFreq(c);
  return Status::Ok();
}

KvShape Model::kv_shape() const {
  if (config_.kv_lora_rank > 0) return MlaKvShape(config_);
  return KvShape{config_.n_layer, config_.n_head_kv, config_.head_dim, config_.head_dim_v};
}

size_t Model::weight_bytes_per_token() const {
  auto bytes = [](const ops::WeightMatrix& w) { return w.row_bytes * static_cast<size_t>(w.rows); };
  size_t total = bytes(output_) + token_embd_.row_bytes;
  for (const LayerWeights& l : layers_) {
    total += bytes(l.wq) + bytes(l.wk) + bytes(l.wv) + bytes(l.wo) + bytes(l.gate) + bytes(l.up) + bytes(l.down);
    const MlaWeights& a = l.mla;
    total += bytes(a.wq) + bytes(a.wq_a) + bytes(a.wq_b) + bytes(a.wkv_a) + bytes(a.wkv_b) + bytes(a.wo);
    // MoE: the router, the shared experts and expert_used_count of the routed experts.
    const MoeWeights& m = l.moe;
    total += bytes(m.router) + bytes(m.gate_shexp) + bytes(m.up_shexp) + bytes(m.down_shexp);
    if (config_.n_expert > 0)
      total += (bytes(m.gate_exps) + bytes(m.up_exps) + bytes(m.down_exps)) / config_.n_expert * config_.n_expert_used;
  }
  return total;
}

void Model::AttentionGqa(int layer, KvCache& cache, std::span<const BatchToken> batch, const std::vector<int>& pos,
                         const float* rope, Scratch& s, float* x) {
  const ModelConfig& c = config_;
  const LayerWeights& l = layers_[layer];
  const int n = static_cast<int>(batch.size());
  const int e = c.n_embd, hd = c.head_dim, hdv = c.head_dim_v;
  const int qd = c.n_head * hd, kd = c.n_head_kv * hd, vd = c.n_head_kv * hdv, od = c.n_head * hdv;
  const int group = c.n_head / c.n_head_kv;
  float* q = s.q.data();
  float* k = s.k.data();
  float* v = s.v.data();
  const ops::MatMulOut qkv[] = {{&l.wq, q, qd}, {&l.wk, k, kd}, {&l.wv, v, vd}};
  const ops::MatMulOut residual[] = {{&l.wo, x, e, /*add=*/true}};
  const int pairs = n * c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  NormTeam(x, l.attn_norm, s.tokens, ops::UsesQ8(qkv), s);
  ops::MatMulManyQuantizedTeam(qkv, s.xn.data(), s.xq.data(), n);
  // Per (token, KV head): RoPE on the key and the group's queries, then the rows are stored. Every token's rows are
  // stored before any attention (the loop's barrier), so that a token attends to the earlier tokens of its batch.
#pragma omp for schedule(static)
  for (int ih = 0; ih < pairs; ++ih) {
    const int i = ih / c.n_head_kv, h = ih % c.n_head_kv;
    const float* cos_sin = rope + static_cast<size_t>(i) * c.n_rot;
    for (int j = 0; j < group; ++j) {
      float* qh = q + static_cast<size_t>(i) * qd + (h * group + j) * hd;
      if (c.qk_norm) RmsNorm(qh, l.q_norm.data(), hd, c.rms_eps, qh);
      Rope(qh, cos_sin, c.n_rot, c.rope_style);
    }
    float* kh = k + static_cast<size_t>(i) * kd + h * hd;
    if (c.qk_norm) RmsNorm(kh, l.k_norm.data(), hd, c.rms_eps, kh);
    Rope(kh, cos_sin, c.n_rot, c.rope_style);
    cache.Store(batch[i].seq, layer, h, pos[i], k + static_cast<size_t>(i) * kd + h * hd,
                v + static_cast<size_t>(i) * vd + h * hdv);
  }
  if (s.pieces.empty()) {
#pragma omp for schedule(dynamic, 1)
    for (int ih = 0; ih < pairs; ++ih) {
      const int i = ih / c.n_head_kv, h = ih % c.n_head_kv;
      const Status st = cache.Attend(batch[i].seq, layer, h, pos[i] + 1,
                                     q + static_cast<size_t>(i) * qd + h * group * hd, group, scale,
                                     s.attn.data() + static_cast<size_t>(i) * od + h * group * hdv);
      assert(st.ok());
      (void)st;
    }
  } else {
#pragma omp for schedule(dynamic, 1)
    for (size_t j = 0; j < s.pieces.size(); ++j) {
      const Scratch::Piece& p = s.pieces[j];
      const int i = p.pair / c.n_head_kv, h = p.pair % c.n_head_kv;
      const Status st = cache.AttendState(batch[i].seq, layer, h, pos[i] + 1, p.begin, p.end,
                                          q + static_cast<size_t>(i) * qd + h * group * hd, group, scale, &s.states[j]);
      assert(st.ok());
      (void)st;
    }
#pragma omp for schedule(static)
    for (int ih = 0; ih < pairs; ++ih) {
      const int i = ih / c.n_head_kv, h = ih % c.n_head_kv;
      const size_t first = s.first_piece[ih], count = s.first_piece[ih + 1] - s.first_piece[ih];
      kvquant::FinishAttention({&s.states[first], count}, group, hdv,
                               s.attn.data() + static_cast<size_t>(i) * od + h * group * hdv);
    }
  }
  ops::MatMulManyTeam(residual, s.attn.data(), n, s.xq.data());
}

void Model::FfnSwiGlu(int layer, int n, Scratch& s, float* x) {
  const LayerWeights& l = layers_[layer];
  const int e = config_.n_embd, ff = config_.n_ff;
  float* g = s.g.data();
  const float* u = s.u.data();
  const ops::MatMulOut gate_up[] = {{&l.gate, g, ff}, {&l.up, s.u.data(), ff}};
  const ops::MatMulOut residual[] = {{&l.down, x, e, /*add=*/true}};
  const int64_t n_g = int64_t{n} * ff;
  NormTeam(x, l.ffn_norm, s.tokens, ops::UsesQ8(gate_up), s);
  ops::MatMulManyQuantizedTeam(gate_up, s.xn.data(), s.xq.data(), n);
  // g = silu(g) * u, each block of 32 quantized for the down product as soon as it is done (q8 implies ff % 32 == 0).
  const bool q8 = ops::UsesQ8(residual);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < (n_g + 31) / 32; ++b) {
    const int64_t end = std::min(n_g, 32 * b + 32);
    for (int64_t i = 32 * b; i < end; ++i) g[i] = Silu(g[i]) * u[i];
    if (q8) ops::QuantizeRowQ8(g + 32 * b, 32, &s.xq[b]);
  }
  ops::MatMulManyQuantizedTeam(residual, g, s.xq.data(), n);
}

void Model::NormTeam(const float* x, const std::vector<float>& w, const std::vector<int>& rows, bool q8, Scratch& s) {
  const int e = config_.n_embd, m = static_cast<int>(rows.size());
#pragma omp for schedule(static)
  for (int j = 0; j < m; ++j) {
    float* xn = &s.xn[static_cast<size_t>(j) * e];
    RmsNorm(x + static_cast<size_t>(rows[j]) * e, w.data(), e, config_.rms_eps, xn);
    if (q8) ops::QuantizeRowQ8(xn, e, &s.xq[static_cast<size_t>(j) * (e / 32)]);
  }
}

void Model::Logits(const std::vector<int>& rows, Scratch& s, const float* x, float* logits) {
  const ops::MatMulOut out[] = {{&output_, logits, config_.n_vocab}};
  NormTeam(x, output_norm_, rows, ops::UsesQ8(out), s);
  ops::MatMulManyQuantizedTeam(out, s.xn.data(), s.xq.data(), static_cast<int>(rows.size()));
}

Status Model::Forward(KvCache& cache, std::span<const BatchToken> batch, std::vector<float>* logits) {
  const ModelConfig& c = config_;
  logits->clear();
  const int n = static_cast<int>(batch.size());
  if (n == 0) return Status::Ok();
  for (const BatchToken& t : batch)
    if (t.token < 0 || t.token >= c.n_vocab)
      return InvalidArgument("token id " + std::to_string(t.token) + " is outside the vocabulary (" +
                             std::to_string(c.n_vocab) + " tokens)");
  std::vector<int> pos(static_cast<size_t>(n)), seqs(static_cast<size_t>(n)), logit_rows;
  for (int i = 0; i < n; ++i) {
    LR_ASSIGN_OR_RETURN(pos[i], cache.AppendSlot(batch[i].seq));
    seqs[i] = batch[i].seq;
    if (batch[i].want_logits) logit_rows.push_back(i);
  }
  logits->resize(logit_rows.size() * c.n_vocab);

  const int e = c.n_embd;
  std::vector<float> x(static_cast<size_t>(n) * e), delta(x.size());
  for (int i = 0; i < n; ++i) ops::DequantizeRow(token_embd_.type, token_embd_.row(batch[i].token), &x[i * e], e);
  // The RoPE angles of each token's position, shared by the layers.
  std::vector<float> rope(static_cast<size_t>(n) * c.n_rot);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < c.n_rot / 2; ++j) {
      const float angle = static_cast<float>(pos[i]) * rope_inv_freq_[j];
      rope[static_cast<size_t>(i) * c.n_rot + 2 * j] = std::cos(angle);
      rope[static_cast<size_t>(i) * c.n_rot + 2 * j + 1] = std::sin(angle);
    }
  }
  Scratch s;
  const size_t nz = static_cast<size_t>(n);
  s.tokens.resize(nz);
  std::iota(s.tokens.begin(), s.tokens.end(), 0);
  s.xn.resize(nz * e);
  s.q.resize(nz * c.n_head * c.head_dim);
  s.k.resize(nz * c.n_head_kv * c.head_dim);
  s.v.resize(nz * c.n_head_kv * c.head_dim_v);
  s.attn.resize(nz * c.n_head * c.head_dim_v);
  s.g.resize(nz * c.n_ff);
  s.u.resize(nz * c.n_ff);
  s.xq.resize(nz * (std::max({e, c.n_head * c.head_dim_v, c.n_ff}) / 32));
  // Ranges of kSplitAttentionFrom positions or more are attended in two halves.
  if (*std::max_element(pos.begin(), pos.end()) + 1 >= kSplitAttentionFrom) {
    for (int i = 0; i < n; ++i) {
      const int n_ctx = pos[i] + 1;
      for (int h = 0; h < c.n_head_kv; ++h) {
        const int pair = i * c.n_head_kv + h;
        s.first_piece.push_back(static_cast<int>(s.pieces.size()));
        if (n_ctx >= kSplitAttentionFrom) {
          s.pieces.push_back({pair, 0, n_ctx / 2});
          s.pieces.push_back({pair, n_ctx / 2, n_ctx});
        } else {
          s.pieces.push_back({pair, 0, n_ctx});
        }
      }
    }
    s.first_piece.push_back(static_cast<int>(s.pieces.size()));
    s.states.resize(s.pieces.size());
  }

  // Step b < 2 * n_layer is block b % 2 (attention, FFN) of layer b / 2; step 2 * n_layer the logits. A run of dense
  // steps shares one parallel region (one per forward step for a dense model); MLA and MoE blocks open their own.
  const int n_steps = 2 * c.n_layer + 1;
  auto dense = [&](int b) {
    if (b == n_steps - 1) return true;
    const LayerWeights& l = layers_[b / 2];
    return b % 2 == 0 ? l.attention == AttentionKind::kGqa : l.ffn == FfnKind::kSwiGlu;
  };
  for (int b = 0; b < n_steps;) {
    if (!dense(b)) {
      const int layer = b / 2;
      const LayerWeights& l = layers_[layer];
      const bool attention = b % 2 == 0;
      RmsNormRows(x.data(), attention ? l.attn_norm : l.ffn_norm, n, c.rms_eps, s.xn.data());
      if (attention) {
        MlaAttention(c, l.mla, rope_inv_freq_, layer, cache, seqs, pos, s.xn.data(), delta.data());
      } else {
        MoeFfn(c, l.moe, n, s.xn.data(), delta.data());
      }
      for (size_t i = 0; i < x.size(); ++i) x[i] += delta[i];
      ++b;
      continue;
    }
    int end = b + 1;
    while (end < n_steps && dense(end)) ++end;
#pragma omp parallel
    for (int i = b; i < end; ++i) {
      if (i == n_steps - 1) {
        if (!logit_rows.empty()) Logits(logit_rows, s, x.data(), logits->data());
      } else if (i % 2 == 0) {
        AttentionGqa(i / 2, cache, batch, pos, rope.data(), s, x.data());
      } else {
        FfnSwiGlu(i / 2, n, s, x.data());
      }
    }
    b = end;
  }
  return Status::Ok();
}

}  // namespace lr::inference
