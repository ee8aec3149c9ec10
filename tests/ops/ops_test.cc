// The block ops (ops/ops.h) against the textbook formulas evaluated in double precision, on random rows of odd and
// even sizes.
#include "ops/ops.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>
#include <vector>

namespace lr::ops {
namespace {

std::vector<float> RandomRow(std::mt19937& rng, int n, float sigma = 1.0f) {
  std::normal_distribution<float> dist(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

TEST(Ops, RmsNormMatchesTheFormulaInPlaceToo) {
  std::mt19937 rng(1);
  for (int n : {1, 7, 64, 577}) {
    const std::vector<float> x = RandomRow(rng, n, 3.0f), w = RandomRow(rng, n);
    double sum_squares = 0;
    for (float v : x) sum_squares += double{v} * v;
    const double scale = 1.0 / std::sqrt(sum_squares / n + 1e-5);
    std::vector<float> y(x.size()), in_place = x;
    RmsNorm(x.data(), w.data(), n, 1e-5f, y.data());
    RmsNorm(in_place.data(), w.data(), n, 1e-5f, in_place.data());
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(y[i], x[i] * scale * w[i], 1e-5 * std::abs(x[i] * scale * w[i]) + 1e-7) << "n " << n << " i " << i;
      EXPECT_EQ(in_place[i], y[i]);
    }
  }
}

TEST(Ops, RopeRotatesThePairsOfEachStyle) {
  std::mt19937 rng(2);
  const int head = 10, n_rot = 6;  // the last 4 values are not rotated
  const RopeParams params{.n_rot = n_rot, .base = 100.0f};
  const std::vector<float> inv_freq = RopeInvFreq(params);
  ASSERT_EQ(inv_freq.size(), 3u);
  for (int j = 0; j < 3; ++j) EXPECT_FLOAT_EQ(inv_freq[j], static_cast<float>(std::pow(100.0, -2.0 * j / n_rot)));
  const int pos = 37;
  std::vector<float> cos_sin(n_rot);
  RopeCosSin(pos, inv_freq, 1.0f, cos_sin.data());
  for (RopeStyle style : {RopeStyle::kAdjacentPairs, RopeStyle::kHalves}) {
    const std::vector<float> x = RandomRow(rng, head);
    std::vector<float> y = x;
    Rope(y.data(), cos_sin.data(), n_rot, style);
    for (int j = 0; j < 3; ++j) {
      const int a = style == RopeStyle::kAdjacentPairs ? 2 * j : j;
      const int b = style == RopeStyle::kAdjacentPairs ? 2 * j + 1 : j + 3;
      const double angle = pos * double{inv_freq[j]};
      EXPECT_NEAR(y[a], x[a] * std::cos(angle) - x[b] * std::sin(angle), 1e-5);
      EXPECT_NEAR(y[b], x[a] * std::sin(angle) + x[b] * std::cos(angle), 1e-5);
    }
    for (int i = n_rot; i < head; ++i) EXPECT_EQ(y[i], x[i]);
  }
}

TEST(Ops, YarnInterpolatesLowFrequenciesAndKeepsHighOnes) {
  RopeParams p{.n_rot = 64, .base = 10000.0f, .scaling_factor = 4.0f, .original_ctx = 4096};
  const std::vector<float> yarn = RopeInvFreq(p);
  p.scaling_factor = 1.0f;
  const std::vector<float> plain = RopeInvFreq(p);
  EXPECT_FLOAT_EQ(yarn.front(), plain.front());       // the fastest pair: extrapolated, unchanged
  EXPECT_FLOAT_EQ(yarn.back(), plain.back() / 4.0f);  // the slowest: interpolated by the factor
  for (size_t j = 1; j < yarn.size(); ++j) EXPECT_LE(yarn[j] / plain[j], yarn[j - 1] / plain[j - 1] + 1e-7f);
  EXPECT_FLOAT_EQ(RopeCosSinFactor({.n_rot = 64, .scaling_factor = 4.0f, .original_ctx = 4096}),
                  1.0f + 0.1f * std::log(4.0f));
  EXPECT_FLOAT_EQ(
      RopeCosSinFactor({.n_rot = 64, .scaling_factor = 4.0f, .original_ctx = 4096, .yarn_log_multiplier = 0.1f}), 1.0f);
  EXPECT_FLOAT_EQ(RopeCosSinFactor({.n_rot = 64}), 1.0f);
}

TEST(Ops, SwiGluAndSoftmaxMatchTheFormulas) {
  std::mt19937 rng(3);
  for (int n : {1, 5, 33, 151}) {
    const std::vector<float> g = RandomRow(rng, n, 4.0f), u = RandomRow(rng, n);
    std::vector<float> y = g;
    SwiGlu(y.data(), u.data(), n);
    for (int i = 0; i < n; ++i) {
      const double want = g[i] / (1.0 + std::exp(-double{g[i]})) * u[i];
      EXPECT_NEAR(y[i], want, 1e-5 * std::abs(want) + 1e-7);
    }
    std::vector<float> s = g;
    Softmax(s.data(), n);
    std::vector<double> log_p;
    LogSoftmax(g, &log_p);
    double z = 0;
    for (float v : g) z += std::exp(double{v});
    double total = 0;
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(s[i], std::exp(double{g[i]}) / z, 1e-6);
      EXPECT_NEAR(log_p[i], g[i] - std::log(z), 1e-9);
      total += s[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
  }
}

}  // namespace
}  // namespace lr::ops
