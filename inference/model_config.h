// A model's shape and hyperparameters, read from GGUF metadata with llama.cpp's key names ({arch}.block_count, ...).
// Supported architectures: llama (also Mistral, SmolLM2, Mixtral with expert keys), qwen2 (Qwen2/2.5 and their
// distills: Kimina-Prover-Distill, DeepSeek-R1-Distill-Qwen), qwen3, deepseek2 (DeepSeek-V2/V3, Mistral 4).
#pragma once

#include <string>

#include "base/status.h"
#include "inference/gguf.h"
#include "ops/ops.h"

namespace lr::inference {

enum class ExpertGating { kSoftmax = 1, kSigmoid = 2 };  // {arch}.expert_gating_func, as llama.cpp numbers them

struct ModelConfig {
  std::string arch;       // general.architecture
  std::string name;       // general.name (empty when absent)
  int n_layer = 0;        // {arch}.block_count
  int n_embd = 0;         // {arch}.embedding_length
  int n_head = 0;         // {arch}.attention.head_count
  int n_head_kv = 0;      // {arch}.attention.head_count_kv (default n_head)
  int head_dim = 0;       // {arch}.attention.key_length (default n_embd / n_head)
  int head_dim_v = 0;     // {arch}.attention.value_length (default head_dim)
  int n_ff = 0;           // {arch}.feed_forward_length
  int n_vocab = 0;        // rows of token_embd.weight
  int n_ctx_train = 0;    // {arch}.context_length
  float rms_eps = 1e-5f;  // {arch}.attention.layer_norm_rms_epsilon
  // RoPE: {arch}.rope.freq_base, .dimension_count (default head_dim), the pair layout by architecture, and YaRN
  // from {arch}.rope.scaling.{factor, original_context_length, yarn_log_multiplier, yarn_beta_fast, yarn_beta_slow}.
  ops::RopeParams rope;
  bool qk_norm = false;      // per-head RMSNorm of q and k (qwen3)
  bool qkv_bias = false;     // attn_{q,k,v}.bias added to the q, k and v products (qwen2)
  bool tied_output = false;  // no output.weight: the logits use token_embd.weight

  // Mixture of experts (0 experts: dense FFN everywhere).
  int n_expert = 0;                              // {arch}.expert_count
  int n_expert_used = 0;                         // {arch}.expert_used_count
  int n_expert_shared = 0;                       // {arch}.expert_shared_count
  int n_ff_expert = 0;                           // {arch}.expert_feed_forward_length (default n_ff)
  int n_leading_dense = 0;                       // {arch}.leading_dense_block_count: first layers with a dense FFN
  ExpertGating gating = ExpertGating::kSoftmax;  // {arch}.expert_gating_func
  bool expert_weights_norm = false;              // {arch}.expert_weights_norm: renormalise the top-k weights
  float expert_weights_scale = 1.0f;             // {arch}.expert_weights_scale: routed output scale
  int n_expert_groups = 1;                       // {arch}.expert_group_count
  int n_expert_groups_used = 1;                  // {arch}.expert_group_used_count

  // Multi-head latent attention (kv_lora_rank 0: ordinary attention).
  int q_lora_rank = 0;   // {arch}.attention.q_lora_rank (0: q projected directly)
  int kv_lora_rank = 0;  // {arch}.attention.kv_lora_rank
  int qk_rope_dim = 0;   // = rope.n_rot for MLA
  int qk_nope_dim = 0;   // head_dim - qk_rope_dim for MLA

  // Query temperature (Llama 4 / Mistral 4).
  float attn_temperature_scale = 0.0f;  // attention.temperature_scale (0: off)
  int attn_temperature_length = 0;      // attention.temperature_length
};

// Reads and checks the config: kNotFound / kCorrupt naming the key, kUnsupported naming an unknown architecture.
Result<ModelConfig> ReadModelConfig(const GgufFile& gguf);

}  // namespace lr::inference
