// The row ops of a transformer block, each written once: RMS norm, rotary position embedding (both pair layouts,
// YaRN), SiLU and SwiGLU, softmax and log-softmax, on plain float rows.
//
// These are the scalar definitions every CPU block uses (inference/model.cc, mla.cc, moe.cc) and the reference a
// device backend's kernels are tested against. They are not where a step's time goes (the weight products in
// ops/kernels.h are), so they have no SIMD builds of their own.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace lr::ops {

// y[i] = x[i] / sqrt(mean(x²) + eps) · w[i] for one row of n values (the sum of squares in double); y may be x.
void RmsNorm(const float* x, const float* w, int n, float eps, float* y);

// Which values RoPE rotates together.
enum class RopeStyle {
  kAdjacentPairs,  // (x[2i], x[2i+1]): ggml mode 0 (llama, deepseek2's rope part)
  kHalves,         // (x[i], x[i + n_rot/2]): ggml NEOX mode (qwen2, qwen3)
};

// The rotary embedding of a model: n_rot rotated values per head, base frequency, and YaRN context extension
// (scaling_factor > 1 and original_ctx > 0; otherwise off), as GGUF's {arch}.rope.* keys give them.
struct RopeParams {
  int n_rot = 0;
  float base = 10000.0f;
  RopeStyle style = RopeStyle::kAdjacentPairs;
  float scaling_factor = 1.0f;
  int original_ctx = 0;
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  // YaRN's attention factor goes into the softmax scale when > 0 (DeepSeek, Mistral 4); otherwise cos and sin are
  // scaled by 1 + 0.1 ln(scaling_factor), as transformers does.
  float yarn_log_multiplier = 0.0f;

  bool yarn() const { return scaling_factor > 1.0f && original_ctx > 0; }
};

// The angle per position of each of the n_rot / 2 rotated pairs (radians); with YaRN the low frequencies are
// interpolated and the high ones kept, ramping between the dimensions set by beta_fast and beta_slow.
std::vector<float> RopeInvFreq(const RopeParams& params);
// The factor on cos and sin (1 without YaRN, or when yarn_log_multiplier carries it into the softmax scale).
float RopeCosSinFactor(const RopeParams& params);
// cos_sin[2j], cos_sin[2j + 1] = factor · cos, sin(pos · inv_freq[j]) for every pair j.
void RopeCosSin(int pos, std::span<const float> inv_freq, float factor, float* cos_sin);
// Rotates the first n_rot values of one head (v) by the angles of cos_sin (RopeCosSin's layout).
void Rope(float* v, const float* cos_sin, int n_rot, RopeStyle style);

inline float Silu(float x) { return x / (1.0f + std::exp(-x)); }
// g[i] = silu(g[i]) · u[i] for i < n: SwiGLU's gate applied in place.
void SwiGlu(float* g, const float* u, int64_t n);

// x := softmax(x) over n values (max subtracted first, the sum in double).
void Softmax(float* x, int n);
// out[i] = logits[i] - log Σ exp(logits), in double.
void LogSoftmax(std::span<const float> logits, std::vector<double>* out);

}  // namespace lr::ops
