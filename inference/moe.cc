#include "inference/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "inference/weights.h"
#include "ops/ops.h"

namespace lr::inference {
namespace {

// Expert e's rows of a stacked matrix (in either layout: an expert's rows are whole row groups when repacked).
ops::WeightMatrix Expert(const ops::WeightMatrix& stacked, int e, int64_t rows) {
  ops::WeightMatrix w = stacked;
  w.data = stacked.data + static_cast<size_t>(e) * rows * stacked.row_bytes;
  w.rows = rows;
  return w;
}

}  // namespace

Result<MoeWeights> BindMoeWeights(const GgufFile& g, const ModelConfig& c, int layer) {
  const std::string a = c.arch + ".";
  if (c.n_expert_used < 1 || c.n_expert_used > c.n_expert)
    return Corrupt(g.path() + ": " + a + "expert_used_count (" + std::to_string(c.n_expert_used) + ") must be in 1.." +
                   a + "expert_count (" + std::to_string(c.n_expert) + ")");
  if (c.n_expert_groups < 1 || c.n_expert % c.n_expert_groups != 0 || c.n_expert_groups_used < 1 ||
      c.n_expert_groups_used > c.n_expert_groups || (c.n_expert_groups > 1 && c.n_expert / c.n_expert_groups < 2) ||
      c.n_expert_used > c.n_expert_groups_used * (c.n_expert / c.n_expert_groups))
    return Corrupt(g.path() + ": " + a + "expert_group_count (" + std::to_string(c.n_expert_groups) + ") and " + a +
                   "expert_group_used_count (" + std::to_string(c.n_expert_groups_used) +
                   ") must split the experts into equal groups of at least 2 that hold expert_used_count experts");
  if (c.n_ff_expert < 1) return Corrupt(g.path() + ": " + a + "expert_feed_forward_length must be positive");
  const std::string p = "blk." + std::to_string(layer) + ".";
  MoeWeights w;
  LR_ASSIGN_OR_RETURN(w.router, BindMatrix(g, p + "ffn_gate_inp.weight", c.n_expert, c.n_embd));
  if (g.FindTensor(p + "exp_probs_b.bias").ok()) {
    LR_ASSIGN_OR_RETURN(w.score_bias, BindVector(g, p + "exp_probs_b.bias", c.n_expert));
  }
  LR_ASSIGN_OR_RETURN(w.gate_exps, BindStacked(g, p + "ffn_gate_exps.weight", c.n_expert, c.n_ff_expert, c.n_embd));
  LR_ASSIGN_OR_RETURN(w.up_exps, BindStacked(g, p + "ffn_up_exps.weight", c.n_expert, c.n_ff_expert, c.n_embd));
  LR_ASSIGN_OR_RETURN(w.down_exps, BindStacked(g, p + "ffn_down_exps.weight", c.n_expert, c.n_embd, c.n_ff_expert));
  if (c.n_expert_shared > 0) {
    const int64_t ff = int64_t{c.n_ff_expert} * c.n_expert_shared;
    LR_ASSIGN_OR_RETURN(w.gate_shexp, BindMatrix(g, p + "ffn_gate_shexp.weight", ff, c.n_embd));
    LR_ASSIGN_OR_RETURN(w.up_shexp, BindMatrix(g, p + "ffn_up_shexp.weight", ff, c.n_embd));
    LR_ASSIGN_OR_RETURN(w.down_shexp, BindMatrix(g, p + "ffn_down_shexp.weight", c.n_embd, ff));
  }
  return w;
}

void RouteToken(const ModelConfig& c, const std::vector<float>& score_bias, const float* logits, int* experts,
                float* weights) {
  const int n = c.n_expert;
  std::vector<float> score(static_cast<size_t>(n)), choice(static_cast<size_t>(n));
  if (c.gating == ExpertGating::kSoftmax) {
    std::copy_n(logits, n, score.data());
    ops::Softmax(score.data(), n);
  } else {
    for (int e = 0; e < n; ++e) score[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  }
  for (int e = 0; e < n; ++e) choice[e] = score[e] + (score_bias.empty() ? 0.0f : score_bias[e]);

  constexpr float kOut = -std::numeric_limits<float>::infinity();
  if (c.n_expert_groups > 1) {
    const int per = n / c.n_expert_groups;
    std::vector<float> group(static_cast<size_t>(c.n_expert_groups));
    for (int gi = 0; gi < c.n_expert_groups; ++gi) {
      float best = kOut, second = kOut;
      for (int e = gi * per; e < (gi + 1) * per; ++e) {
        if (choice[e] > best) {
          second = best;
          best = choice[e];
        } else if (choice[e] > second) {
          second = choice[e];
        }
      }
      group[gi] = best + second;
    }
    std::vector<bool> keep(static_cast<size_t>(c.n_expert_groups), false);
    for (int k = 0; k < c.n_expert_groups_used; ++k) {
      int best = -1;
      for (int gi = 0; gi < c.n_expert_groups; ++gi)
        if (!keep[gi] && (best < 0 || group[gi] > group[best])) best = gi;
      keep[best] = true;
    }
    for (int e = 0; e < n; ++e)
      if (!keep[e / per]) choice[e] = kOut;
  }

  double sum = 0;
  for (int k = 0; k < c.n_expert_used; ++k) {
    int best = 0;
    for (int e = 1; e < n; ++e)
      if (choice[e] > choice[best]) best = e;
    experts[k] = best;
    weights[k] = score[best];
    sum += score[best];
    choice[best] = kOut;
  }
  const float norm = c.expert_weights_norm ? static_cast<float>(1.0 / sum) : 1.0f;
  for (int k = 0; k < c.n_expert_used; ++k) weights[k] *= norm * c.expert_weights_scale;
}

void MoeFfn(const ModelConfig& c, const MoeWeights& w, int n, const float* x, float* out) {
  const int e_dim = c.n_embd, k = c.n_expert_used, ff = c.n_ff_expert;
  const int64_t sh_ff = w.gate_shexp.rows;  // 0 without shared experts
  std::vector<float> logits(static_cast<size_t>(n) * c.n_expert);
  ops::MatMul(w.router, x, n, logits.data(), c.n_expert);
  std::vector<int> chosen(static_cast<size_t>(n) * k);
  std::vector<float> weight(chosen.size());
  for (int t = 0; t < n; ++t)
    RouteToken(c, w.score_bias, &logits[static_cast<size_t>(t) * c.n_expert], &chosen[t * k], &weight[t * k]);

  // The permutation that groups the n * k (token, expert) slots by expert: slot order[j] is row j of the grouped
  // inputs, expert e's rows are [first[e], first[e + 1]); row_of[slot] is its inverse.
  const int slots = n * k;
  std::vector<int> first(static_cast<size_t>(c.n_expert) + 1, 0), order(static_cast<size_t>(slots));
  std::vector<int> row_of(static_cast<size_t>(slots));
  for (int i = 0; i < slots; ++i) ++first[chosen[i] + 1];
  for (int e = 0; e < c.n_expert; ++e) first[e + 1] += first[e];
  {
    std::vector<int> next(first.begin(), first.end() - 1);
    for (int i = 0; i < slots; ++i) {
      row_of[i] = next[chosen[i]]++;
      order[row_of[i]] = i;
    }
  }

  // The products, routed experts then the shared one: gate and up of each, then down of each. One parallel region;
  // every product reads its weights once for all its tokens and the threads split each product's rows.
  // Inputs as the kernels read them: quantized when some product uses int8 activations, floats when some does not.
  const ops::WeightMatrix* all[] = {&w.gate_exps, &w.up_exps, &w.down_exps, &w.gate_shexp, &w.up_shexp, &w.down_shexp};
  bool q8 = false, floats = false;
  for (const ops::WeightMatrix* m : all) {
    if (m->rows == 0) continue;
    const ops::MatMulOut probe[] = {{m, nullptr, 0}};
    (ops::UsesQ8(probe) ? q8 : floats) = true;
  }
  const int q_blocks = e_dim / 32;
  std::vector<float> xs(floats ? static_cast<size_t>(slots) * e_dim : 0);  // grouped inputs
  std::vector<ops::BlockQ8> xq(q8 ? static_cast<size_t>(n) * q_blocks : 0);
  std::vector<ops::BlockQ8> xsq(q8 ? static_cast<size_t>(slots) * q_blocks : 0);
  std::vector<float> g(static_cast<size_t>(slots) * ff), u(g.size()), ys(static_cast<size_t>(slots) * e_dim);
  std::vector<float> gs(static_cast<size_t>(n * sh_ff)), us(gs.size());
  std::vector<ops::BlockQ8> gq(q8 ? g.size() / 32 : 0), gsq(q8 ? gs.size() / 32 : 0);
  std::vector<ops::MatMulTask> gate_up, down;
  for (int e = 0; e < c.n_expert; ++e) {
    const int m = first[e + 1] - first[e];
    if (m == 0) continue;
    const size_t r = static_cast<size_t>(first[e]);
    const float* xe = floats ? &xs[r * e_dim] : nullptr;
    const ops::BlockQ8* xqe = q8 ? &xsq[r * q_blocks] : nullptr;
    gate_up.push_back({Expert(w.gate_exps, e, ff), xe, xqe, m, &g[r * ff], ff});
    gate_up.push_back({Expert(w.up_exps, e, ff), xe, xqe, m, &u[r * ff], ff});
    down.push_back(
        {Expert(w.down_exps, e, e_dim), &g[r * ff], q8 ? &gq[r * ff / 32] : nullptr, m, &ys[r * e_dim], e_dim});
  }
  if (sh_ff > 0) {
    gate_up.push_back({w.gate_shexp, x, xq.data(), n, gs.data(), sh_ff});
    gate_up.push_back({w.up_shexp, x, xq.data(), n, us.data(), sh_ff});
    down.push_back({w.down_shexp, gs.data(), gsq.data(), n, out, e_dim});
  }
#pragma omp parallel
  {
    if (q8) {
#pragma omp for schedule(static)
      for (int t = 0; t < n; ++t)
        ops::QuantizeRowQ8(x + static_cast<size_t>(t) * e_dim, e_dim, &xq[static_cast<size_t>(t) * q_blocks]);
    }
#pragma omp for schedule(static)
    for (int j = 0; j < slots; ++j) {
      const int t = order[j] / k;
      if (q8) std::copy_n(&xq[static_cast<size_t>(t) * q_blocks], q_blocks, &xsq[static_cast<size_t>(j) * q_blocks]);
      if (floats) std::copy_n(x + static_cast<size_t>(t) * e_dim, e_dim, &xs[static_cast<size_t>(j) * e_dim]);
    }
    ops::MatMulTasksTeam(gate_up);
    // SwiGLU, each block of 32 quantized for the down products as soon as it is done (q8: ff is whole blocks).
    const int64_t blocks = static_cast<int64_t>(g.size() + 31) / 32;
    const int64_t sh_blocks = static_cast<int64_t>(gs.size() + 31) / 32;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks + sh_blocks; ++b) {
      const bool shared = b >= blocks;
      const int64_t i = 32 * (shared ? b - blocks : b);
      std::vector<float>& gv = shared ? gs : g;
      const int64_t count = std::min<int64_t>(32, static_cast<int64_t>(gv.size()) - i);
      ops::SwiGlu(&gv[i], &(shared ? us : u)[i], count);
      if (q8) ops::QuantizeRowQ8(&gv[i], 32, shared ? &gsq[i / 32] : &gq[i / 32]);
    }
    ops::MatMulTasksTeam(down);
    // out[t] = shared expert (already there) + the chosen experts' outputs in choice order.
#pragma omp for schedule(static)
    for (int t = 0; t < n; ++t) {
      float* o = out + static_cast<size_t>(t) * e_dim;
      if (sh_ff == 0) std::fill(o, o + e_dim, 0.0f);
      for (int i = t * k; i < (t + 1) * k; ++i) {
        const float* y = &ys[static_cast<size_t>(row_of[i]) * e_dim];
        for (int d = 0; d < e_dim; ++d) o[d] += weight[i] * y[d];
      }
    }
  }
}

}  // namespace lr::inference
