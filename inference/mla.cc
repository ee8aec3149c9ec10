#include "inference/mla.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <numbers>
#include <string>
#include <utility>

#include "inference/weights.h"
#include "kvquant/kernels.h"
#include "ops/kernels.h"
#include "ops/ops.h"

namespace lr::inference {
namespace {

float QueryTemperature(const ModelConfig& c, int pos) {
  if (c.attn_temperature_scale <= 0.0f || c.attn_temperature_length <= 0) return 1.0f;
  return 1.0f + c.attn_temperature_scale * std::log1p(static_cast<float>(pos / c.attn_temperature_length));
}

// Tokens per query block of MlaAttendChunk, and the shortest run of a batch attended so (shorter ones, decode steps
// among them, attend token by token: the rows' decode would be shared by too few queries).
constexpr int kQueryBlock = 32;
constexpr int kMinBlockRun = 16;

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

float MlaSoftmaxScale(const ModelConfig& c) {
  float mscale = 1.0f;
  if (c.rope.yarn() && c.rope.yarn_log_multiplier > 0.0f)
    mscale = 1.0f + c.rope.yarn_log_multiplier * std::log(c.rope.scaling_factor);
  return mscale * mscale / std::sqrt(static_cast<float>(c.head_dim));
}

KvShape MlaKvShape(const ModelConfig& c) { return KvShape{c.n_layer, 1, c.kv_lora_rank + c.qk_rope_dim, 0}; }

void MlaAttendChunk(const KvCache& cache, int layer, int seq, int first_pos, int n_tokens, int heads, int v_dim,
                    const float* q, int64_t q_head_stride, float scale, float* out, int64_t out_head_stride) {
  const kvquant::RowCodec& codec = cache.k_codec(layer, 0);
  const int row = codec.dim(), n_rows = first_pos + n_tokens;
  std::vector<kvquant::RowSpan> spans;
  cache.Spans(seq, layer, 0, n_rows, &spans);
  std::vector<std::pair<const uint8_t*, int>> src;  // (stored row, position) of rows 0..n_rows
  src.reserve(n_rows);
  for (const kvquant::RowSpan& s : spans)
    for (int r = 0; r < s.n_rows; ++r) src.emplace_back(s.k + static_cast<size_t>(r) * codec.row_bytes(), s.pos + r);
  assert(static_cast<int>(src.size()) == n_rows);
  std::vector<float> rows(static_cast<size_t>(n_rows) * row), rows_t(static_cast<size_t>(row) * n_rows);
  const int n_blocks = (n_tokens + kQueryBlock - 1) / kQueryBlock;
  const kvquant::Kernels& kernels = *kvquant::GetKernels(BestIsa());
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int t = 0; t < n_rows; ++t) {
      float* r = &rows[static_cast<size_t>(t) * row];
      codec.DecodeRow(src[t].first, r, src[t].second);
      for (int d = 0; d < row; ++d) rows_t[static_cast<size_t>(d) * n_rows + t] = r[d];
    }
    std::vector<float> p(static_cast<size_t>(kQueryBlock) * n_rows);
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < heads * n_blocks; ++task) {
      const int b = n_blocks - 1 - task / heads, h = task % heads;  // the longest blocks first
      const int first = b * kQueryBlock, count = std::min(kQueryBlock, n_tokens - first);
      const int cols = first_pos + first + count;  // the rows the block's last token sees
      ops::GemmF32(count, cols, row, q + h * q_head_stride + static_cast<int64_t>(first) * row, row, rows_t.data(),
                   n_rows, p.data(), cols);
      for (int i = 0; i < count; ++i) {
        float* pi = &p[static_cast<size_t>(i) * cols];
        const int seen = first_pos + first + i + 1;
        for (int t = 0; t < seen; ++t) pi[t] *= scale;
        float max = -std::numeric_limits<float>::infinity();
        const float inv_sum = 1.0f / kernels.exp_sum(pi, seen, &max);
        for (int t = 0; t < seen; ++t) pi[t] *= inv_sum;
        std::fill(pi + seen, pi + cols, 0.0f);
      }
      ops::GemmF32(count, v_dim, cols, p.data(), cols, rows.data(), row,
                   out + h * out_head_stride + static_cast<int64_t>(first) * v_dim, v_dim);
    }
  }
}

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

  // Absorb k_b into the query: q_abs[h][i] = [k_b_hᵀ q_nope | q_rope], against the stored [latent | k_rope] rows;
  // laid out [head][token], so that a head's queries of consecutive tokens are one matrix.
  std::vector<float> k_b(static_cast<size_t>(heads) * nope * lat);
  for (int h = 0; h < heads; ++h)
    for (int j = 0; j < nope; ++j)
      ops::DequantizeRow(w.wkv_b.type, w.wkv_b.row(static_cast<int64_t>(h) * (nope + head_dim_v) + j),
                         &k_b[(static_cast<size_t>(h) * nope + j) * lat], lat);
  std::vector<float> q_abs(static_cast<size_t>(heads) * n * row);
#pragma omp parallel for schedule(static)
  for (int h = 0; h < heads; ++h) {
    float* qa = &q_abs[static_cast<size_t>(h) * n * row];
    ops::GemmF32(n, lat, nope, &q[static_cast<size_t>(h) * head_dim], static_cast<int64_t>(q_width),
                 &k_b[static_cast<size_t>(h) * nope * lat], lat, qa, row);
    for (int i = 0; i < n; ++i)
      std::copy_n(&q[i * q_width + static_cast<size_t>(h) * head_dim + nope], rope,
                  qa + static_cast<size_t>(i) * row + lat);
  }

  // Attention over the latent rows; results laid out [head][token][latent] for the per-head v_b products below.
  // Runs of kMinBlockRun or more tokens of one sequence at consecutive positions (a prompt chunk) attend in blocks;
  // the other tokens (decode steps) one at a time over the compressed rows.
  std::vector<float> latent_out(static_cast<size_t>(heads) * n * lat);
  const float scale = MlaSoftmaxScale(c);
  std::vector<int> single;
  for (int begin = 0, end = 0; begin < n; begin = end) {
    for (end = begin + 1; end < n && seq[end] == seq[begin] && pos[end] == pos[end - 1] + 1;) ++end;
    if (end - begin >= kMinBlockRun) {
      MlaAttendChunk(cache, layer, seq[begin], pos[begin], end - begin, heads, lat,
                     &q_abs[static_cast<size_t>(begin) * row], static_cast<int64_t>(n) * row, scale,
                     &latent_out[static_cast<size_t>(begin) * lat], static_cast<int64_t>(n) * lat);
    } else {
      for (int i = begin; i < end; ++i) single.push_back(i);
    }
  }
  FirstError error;
#pragma omp parallel
  {
    std::vector<kvquant::RowSpan> spans;
    std::vector<float> qi(static_cast<size_t>(heads) * row), o(static_cast<size_t>(heads) * lat);
#pragma omp for schedule(dynamic, 1)
    for (size_t k = 0; k < single.size(); ++k) {
      const int i = single[k];
      spans.clear();
      cache.Spans(seq[i], layer, 0, pos[i] + 1, &spans);
      for (int h = 0; h < heads; ++h)
        std::copy_n(&q_abs[(static_cast<size_t>(h) * n + i) * row], row, &qi[static_cast<size_t>(h) * row]);
      error.Record(kvquant::AttendSharedKV(cache.k_codec(layer, 0), lat, qi.data(), heads, spans, scale, o.data()));
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
