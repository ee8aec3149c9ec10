#include "inference/mla.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <numbers>
#include <string>

#include "inference/weights.h"
#include "ops/ops.h"

namespace lr::inference {
namespace {

float SoftmaxScale(const ModelConfig& c) {
  float mscale = 1.0f;
  if (c.rope.yarn() && c.rope.yarn_log_multiplier > 0.0f)
    mscale = 1.0f + c.rope.yarn_log_multiplier * std::log(c.rope.scaling_factor);
  return mscale * mscale / std::sqrt(static_cast<float>(c.head_dim));
}

float QueryTemperature(const ModelConfig& c, int pos) {
  if (c.attn_temperature_scale <= 0.0f || c.attn_temperature_length <= 0) return 1.0f;
  return 1.0f + c.attn_temperature_scale * std::log1p(static_cast<float>(pos / c.attn_temperature_length));
}

}  // namespace

Result<MlaWeights> BindMlaWeights(const GgufFile& g, const ModelConfig& c, int layer) {
  const std::string a = c.arch + ".";
  if (c.qk_rope_dim < 2 || c.qk_rope_dim % 2 != 0 || c.qk_nope_dim < 0 || c.kv_lora_rank < 1)
    return Corrupt(g.path() + ": " + a + "rope.dimension_count (" + std::to_string(c.qk_rope_dim) +
                   ") must be even, positive and at most " + a + "attention.key_length (" + std::to_string(c.head_dim) +
                   ")");
  const std::string p = "blk." + std::to_string(layer) + ".";
  const int64_t q_rows = int64_t{c.n_head} * c.head_dim;
  const int64_t kv_b_rows = int64_t{c.n_head} * (c.qk_nope_dim + c.head_dim_v);
  MlaWeights w;
  if (c.q_lora_rank > 0) {
    LR_ASSIGN_OR_RETURN(w.wq_a, BindMatrix(g, p + "attn_q_a.weight", c.q_lora_rank, c.n_embd));
    LR_ASSIGN_OR_RETURN(w.q_a_norm, BindVector(g, p + "attn_q_a_norm.weight", c.q_lora_rank));
    LR_ASSIGN_OR_RETURN(w.wq_b, BindMatrix(g, p + "attn_q_b.weight", q_rows, c.q_lora_rank));
  } else {
    LR_ASSIGN_OR_RETURN(w.wq, BindMatrix(g, p + "attn_q.weight", q_rows, c.n_embd));
  }
  LR_ASSIGN_OR_RETURN(w.wkv_a,
                      BindMatrix(g, p + "attn_kv_a_mqa.weight", int64_t{c.kv_lora_rank} + c.qk_rope_dim, c.n_embd));
  LR_ASSIGN_OR_RETURN(w.kv_a_norm, BindVector(g, p + "attn_kv_a_norm.weight", c.kv_lora_rank));
  if (!g.FindTensor(p + "attn_kv_b.weight").ok() && g.FindTensor(p + "attn_k_b.weight").ok())
    return Unsupported(g.path() + ": " + p +
                       "attn_k_b / attn_v_b (kv_b split per head) is not supported; this "
                       "runner reads the whole " +
                       p + "attn_kv_b.weight");
  LR_ASSIGN_OR_RETURN(w.wkv_b, BindMatrix(g, p + "attn_kv_b.weight", kv_b_rows, c.kv_lora_rank));
  LR_ASSIGN_OR_RETURN(w.wo, BindMatrix(g, p + "attn_output.weight", c.n_embd, int64_t{c.n_head} * c.head_dim_v));
  return w;
}

KvShape MlaKvShape(const ModelConfig& c) { return KvShape{c.n_layer, 1, c.kv_lora_rank + c.qk_rope_dim, 0}; }

Status MlaAttention(const ModelConfig& c, const MlaWeights& w, const std::vector<float>& inv_freq, int layer,
                    KvCache& cache, const std::vector<int>& seq, const std::vector<int>& pos, const float* x,
                    float* out) {
  const int n = static_cast<int>(pos.size());
  const int heads = c.n_head, head_dim = c.head_dim, nope = c.qk_nope_dim, rope = c.qk_rope_dim,
            head_dim_v = c.head_dim_v;
  const int lat = c.kv_lora_rank, row = lat + rope;
  const size_t q_width = static_cast<size_t>(heads) * head_dim;

  std::vector<float> q(n * q_width);
  if (c.q_lora_rank > 0) {
    std::vector<float> qa(static_cast<size_t>(n) * c.q_lora_rank);
    ops::MatMul(w.wq_a, x, n, qa.data(), c.q_lora_rank);
    for (int i = 0; i < n; ++i)
      ops::RmsNorm(&qa[static_cast<size_t>(i) * c.q_lora_rank], w.q_a_norm.data(), c.q_lora_rank, c.rms_eps,
                   &qa[static_cast<size_t>(i) * c.q_lora_rank]);
    ops::MatMul(w.wq_b, qa.data(), n, q.data(), static_cast<int64_t>(q_width));
  } else {
    ops::MatMul(w.wq, x, n, q.data(), static_cast<int64_t>(q_width));
  }
  std::vector<float> kv(static_cast<size_t>(n) * row);
  ops::MatMul(w.wkv_a, x, n, kv.data(), row);

  const float cs_factor = ops::RopeCosSinFactor(c.rope);
  std::vector<float> cos_sin(static_cast<size_t>(rope));
  for (int i = 0; i < n; ++i) {
    ops::RopeCosSin(pos[i], inv_freq, cs_factor, cos_sin.data());
    float* kv_i = &kv[static_cast<size_t>(i) * row];
    ops::RmsNorm(kv_i, w.kv_a_norm.data(), lat, c.rms_eps, kv_i);
    ops::Rope(kv_i + lat, cos_sin.data(), rope, ops::RopeStyle::kAdjacentPairs);
    const float temperature = QueryTemperature(c, pos[i]);
    for (int h = 0; h < heads; ++h) {
      float* qh = &q[i * q_width + static_cast<size_t>(h) * head_dim];
      ops::Rope(qh + nope, cos_sin.data(), rope, ops::RopeStyle::kAdjacentPairs);
      for (int d = 0; d < head_dim; ++d) qh[d] *= temperature;
    }
    cache.k_codec(layer, 0).EncodeRow(kv_i, cache.KRow(seq[i], layer, 0, pos[i]), pos[i]);
  }

  // Absorb k_b into the query: q_abs[i][h] = [k_b_hᵀ q_nope | q_rope], against the stored [latent | k_rope] rows.
  std::vector<float> k_b(static_cast<size_t>(heads) * nope * lat);
  for (int h = 0; h < heads; ++h)
    for (int j = 0; j < nope; ++j)
      ops::DequantizeRow(w.wkv_b.type, w.wkv_b.row(static_cast<int64_t>(h) * (nope + head_dim_v) + j),
                         &k_b[(static_cast<size_t>(h) * nope + j) * lat], lat);
  std::vector<float> q_abs(static_cast<size_t>(n) * heads * row, 0.0f);
#pragma omp parallel for schedule(static)
  for (int ih = 0; ih < n * heads; ++ih) {
    const int i = ih / heads, h = ih % heads;
    const float* qh = &q[i * q_width + static_cast<size_t>(h) * head_dim];
    float* qa = &q_abs[static_cast<size_t>(ih) * row];
    for (int j = 0; j < nope; ++j) {
      const float* kb = &k_b[(static_cast<size_t>(h) * nope + j) * lat];
      for (int l = 0; l < lat; ++l) qa[l] += qh[j] * kb[l];
    }
    std::copy_n(qh + nope, rope, qa + lat);
  }

  // Attention over the latent rows; results laid out [head][token][latent] for the per-head v_b products below.
  std::vector<float> latent_out(static_cast<size_t>(heads) * n * lat);
  const float scale = SoftmaxScale(c);
  FirstError error;
#pragma omp parallel
  {
    std::vector<kvquant::RowSpan> spans;
    std::vector<float> o(static_cast<size_t>(heads) * lat);
#pragma omp for schedule(dynamic, 1)
    for (int i = 0; i < n; ++i) {
      spans.clear();
      cache.Spans(seq[i], layer, 0, pos[i] + 1, &spans);
      error.Record(kvquant::AttendSharedKV(cache.k_codec(layer, 0), lat, &q_abs[static_cast<size_t>(i) * heads * row],
                                           heads, spans, scale, o.data()));
      for (int h = 0; h < heads; ++h)
        std::copy_n(&o[static_cast<size_t>(h) * lat], lat, &latent_out[(static_cast<size_t>(h) * n + i) * lat]);
    }
  }

  LR_RETURN_IF_ERROR(error.Take());

  // Head h's output: v_b_h times its attended latent, the heads' products in one region.
  std::vector<float> attn(static_cast<size_t>(n) * heads * head_dim_v);
  std::vector<ops::MatMulTask> v_b;
  for (int h = 0; h < heads; ++h) {
    const ops::WeightMatrix w_h{w.wkv_b.type, w.wkv_b.row(static_cast<int64_t>(h) * (nope + head_dim_v) + nope),
                                head_dim_v, lat, w.wkv_b.row_bytes};
    v_b.push_back({w_h, &latent_out[static_cast<size_t>(h) * n * lat], nullptr, n,
                   &attn[static_cast<size_t>(h) * head_dim_v], static_cast<int64_t>(heads) * head_dim_v});
  }
  const ops::MatMulOut probe[] = {{&w.wkv_b, nullptr, 0}};
  std::vector<ops::BlockQ8> latent_q(ops::UsesQ8(probe) ? latent_out.size() / 32 : 0);
  for (int h = 0; h < heads && !latent_q.empty(); ++h) v_b[h].xq = &latent_q[static_cast<size_t>(h) * n * lat / 32];
#pragma omp parallel
  {
    if (!latent_q.empty()) {
#pragma omp for schedule(static)
      for (size_t b = 0; b < latent_q.size(); ++b) ops::QuantizeRowQ8(&latent_out[32 * b], 32, &latent_q[b]);
    }
    ops::MatMulTasksTeam(v_b);
  }
  ops::MatMul(w.wo, attn.data(), n, out, c.n_embd);
  return Status::Ok();
}

}  // namespace lr::inference
