// Multi-head latent attention on the device (inference/mla.h's contract: DeepSeek-V2/V3, Mistral 4 / Leanstral).
//
// The cache holds one row per token and layer, [latent | k_rope] (kv_lora_rank + rope values, f16), in the paged
// pool as one KV head of k_dim = kv_lora_rank + rope and no value rows (inference::MlaKvShape). Attention is absorbed,
// for prefill and decode alike: the queries are projected into the latent space (q_abs = [k_b_hᵀ q_nope | q_rope]),
// every head attends over the same latent rows (a block takes a group of heads, so that a row read serves them all),
// and the attended latents go through v_b_h; no per-head key or value is materialised. attn_kv_b is kept on the device
// as f16 rows of kv_lora_rank values (head h's k_b rows, then its v_b rows), read by the absorption and by the values.
//
// Each kernel has a scalar reference it is tested against (tests/cuda/moe_mla_test.cc, through inference::Model's
// MLA: the whole block's logits on the fixtures).
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "cuda/kernels.h"

namespace lr::cuda {

struct MlaArgs {
  int n_head = 0;
  int nope = 0, rope = 0;  // a query head: nope + rope values (the key length)
  int lat = 0;             // kv_lora_rank
  int v_dim = 0;           // value length per head
  float eps = 0;
  const float* kv_norm = nullptr;   // device: lat (attn_kv_a_norm)
  const float* inv_freq = nullptr;  // device: rope / 2 angles per position
  float cos_sin_factor = 1.0f;
  float temperature_scale = 0;  // the query of position p times 1 + scale * ln(1 + floor(p / length)); 0: off
  int temperature_length = 0;
  int layer = 0;
  const uint16_t* kv_b = nullptr;  // device: f16, n_head * (nope + v_dim) rows of lat
};

// x[i * stride + d] = RMSNorm(x[i * stride + 0..dim)) * w[d] for d < dim, i < n, in place (q_a's outputs, in rows
// padded to a multiple of 32 for the q_b product). With xq, then the whole rows (stride values each, a multiple of 32;
// the padding as it is) quantized into xq: the q_b product's int8 input.
Status RmsNormStrided(float* x, int n, int dim, int stride, const float* w, float eps, Stream stream,
                      const Q8Activations* xq = nullptr);

// For n tokens: each token's row [latent | k_rope] from kv (n x (lat + rope), attn_kv_a_mqa's outputs; scratch), its
// latent RMS-normalised and its k_rope rotated (adjacent pairs), stored as f16 into its page slot of the layer; and
// the absorbed queries q_abs[i][h] = [k_b_hᵀ q_nope | q_rope] (n x n_head x (lat + rope)) from q (n x n_head x (nope +
// rope)), each head's rope part rotated and the whole query times the position's temperature first.
Status MlaPrepare(const MlaArgs& a, const float* q, float* kv, const KvPool& pool, const TokenPlaces& places, int n,
                  float* q_abs, Stream stream);

// out[i][h] = Σ_j softmax_j(q_abs[i][h] . row_j * scale) latent_j over positions 0..pos[i] of token i's sequence
// (out: n x n_head x lat). Decode steps (n <= kMaxMatVecTokens) split each range over up to MlaAttentionSplits
// blocks (the split count depends on n alone, so that a captured graph fits every depth; a token uses as many as its
// context fills) and leave their states in scratch (MlaAttentionScratchFloats floats) instead of out: MlaValues
// combines them. With one split (MlaAttentionSplits(a, n) == 1) out is written.
int MlaAttentionSplits(const MlaArgs& a, int n);
size_t MlaAttentionScratchFloats(const MlaArgs& a, int n);
Status MlaAttention(const MlaArgs& a, const float* q_abs, float scale, const KvPool& pool, const TokenPlaces& places,
                    int n, float* out, float* scratch, Stream stream);
// The split states MlaAttention left: scratch, MlaAttentionSplits(a, n), the tokens' positions (device).
struct MlaSplitStates {
  const float* part = nullptr;
  int splits = 0;
  const int32_t* pos = nullptr;
};

// MlaAttention's out on the tensor cores (cuda/flash_attention.cu's kernel: a block takes 64 tokens of the batch and
// one head, one pass over the pages per sequence among them), with the queries and the softmax weights rounded to
// f16: for prefill chunks (runs of one sequence's tokens). Takes the pool's rows of (kv_lora_rank + rope, kv_lora_rank)
// = (320, 256) and (48, 32) (FlashAttentionLatentTakes). Defined in flash_attention.cu.
bool FlashAttentionLatentTakes(int k_dim, int v_dim);
Status FlashAttentionLatent(const float* q_abs, int n_head, float scale, const KvPool& pool, int layer,
                            const TokenPlaces& places, int n, int v_dim, float* out, Stream stream);

// out[i][h * v_dim + r] = v_b_h[r] . latent[i][h] (latent: n x n_head x lat, MlaAttention's out, or with states its
// split states combined); with outq, out quantized into it too (v_dim a multiple of 32): the output product's int8
// input.
Status MlaValues(const MlaArgs& a, const float* latent, int n, float* out, Stream stream,
                 const Q8Activations* outq = nullptr, const MlaSplitStates* states = nullptr);

}  // namespace lr::cuda
