#include "inference/model.h"

#include <algorithm>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstring>
#include <numeric>
#include <unordered_map>

#include "inference/weights.h"

namespace lr::inference {
namespace {

void RmsNormRows(const float* x, const std::vector<float>& w, int rows, float eps, float* y) {
  const int n = static_cast<int>(w.size());
  for (int r = 0; r < rows; ++r)
    ops::RmsNorm(x + static_cast<size_t>(r) * n, w.data(), n, eps, y + static_cast<size_t>(r) * n);
}

}  // namespace

Result<std::unique_ptr<Model>> Model::Load(const std::string& path) {
  LR_ASSIGN_OR_RETURN(GgufFile gguf, GgufFile::Open(path));
  LR_ASSIGN_OR_RETURN(ModelConfig config, ReadModelConfig(gguf));
  std::unique_ptr<Model> m(new Model(std::move(gguf), std::move(config)));
  LR_RETURN_IF_ERROR(m->BindWeights());
  return m;
}

Status Model::BindWeights() {
  const ModelConfig& c = config_;
  LR_ASSIGN_OR_RETURN(token_embd_, BindMatrix(gguf_, "token_embd.weight", c.n_vocab, c.n_embd));
  if (c.tied_output) {
    output_ = token_embd_;
  } else {
    LR_ASSIGN_OR_RETURN(output_, BindMatrix(gguf_, "output.weight", c.n_vocab, c.n_embd));
  }
  LR_ASSIGN_OR_RETURN(output_norm_, BindVector(gguf_, "output_norm.weight", c.n_embd));
  layers_.resize(static_cast<size_t>(c.n_layer));
  for (int i = 0; i < c.n_layer; ++i) {
    LayerWeights& l = layers_[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    LR_ASSIGN_OR_RETURN(l.attn_norm, BindVector(gguf_, p + "attn_norm.weight", c.n_embd));
    if (c.kv_lora_rank > 0) {
      l.attention = AttentionKind::kMla;
      LR_ASSIGN_OR_RETURN(l.mla, BindMlaWeights(gguf_, c, i));
    } else {
      LR_ASSIGN_OR_RETURN(l.wq, BindMatrix(gguf_, p + "attn_q.weight", int64_t{c.n_head} * c.head_dim, c.n_embd));
      LR_ASSIGN_OR_RETURN(l.wk, BindMatrix(gguf_, p + "attn_k.weight", int64_t{c.n_head_kv} * c.head_dim, c.n_embd));
      LR_ASSIGN_OR_RETURN(l.wv, BindMatrix(gguf_, p + "attn_v.weight", int64_t{c.n_head_kv} * c.head_dim_v, c.n_embd));
      LR_ASSIGN_OR_RETURN(l.wo,
                          BindMatrix(gguf_, p + "attn_output.weight", c.n_embd, int64_t{c.n_head} * c.head_dim_v));
    }
    if (c.qkv_bias) {
      LR_ASSIGN_OR_RETURN(l.bq, BindVector(gguf_, p + "attn_q.bias", int64_t{c.n_head} * c.head_dim));
      LR_ASSIGN_OR_RETURN(l.bk, BindVector(gguf_, p + "attn_k.bias", int64_t{c.n_head_kv} * c.head_dim));
      LR_ASSIGN_OR_RETURN(l.bv, BindVector(gguf_, p + "attn_v.bias", int64_t{c.n_head_kv} * c.head_dim_v));
    }
    if (c.qk_norm) {
      LR_ASSIGN_OR_RETURN(l.q_norm, BindVector(gguf_, p + "attn_q_norm.weight", c.head_dim));
      LR_ASSIGN_OR_RETURN(l.k_norm, BindVector(gguf_, p + "attn_k_norm.weight", c.head_dim));
    }
    LR_ASSIGN_OR_RETURN(l.ffn_norm, BindVector(gguf_, p + "ffn_norm.weight", c.n_embd));
    if (c.n_expert > 0 && i >= c.n_leading_dense) {
      l.ffn = FfnKind::kMoe;
      LR_ASSIGN_OR_RETURN(l.moe, BindMoeWeights(gguf_, c, i));
    } else {
      LR_ASSIGN_OR_RETURN(l.gate, BindMatrix(gguf_, p + "ffn_gate.weight", c.n_ff, c.n_embd));
      LR_ASSIGN_OR_RETURN(l.up, BindMatrix(gguf_, p + "ffn_up.weight", c.n_ff, c.n_embd));
      LR_ASSIGN_OR_RETURN(l.down, BindMatrix(gguf_, p + "ffn_down.weight", c.n_embd, c.n_ff));
    }
  }
  // The Q4_0 / Q4_1 / Q8_0 products (dense, MLA but attn_kv_b, which is read by rows, MoE) and the output run on
  // copies repacked to 16 interleaved rows where the CPU has kernels for them (kernels.h). A tied output copies
  // token_embd; the lookup keeps reading its GGUF rows.
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
      MlaWeights& a = l.mla;
      for (ops::WeightMatrix* w : {&a.wq, &a.wq_a, &a.wq_b, &a.wkv_a, &a.wo}) repack(*w);
      MoeWeights& m = l.moe;
      for (ops::WeightMatrix* w : {&m.gate_shexp, &m.up_shexp, &m.down_shexp}) repack(*w);
      // Stacked experts when each expert's rows are whole row groups (MoeFfn takes an expert's rows as a view).
      if (c.n_ff_expert % 16 == 0 && c.n_embd % 16 == 0) {
        for (ops::WeightMatrix* w : {&m.gate_exps, &m.up_exps, &m.down_exps}) repack(*w);
      }
    }
  }
  rope_inv_freq_ = ops::RopeInvFreq(c.rope);
  return Status::Ok();
}

