#include "kvquant/lloyd_max.h"

#include <cassert>
#include <cmath>

namespace lr::kvquant {
namespace {

double Pdf(double x) { return std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI); }
double Cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

}  // namespace

LloydMax SolveLloydMaxGaussian(int bits) {
  assert(bits >= 1 && bits <= 8);
  const int n = 1 << bits;
  // Start from uniform levels over [-3, 3]; Lloyd iterations converge monotonically for log-concave densities.
  std::vector<double> level(n), thr(n + 1);
  for (int i = 0; i < n; ++i) level[i] = -3.0 + 6.0 * (i + 0.5) / n;
  for (int iter = 0; iter < 100000; ++iter) {
    thr[0] = -INFINITY;
    thr[n] = INFINITY;
    for (int i = 1; i < n; ++i) thr[i] = 0.5 * (level[i - 1] + level[i]);
    double change = 0;
    for (int i = 0; i < n; ++i) {
      // Centroid of N(0,1) on (a, b): (pdf(a) - pdf(b)) / (cdf(b) - cdf(a)).
      const double a = thr[i], b = thr[i + 1];
      const double pa = std::isinf(a) ? 0.0 : Pdf(a), pb = std::isinf(b) ? 0.0 : Pdf(b);
      const double c = (pa - pb) / (Cdf(b) - Cdf(a));
      change = std::fmax(change, std::fabs(c - level[i]));
      level[i] = c;
    }
    if (change < 1e-13) break;
  }
  // With centroid levels, E[(X - Q(X))^2] = E[X^2] - sum_i P(cell i) * level_i^2.
  double mse = 1.0;
  for (int i = 0; i < n; ++i) mse -= (Cdf(thr[i + 1]) - Cdf(thr[i])) * level[i] * level[i];
  LloydMax out;
  out.mse = mse;
  for (int i = 0; i < n; ++i) out.levels.push_back(static_cast<float>(level[i]));
  for (int i = 1; i < n; ++i) out.thresholds.push_back(static_cast<float>(thr[i]));
  return out;
}

const LloydMax& GaussianLevels(int bits) {
  assert(bits >= 2 && bits <= 4);
  static const LloydMax kTables[3] = {SolveLloydMaxGaussian(2), SolveLloydMaxGaussian(3), SolveLloydMaxGaussian(4)};
  return kTables[bits - 2];
}

}  // namespace lr::kvquant
