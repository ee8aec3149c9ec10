// Multi-head latent attention (DeepSeek-V2/V3, Mistral 4 / Leanstral).
//
// Per token: q = q_b(RMSNorm(q_a x)) (or q = attn_q x), each head [nope | rope]; kv_a_mqa x = [latent | k_rope],
// latent = RMSNorm(latent) (kv_lora_rank values), k_rope one RoPE'd key shared by every head. The cache keeps only
// the row [latent | k_rope] (kv_lora_rank + rope values per token and layer, one "KV head"). Attention is computed
// on that row directly ("absorbed"): head h's key is k_b_h latent ⊕ k_rope, so q·k = (k_b_hᵀ q_nope)·latent +
// q_rope·k_rope, and its value is v_b_h latent, so the head's output is v_b_h (Σ p_j latent_j). kvquant's
// AttendSharedKV does the Σ over the compressed rows; k_b_h and v_b_h are head h's rows of attn_kv_b. A prompt chunk
// (a run of one sequence's consecutive positions in the batch) attends in blocks instead: the rows it sees are
// decoded to f32 once, and per head and block of tokens the scores and the Σ are matrix products (ops::GemmF32) with
// a causal mask, so that each row is read once per block of tokens rather than once per token.
//
// RoPE on the rope parts rotates adjacent pairs (ggml mode 0). With YaRN the softmax scale is
// mscale² / sqrt(key_length), mscale = 1 + yarn_log_multiplier · ln(factor); with a query temperature
// (attention.temperature_scale β, attention.temperature_length L) the query of position p is multiplied by
// 1 + β · ln(1 + floor(p / L)).
#pragma once

#include <cstdint>
#include <vector>

#include "base/status.h"
#include "inference/gguf.h"
#include "inference/kv_cache.h"
#include "inference/model_config.h"
#include "ops/kernels.h"

namespace lr::inference {

struct MlaWeights {
  ops::WeightMatrix wq;          // attn_q: n_head * key_length rows (q_lora_rank == 0 only)
  ops::WeightMatrix wq_a;        // attn_q_a: q_lora_rank rows (q_lora_rank > 0 only)
  std::vector<float> q_a_norm;   // attn_q_a_norm: q_lora_rank
  ops::WeightMatrix wq_b;        // attn_q_b: n_head * key_length rows of q_lora_rank
  ops::WeightMatrix wkv_a;       // attn_kv_a_mqa: kv_lora_rank + rope rows
  std::vector<float> kv_a_norm;  // attn_kv_a_norm: kv_lora_rank
  ops::WeightMatrix wkv_b;       // attn_kv_b: n_head * (nope + value_length) rows of kv_lora_rank
  ops::WeightMatrix wo;          // attn_output: n_embd rows of n_head * value_length
};

// Binds layer `layer`'s attention tensors: kNotFound naming a missing tensor, kCorrupt naming one of the wrong shape
// or an inconsistent config (rope dims not below key_length).
Result<MlaWeights> BindMlaWeights(const GgufFile& gguf, const ModelConfig& config, int layer);

// The softmax scale: mscale² / sqrt(key_length) with YaRN's mscale (1 without YaRN).
float MlaSoftmaxScale(const ModelConfig& config);

// The cache shape: one row of kv_lora_rank + rope values per token and layer, no separate value rows.
KvShape MlaKvShape(const ModelConfig& config);

// The attention block. x: n tokens x n_embd (normalised); seq[i], pos[i]: token i's sequence and position (already
// appended in `cache`); out: n tokens x n_embd. Every token's row is stored before any attends, so a token sees the
// earlier tokens of its own batch. Errors are kvquant's (an attention over rows the cache holds does not fail).
Status MlaAttention(const ModelConfig& config, const MlaWeights& w, const std::vector<float>& inv_freq, int layer,
                    KvCache& cache, const std::vector<int>& seq, const std::vector<int>& pos, const float* x,
                    float* out);

// The attention of a prompt chunk as MlaAttention runs it (exposed for its test against AttendSharedKV): n_tokens
// tokens of sequence `seq` at positions first_pos.. (their rows stored in `cache`), each attending over the stored
// rows 0..its own position. The rows are decoded to f32 once (RowCodec::DecodeRow); per head and block of tokens the
// scores are one product with the rows seen by the block's last token, masked causally, softmaxed, and multiplied by
// the rows' leading v_dim values (ops::GemmF32), the threads splitting the (head, block) pairs. q: head h's query of
// token i (absorbed, the cache's row width) at q[h * q_head_stride + i * row]; out: its v_dim values at
// out[h * out_head_stride + i * v_dim]. Equals AttendSharedKV token by token up to float rounding (that scores the
// codes in the format's rotated domain; the decoded rows are the same values rotated back). Memory: two f32 copies
// of the rows (8 * row bytes per position).
void MlaAttendChunk(const KvCache& cache, int layer, int seq, int first_pos, int n_tokens, int heads, int v_dim,
                    const float* q, int64_t q_head_stride, float scale, float* out, int64_t out_head_stride);

}  // namespace lr::inference
