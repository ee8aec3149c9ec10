// Mixture-of-experts FFN: a router picks k of n_expert SwiGLU experts per token and mixes their outputs; optional
// shared experts are added for every token.
//
// Two router families, both read from GGUF metadata (inference/model_config.h names each key):
//   Mixtral (llama + expert_count): softmax over all experts, top-k, weights renormalised to sum 1.
//   DeepSeek-V3 / Mistral-4 (deepseek2): softmax or sigmoid scores; the choice may add a per-expert bias
//     (exp_probs_b) and may first keep the best expert groups (a group scores the sum of its best two); the weights
//     are the chosen experts' scores without the bias, renormalised when expert_weights_norm, times
//     expert_weights_scale; shared experts (ffn_*_shexp) are added unweighted.
//
// Expert weights are GGUF's 3D tensors: ffn_{gate,up}_exps [n_embd, n_ff_exp, n_expert] and ffn_down_exps
// [n_ff_exp, n_embd, n_expert] (ggml order), i.e. n_expert matrices stored one after another.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"
#include "inference/gguf.h"
#include "inference/model_config.h"
#include "ops/kernels.h"

namespace lr::inference {

struct MoeWeights {
  ops::WeightMatrix router;                         // ffn_gate_inp: n_expert rows of n_embd
  std::vector<float> score_bias;                    // exp_probs_b.bias: n_expert, empty when absent
  ops::WeightMatrix gate_exps, up_exps, down_exps;  // all experts stacked: n_expert * n_ff_exp (or n_embd) rows
  // Shared experts, one SwiGLU of width n_ff_exp * n_expert_shared; rows == 0 when there is none.
  ops::WeightMatrix gate_shexp, up_shexp, down_shexp;
};

// Binds layer `layer`'s tensors, checking names, shapes and the config's counts: kNotFound naming a missing tensor,
// kCorrupt naming a tensor of the wrong shape or an inconsistent count (k > n_expert, groups not dividing experts).
Result<MoeWeights> BindMoeWeights(const GgufFile& gguf, const ModelConfig& config, int layer);

// The router's choice for one token: `experts` and `weights` get n_expert_used entries each (best first).
// logits: the router's n_expert outputs for the token.
void RouteToken(const ModelConfig& config, const std::vector<float>& score_bias, const float* logits, int* experts,
                float* weights);

// out[t] = sum over the chosen experts e of weight_e * SwiGLU_e(x[t]) (+ the shared experts), for n tokens of
// n_embd values. The (token, expert) pairs are grouped by expert (a permutation and its inverse), so each chosen
// expert's weights are read once per call, as one product over its tokens; the shared experts are one product over
// all n tokens. All products run in one parallel region, the threads splitting their rows (ops::MatMulTasksTeam), so
// an expert few tokens chose still keeps every thread busy.
void MoeFfn(const ModelConfig& config, const MoeWeights& w, int n, const float* x, float* out);

}  // namespace lr::inference