KvShape Model::kv_shape() const {
  if (config_.kv_lora_rank > 0) return MlaKvShape(config_);
  return KvShape{config_.n_layer, config_.n_head_kv, config_.head_dim, config_.head_dim_v};
}

size_t Model::WeightBytes(bool all_experts) const {
  auto bytes = [](const ops::WeightMatrix& w) { return w.row_bytes * static_cast<size_t>(w.rows); };
  size_t total = bytes(output_) + token_embd_.row_bytes;
  for (const LayerWeights& l : layers_) {
    total += bytes(l.wq) + bytes(l.wk) + bytes(l.wv) + bytes(l.wo) + bytes(l.gate) + bytes(l.up) + bytes(l.down);
    const MlaWeights& a = l.mla;
    total += bytes(a.wq) + bytes(a.wq_a) + bytes(a.wq_b) + bytes(a.wkv_a) + bytes(a.wkv_b) + bytes(a.wo);
    // MoE: the router, the shared experts and the routed experts read.
    const MoeWeights& m = l.moe;
    total += bytes(m.router) + bytes(m.gate_shexp) + bytes(m.up_shexp) + bytes(m.down_shexp);
    const size_t experts = bytes(m.gate_exps) + bytes(m.up_exps) + bytes(m.down_exps);
    if (config_.n_expert > 0) total += all_experts ? experts : experts / config_.n_expert * config_.n_expert_used;
  }
  return total;
}

