#include "ops/ops.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace lr::ops {

void RmsNorm(const float* x, const float* w, int n, float eps, float* y) {
  double sum_squares = 0;
  for (int i = 0; i < n; ++i) sum_squares += static_cast<double>(x[i]) * x[i];
  const float scale = static_cast<float>(1.0 / std::sqrt(sum_squares / n + eps));
  for (int i = 0; i < n; ++i) y[i] = x[i] * scale * w[i];
}

std::vector<float> RopeInvFreq(const RopeParams& p) {
  const int half = p.n_rot / 2;
  const double base = p.base;
  double low = 0, high = 0;
  if (p.yarn()) {
    // The dimension whose wavelength fits `rotations` times into the original context.
    auto dim_for = [&](double rotations) {
      return p.n_rot * std::log(p.original_ctx / (rotations * 2 * std::numbers::pi)) / (2 * std::log(base));
    };
    low = std::max(0.0, std::floor(dim_for(p.beta_fast)));
    high = std::min(p.n_rot - 1.0, std::ceil(dim_for(p.beta_slow)));
    if (low == high) high += 0.001;
  }
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const double extrapolated = std::pow(base, -2.0 * i / p.n_rot);
    if (!p.yarn()) {
      inv_freq[i] = static_cast<float>(extrapolated);
      continue;
    }
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    inv_freq[i] = static_cast<float>(extrapolated / p.scaling_factor * ramp + extrapolated * (1 - ramp));
  }
  return inv_freq;
}

float RopeCosSinFactor(const RopeParams& p) {
  if (!p.yarn() || p.yarn_log_multiplier > 0.0f) return 1.0f;
  return 1.0f + 0.1f * std::log(p.scaling_factor);
}

void RopeCosSin(int pos, std::span<const float> inv_freq, float factor, float* cos_sin) {
  for (size_t j = 0; j < inv_freq.size(); ++j) {
    const float angle = static_cast<float>(pos) * inv_freq[j];
    cos_sin[2 * j] = std::cos(angle) * factor;
    cos_sin[2 * j + 1] = std::sin(angle) * factor;
  }
}

void Rope(float* v, const float* cos_sin, int n_rot, RopeStyle style) {
  const int half = n_rot / 2;
  for (int i = 0; i < half; ++i) {
    const float c = cos_sin[2 * i], s = cos_sin[2 * i + 1];
    float* a = style == RopeStyle::kAdjacentPairs ? &v[2 * i] : &v[i];
    float* b = style == RopeStyle::kAdjacentPairs ? &v[2 * i + 1] : &v[i + half];
    const float x0 = *a, x1 = *b;
    *a = x0 * c - x1 * s;
    *b = x0 * s + x1 * c;
  }
}

void SwiGlu(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = Silu(g[i]) * u[i];
}

void Softmax(float* x, int n) {
  const float max = *std::max_element(x, x + n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += x[i] = std::exp(x[i] - max);
  for (int i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] / sum);
}

void LogSoftmax(std::span<const float> logits, std::vector<double>* out) {
  out->resize(logits.size());
  double max = logits[0];
  for (float x : logits) max = std::max(max, static_cast<double>(x));
  double sum = 0;
  for (float x : logits) sum += std::exp(x - max);
  const double log_z = max + std::log(sum);
  for (size_t i = 0; i < logits.size(); ++i) (*out)[i] = logits[i] - log_z;
}

}  // namespace lr::ops
