#include "inference/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "inference/weights.h"
#include "ops/ops.h"

namespace lr::inference {
namespace {

// Expert e's rows of a stacked matrix.
ops::WeightMatrix Expert(const ops::WeightMatrix& stacked, int e, int64_t rows) {
  return ops::WeightMatrix{stacked.type, stacked.row(e * rows), rows, stacked.cols, stacked.row_bytes};
}

}  // namespace

Result<MoeWeights> BindMoeWeights(const GgufFile& g, const ModelConfig& c, int layer) {
  const std::string a = c.arch + ".";
  if (c.n_expert_used < 1 || c.n_expert_used > c.n_expert)
    return Corrupt(g.path() + ": " + a + "expert_used_count (" + std::to_string(c.n_expert_used) +
                   ") must be in 1.." + a + "expert_count (" + std::to_string(c.n_expert) + ")");
  if (c.n_expert_groups < 1 || c.n_expert % c.n_expert_groups != 0 || c.n_expert_groups_used < 1 ||
      c.n_expert_groups_used > c.n_expert_groups ||
      (c.n_expert_groups > 1 && c.n_expert / c.n_expert_groups < 2) ||
      c.n_expert_used > c.n_expert_groups_used * (c.n_expert / c.n_expert_groups))
    return Corrupt(g.path() + ": " + a + "expert_group_count (" + std::to_string(c.n_expert_groups) + ") and " +
                   a + "expert_group_used_count (" + std::to_string(c.n_expert_groups_used) +
                   ") must split the experts into equal groups of at least 2 that hold expert_used_count experts");
  if (c.n_ff_expert < 1)
    return Corrupt(g.path() + ": " + a + "expert_feed_forward_length must be positive");
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

void SwiGluFfn(const ops::WeightMatrix& gate, const ops::WeightMatrix& up, const ops::WeightMatrix& down, int n, const float* x,
            float* out) {
  const int64_t ff = gate.rows;
  std::vector<float> g(static_cast<size_t>(n * ff)), u(g.size());
  const ops::MatMulOut gate_up[] = {{&gate, g.data(), ff}, {&up, u.data(), ff}};
  ops::MatMulMany(gate_up, x, n);
  ops::SwiGlu(g.data(), u.data(), static_cast<int64_t>(g.size()));
  ops::MatMul(down, g.data(), n, out, down.rows);
}

void MoeFfn(const ModelConfig& c, const MoeWeights& w, int n, const float* x, float* out) {
  const int e_dim = c.n_embd, k = c.n_expert_used;
  std::vector<float> logits(static_cast<size_t>(n) * c.n_expert);
  ops::MatMul(w.router, x, n, logits.data(), c.n_expert);
  std::vector<int> chosen(static_cast<size_t>(n) * k);
  std::vector<float> weight(chosen.size());
  for (int t = 0; t < n; ++t)
    RouteToken(c, w.score_bias, &logits[static_cast<size_t>(t) * c.n_expert], &chosen[t * k], &weight[t * k]);

  if (w.gate_shexp.rows > 0) {
    SwiGluFfn(w.gate_shexp, w.up_shexp, w.down_shexp, n, x, out);
  } else {
    std::fill(out, out + static_cast<size_t>(n) * e_dim, 0.0f);
  }

  // Each expert runs once on all the tokens routed to it.
  std::vector<std::vector<int>> slots(static_cast<size_t>(c.n_expert));  // indices into chosen
  for (size_t i = 0; i < chosen.size(); ++i) slots[chosen[i]].push_back(static_cast<int>(i));
  std::vector<float> xs, ys;
  for (int e = 0; e < c.n_expert; ++e) {
    const std::vector<int>& s = slots[e];
    if (s.empty()) continue;
    const int m = static_cast<int>(s.size());
    xs.resize(static_cast<size_t>(m) * e_dim);
    ys.resize(xs.size());
    for (int j = 0; j < m; ++j)
      std::copy_n(x + static_cast<size_t>(s[j] / k) * e_dim, e_dim, &xs[static_cast<size_t>(j) * e_dim]);
    SwiGluFfn(Expert(w.gate_exps, e, c.n_ff_expert), Expert(w.up_exps, e, c.n_ff_expert),
           Expert(w.down_exps, e, e_dim), m, xs.data(), ys.data());
    for (int j = 0; j < m; ++j) {
      float* o = out + static_cast<size_t>(s[j] / k) * e_dim;
      const float* y = &ys[static_cast<size_t>(j) * e_dim];
      for (int i = 0; i < e_dim; ++i) o[i] += weight[s[j]] * y[i];
    }
  }
}

}  // namespace lr::inference