void Model::AttentionGqa(int layer, KvCache& cache, std::span<const BatchToken> batch, const std::vector<int>& pos,
                         const float* rope, Scratch& s, float* x) {
  const ModelConfig& c = config_;
  const LayerWeights& l = layers_[layer];
  const int n = static_cast<int>(batch.size());
  const int n_embd = c.n_embd, head_dim = c.head_dim, head_dim_v = c.head_dim_v;
  const int q_width = c.n_head * head_dim, k_width = c.n_head_kv * head_dim, v_width = c.n_head_kv * head_dim_v,
            out_width = c.n_head * head_dim_v;
  const int group = c.n_head / c.n_head_kv;
  float* q = s.q.data();
  float* k = s.k.data();
  float* v = s.v.data();
  const ops::MatMulOut qkv[] = {{&l.wq, q, q_width}, {&l.wk, k, k_width}, {&l.wv, v, v_width}};
  const ops::MatMulOut residual[] = {{&l.wo, x, n_embd, /*add=*/true}};
  const int pairs = n * c.n_head_kv;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  NormTeam(x, l.attn_norm, s.tokens, ops::UsesQ8(qkv), s);
  ops::MatMulManyQuantizedTeam(qkv, s.xn.data(), s.xq.data(), n);
  // Per (token, KV head): the biases, RoPE on the key and the group's queries, then the rows are stored. Every token's
  // rows are stored before any attention (the loop's barrier), so that a token attends to the earlier tokens of its
  // batch.
#pragma omp for schedule(static)
  for (int ih = 0; ih < pairs; ++ih) {
    const int i = ih / c.n_head_kv, h = ih % c.n_head_kv;
    const float* cos_sin = rope + static_cast<size_t>(i) * c.rope.n_rot;
    float* kh = k + static_cast<size_t>(i) * k_width + h * head_dim;
    float* vh = v + static_cast<size_t>(i) * v_width + h * head_dim_v;
    if (c.qkv_bias) {
      const float* bq = l.bq.data() + h * group * head_dim;
      float* qg = q + static_cast<size_t>(i) * q_width + h * group * head_dim;
      for (int d = 0; d < group * head_dim; ++d) qg[d] += bq[d];
      for (int d = 0; d < head_dim; ++d) kh[d] += l.bk[h * head_dim + d];
      for (int d = 0; d < head_dim_v; ++d) vh[d] += l.bv[h * head_dim_v + d];
    }
    for (int j = 0; j < group; ++j) {
      float* qh = q + static_cast<size_t>(i) * q_width + (h * group + j) * head_dim;
      if (c.qk_norm) ops::RmsNorm(qh, l.q_norm.data(), head_dim, c.rms_eps, qh);
      ops::Rope(qh, cos_sin, c.rope.n_rot, c.rope.style);
    }
    if (c.qk_norm) ops::RmsNorm(kh, l.k_norm.data(), head_dim, c.rms_eps, kh);
    ops::Rope(kh, cos_sin, c.rope.n_rot, c.rope.style);
    cache.Store(batch[i].seq, layer, h, pos[i], kh, vh);
    if (const int g = s.group_of.empty() ? -1 : s.group_of[i]; g >= 0) {
      const size_t block = static_cast<size_t>(group) * head_dim;
      std::memcpy(s.qblock.data() + s.qblock_at[g] + (h * s.groups[g].members.size() + s.member_index[i]) * block,
                  q + static_cast<size_t>(i) * q_width + h * block, block * sizeof(float));
    }
  }
  if (s.pieces.empty()) {
#pragma omp for schedule(dynamic, 1)
    for (int ih = 0; ih < pairs; ++ih) {
      const int i = ih / c.n_head_kv, h = ih % c.n_head_kv;
      s.error.Record(cache.Attend(batch[i].seq, layer, h, pos[i] + 1,
                                  q + static_cast<size_t>(i) * q_width + h * group * head_dim, group, scale,
                                  s.attn.data() + static_cast<size_t>(i) * out_width + h * group * head_dim_v));
    }
  } else {
    // The shared pieces (a block of every member's queries over the group's shared pages, read once), then each
    // token's own pieces.
    const size_t n_chunks = s.chunks.size();
#pragma omp for schedule(dynamic, 1)
    for (size_t j = 0; j < n_chunks + s.pieces.size(); ++j) {
      if (j < n_chunks) {
        const Scratch::Chunk& ch = s.chunks[j];
        const SharedPrefixGroup& g = s.groups[ch.group];
        const int lead = g.members[0], n_members = static_cast<int>(g.members.size());
        const float* block =
            s.qblock.data() + s.qblock_at[ch.group] + static_cast<size_t>(ch.head) * n_members * group * head_dim;
        s.error.Record(cache.AttendState(batch[lead].seq, layer, ch.head, pos[lead] + 1, ch.begin, ch.end, block,
                                         n_members * group, scale, &s.chunk_states[j]));
        continue;
      }
      const Scratch::Piece& p = s.pieces[j - n_chunks];
      const int i = p.pair / c.n_head_kv, h = p.pair % c.n_head_kv;
      s.error.Record(cache.AttendState(batch[i].seq, layer, h, pos[i] + 1, p.begin, p.end,
                                       q + static_cast<size_t>(i) * q_width + h * group * head_dim, group, scale,
                                       &s.states[j - n_chunks]));
    }
    // Each (token, KV head): its own states merged, with its slice of its group's shared states.
#pragma omp for schedule(static)
    for (int ih = 0; ih < pairs; ++ih) {
      const int i = ih / c.n_head_kv, h = ih % c.n_head_kv;
      const size_t first = s.first_piece[ih], count = s.first_piece[ih + 1] - s.first_piece[ih];
      float* out = s.attn.data() + static_cast<size_t>(i) * out_width + h * group * head_dim_v;
      const int g = s.group_of.empty() ? -1 : s.group_of[i];
      if (g < 0) {
        kvquant::FinishAttention({&s.states[first], count}, group, head_dim_v, out);
        continue;
      }
      thread_local std::vector<kvquant::AttentionState> all;
      const int chunks = s.n_chunks[g];
      all.resize(count + chunks);
      for (size_t j = 0; j < count; ++j) all[j] = s.states[first + j];
      for (int ch = 0; ch < chunks; ++ch) {
        kvquant::SliceAttentionState(s.chunk_states[s.first_chunk[g] + h * chunks + ch], s.member_index[i] * group,
                                     group, head_dim_v, &all[count + ch]);
      }
      kvquant::FinishAttention(all, group, head_dim_v, out);
    }
  }
  ops::MatMulManyTeam(residual, s.attn.data(), n, s.xq.data());
}

