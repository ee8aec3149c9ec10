#include "inference/model_config.h"

#include <climits>
#include <string>

#include "inference/weights.h"

namespace lr::inference {
namespace {

Result<int> GetInt(const GgufFile& g, const std::string& key) {
  LR_ASSIGN_OR_RETURN(uint32_t v, g.GetU32(key));
  if (v > static_cast<uint32_t>(INT_MAX))
    return Corrupt(g.path() + ": " + key + " = " + std::to_string(v) + " is too large");
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

}  // namespace

Result<ModelConfig> ReadModelConfig(const GgufFile& g) {
  ModelConfig c;
  LR_ASSIGN_OR_RETURN(c.arch, g.GetString("general.architecture"));
  if (g.Has("general.name")) {
    LR_ASSIGN_OR_RETURN(c.name, g.GetString("general.name"));
  }
  const std::string a = c.arch + ".";
  if (c.arch == "llama") {
    c.rope.style = ops::RopeStyle::kAdjacentPairs;
  } else if (c.arch == "qwen2") {
    c.rope.style = ops::RopeStyle::kHalves;
    c.qkv_bias = true;
  } else if (c.arch == "qwen3") {
    c.rope.style = ops::RopeStyle::kHalves;
    c.qk_norm = true;
  } else if (c.arch == "deepseek2") {
    c.rope.style = ops::RopeStyle::kAdjacentPairs;
  } else {
    return Unsupported(g.path() + ": architecture '" + c.arch + "' is not supported (llama, qwen2, qwen3, deepseek2)");
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
  LR_ASSIGN_OR_RETURN(c.rope.base, GetF32Or(g, a + "rope.freq_base", 10000.0f));
  LR_ASSIGN_OR_RETURN(c.rope.n_rot, GetIntOr(g, a + "rope.dimension_count", c.head_dim));
  if (c.head_dim < 1 || c.head_dim_v < 1 || c.rope.n_rot < 0 || c.rope.n_rot > c.head_dim || c.rope.n_rot % 2 != 0)
    return Corrupt(g.path() + ": " + a + "rope.dimension_count (" + std::to_string(c.rope.n_rot) +
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
    c.qk_rope_dim = c.rope.n_rot;
    c.qk_nope_dim = c.head_dim - c.rope.n_rot;
  }
  if (g.Has(a + "rope.scaling.type")) {
    LR_ASSIGN_OR_RETURN(std::string type, g.GetString(a + "rope.scaling.type"));
    if (type != "yarn" && type != "none")
      return Unsupported(g.path() + ": " + a + "rope.scaling.type '" + type + "' is not supported (yarn, none)");
  }
  LR_ASSIGN_OR_RETURN(c.rope.scaling_factor, GetF32Or(g, a + "rope.scaling.factor", 1.0f));
  LR_ASSIGN_OR_RETURN(c.rope.original_ctx, GetIntOr(g, a + "rope.scaling.original_context_length", 0));
  LR_ASSIGN_OR_RETURN(c.rope.yarn_log_multiplier, GetF32Or(g, a + "rope.scaling.yarn_log_multiplier", 0.0f));
  LR_ASSIGN_OR_RETURN(c.rope.beta_fast, GetF32Or(g, a + "rope.scaling.yarn_beta_fast", 32.0f));
  LR_ASSIGN_OR_RETURN(c.rope.beta_slow, GetF32Or(g, a + "rope.scaling.yarn_beta_slow", 1.0f));
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

}  // namespace lr::inference