void Model::FfnSwiGlu(int layer, int n, Scratch& s, float* x) {
  const LayerWeights& l = layers_[layer];
  const int n_embd = config_.n_embd, ff = config_.n_ff;
  float* g = s.g.data();
  const float* u = s.u.data();
  const ops::MatMulOut gate_up[] = {{&l.gate, g, ff}, {&l.up, s.u.data(), ff}};
  const ops::MatMulOut residual[] = {{&l.down, x, n_embd, /*add=*/true}};
  const int64_t n_g = int64_t{n} * ff;
  NormTeam(x, l.ffn_norm, s.tokens, ops::UsesQ8(gate_up), s);
  ops::MatMulManyQuantizedTeam(gate_up, s.xn.data(), s.xq.data(), n);
  // g = silu(g) * u, each block of 32 quantized for the down product as soon as it is done (q8 implies ff % 32 == 0).
  const bool q8 = ops::UsesQ8(residual);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < (n_g + 31) / 32; ++b) {
    const int64_t end = std::min(n_g, 32 * b + 32);
    for (int64_t i = 32 * b; i < end; ++i) g[i] = ops::Silu(g[i]) * u[i];
    if (q8) ops::QuantizeRowQ8(g + 32 * b, 32, &s.xq[b]);
  }
  ops::MatMulManyQuantizedTeam(residual, g, s.xq.data(), n);
}

void Model::NormTeam(const float* x, const std::vector<float>& w, const std::vector<int>& rows, bool q8, Scratch& s) {
  const int n_embd = config_.n_embd, m = static_cast<int>(rows.size());
#pragma omp for schedule(static)
  for (int j = 0; j < m; ++j) {
    float* xn = &s.xn[static_cast<size_t>(j) * n_embd];
    ops::RmsNorm(x + static_cast<size_t>(rows[j]) * n_embd, w.data(), n_embd, config_.rms_eps, xn);
    if (q8) ops::QuantizeRowQ8(xn, n_embd, &s.xq[static_cast<size_t>(j) * (n_embd / 32)]);
  }
}

void Model::Logits(const std::vector<int>& rows, Scratch& s, const float* x, float* logits) {
  const ops::MatMulOut out[] = {{&output_, logits, config_.n_vocab}};
  NormTeam(x, output_norm_, rows, ops::UsesQ8(out), s);
  ops::MatMulManyQuantizedTeam(out, s.xn.data(), s.xq.data(), static_cast<int>(rows.size()));
}

std::vector<SharedPrefixGroup> Model::PlanSharedPrefix(const KvCache& cache, std::span<const BatchToken> batch) {
  constexpr int kPage = KvCache::kPageTokens;
  std::unordered_map<int, int> tokens_of;  // sequence -> its tokens in the batch
  for (const BatchToken& t : batch) ++tokens_of[t.seq];
  std::unordered_map<int, std::vector<int>> by_first_page;
  for (int i = 0; i < static_cast<int>(batch.size()); ++i) {
    const int seq = batch[i].seq;
    if (tokens_of[seq] == 1 && cache.Length(seq) > kSharedPrefixFrom)
      by_first_page[cache.PageTable(seq)[0]].push_back(i);
  }
  // Each member keeps at least its own position and its window rows.
  const int own = std::max(1, cache.window_tokens());
  std::vector<SharedPrefixGroup> groups;
  for (auto& [page, members] : by_first_page) {
    if (members.size() < 2) continue;
    const std::span<const int> lead = cache.PageTable(batch[members[0]].seq);
    size_t shared_pages = lead.size();
    int end = INT_MAX;
    for (int i : members) {
      const std::span<const int> t = cache.PageTable(batch[i].seq);
      const size_t common =
          std::mismatch(lead.begin(), lead.begin() + std::min(shared_pages, t.size()), t.begin()).first - lead.begin();
      shared_pages = std::min(shared_pages, common);
      end = std::min(end, cache.Length(batch[i].seq) - own);
    }
    const int shared_end = std::min(static_cast<int>(shared_pages) * kPage, end / kPage * kPage);
    if (shared_end >= kSharedPrefixFrom) groups.push_back({shared_end, std::move(members)});
  }
  std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) { return a.members[0] < b.members[0]; });
  return groups;
}

Status ForwardPass::ForwardGreedy(KvCache& cache, std::span<const BatchToken> batch, std::vector<int32_t>* ids) {
  std::vector<float> logits;
  LR_RETURN_IF_ERROR(Forward(cache, batch, &logits));
  const size_t n_vocab = static_cast<size_t>(config().n_vocab);
  ids->clear();
  for (size_t r = 0; r < logits.size() / n_vocab; ++r) {
    const float* row = logits.data() + r * n_vocab;
    ids->push_back(static_cast<int32_t>(std::max_element(row, row + n_vocab) - row));
  }
  return Status::Ok();
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

  const int n_embd = c.n_embd;
  std::vector<float> x(static_cast<size_t>(n) * n_embd), delta(x.size());
  for (int i = 0; i < n; ++i)
    ops::DequantizeRow(token_embd_.type, token_embd_.row(batch[i].token), &x[i * n_embd], n_embd);
  // The RoPE angles of each token's position, shared by the layers.
  std::vector<float> rope(static_cast<size_t>(n) * c.rope.n_rot);
  for (int i = 0; i < n; ++i) {
    ops::RopeCosSin(pos[i], rope_inv_freq_, ops::RopeCosSinFactor(c.rope),
                    &rope[static_cast<size_t>(i) * c.rope.n_rot]);
  }
  Scratch s;
  const size_t nz = static_cast<size_t>(n);
  s.tokens.resize(nz);
  std::iota(s.tokens.begin(), s.tokens.end(), 0);
  s.xn.resize(nz * n_embd);
  s.q.resize(nz * c.n_head * c.head_dim);
  s.k.resize(nz * c.n_head_kv * c.head_dim);
  s.v.resize(nz * c.n_head_kv * c.head_dim_v);
  s.attn.resize(nz * c.n_head * c.head_dim_v);
  s.g.resize(nz * c.n_ff);
  s.u.resize(nz * c.n_ff);
  s.xq.resize(nz * (std::max({n_embd, c.n_head * c.head_dim_v, c.n_ff}) / 32));
  // Shared-prefix attention's groups and their shared pieces.
  if (c.kv_lora_rank == 0) s.groups = PlanSharedPrefix(cache, batch);
  if (!s.groups.empty()) {
    s.group_of.assign(nz, -1);
    s.member_index.assign(nz, 0);
    size_t at = 0;
    for (int g = 0; g < static_cast<int>(s.groups.size()); ++g) {
      const SharedPrefixGroup& grp = s.groups[g];
      for (size_t m = 0; m < grp.members.size(); ++m) {
        s.group_of[grp.members[m]] = g;
        s.member_index[grp.members[m]] = static_cast<int>(m);
      }
      s.qblock_at.push_back(at);
      at += grp.members.size() * c.n_head * c.head_dim;
      s.first_chunk.push_back(static_cast<int>(s.chunks.size()));
      s.n_chunks.push_back((grp.shared_end + kSharedPieceTokens - 1) / kSharedPieceTokens);
      for (int h = 0; h < c.n_head_kv; ++h) {
        for (int b = 0; b < grp.shared_end; b += kSharedPieceTokens)
          s.chunks.push_back({g, h, b, std::min(grp.shared_end, b + kSharedPieceTokens)});
      }
    }
    s.qblock.resize(at);
    s.chunk_states.resize(s.chunks.size());
  }
  // Attention in pieces when some range is shared or kSplitAttentionFrom positions or more: a token's range (after
  // its shared positions) in two halves when that long.
  if (!s.groups.empty() || *std::max_element(pos.begin(), pos.end()) + 1 >= kSplitAttentionFrom) {
    for (int i = 0; i < n; ++i) {
      const int n_ctx = pos[i] + 1;
      const int begin = s.groups.empty() || s.group_of[i] < 0 ? 0 : s.groups[s.group_of[i]].shared_end;
      for (int h = 0; h < c.n_head_kv; ++h) {
        const int pair = i * c.n_head_kv + h;
        s.first_piece.push_back(static_cast<int>(s.pieces.size()));
        if (n_ctx - begin >= kSplitAttentionFrom) {
          const int mid = begin + (n_ctx - begin) / 2;
          s.pieces.push_back({pair, begin, mid});
          s.pieces.push_back({pair, mid, n_ctx});
        } else {
          s.pieces.push_back({pair, begin, n_ctx});
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
        LR_RETURN_IF_ERROR(MlaAttention(c, l.mla, rope_inv_freq_, layer, cache, seqs, pos, s.xn.data(), delta.data()));
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
    LR_RETURN_IF_ERROR(s.error.Take());
    b = end;
  }
  return Status::Ok();
}

}  // namespace lr::inference
