#include "kvquant/lloyd_max.h"

#include <gtest/gtest.h>

#include <vector>

namespace lr::kvquant {
namespace {

// Positive halves of the published tables (REFERENCES.md §5).
struct Published {
  int bits;
  std::vector<double> levels, thresholds;
  double mse;
};

const Published kPublished[] = {
    {2, {0.4528, 1.5104}, {0.9816}, 0.1175},
    {3, {0.2451, 0.7560, 1.3439, 2.1519}, {0.5005, 1.0500, 1.7479}, 0.03455},
    {4,
     {0.1284, 0.3880, 0.6568, 0.9423, 1.2562, 1.6180, 2.0690, 2.7326},
     {0.2582, 0.5224, 0.7995, 1.0993, 1.4371, 1.8435, 2.4008},
     0.00950},
};

TEST(LloydMax, SolverMatchesPublishedTables) {
  for (const Published& p : kPublished) {
    SCOPED_TRACE(p.bits);
    const LloydMax lm = SolveLloydMaxGaussian(p.bits);
    const int n = 1 << p.bits;
    ASSERT_EQ(static_cast<int>(lm.levels.size()), n);
    ASSERT_EQ(static_cast<int>(lm.thresholds.size()), n - 1);
    for (int i = 0; i < n / 2; ++i) {
      EXPECT_NEAR(lm.levels[n / 2 + i], p.levels[i], 1e-4);
      EXPECT_NEAR(lm.levels[n / 2 - 1 - i], -p.levels[i], 1e-4);  // symmetric
    }
    EXPECT_NEAR(lm.thresholds[n / 2 - 1], 0.0, 1e-6);
    for (int i = 0; i + 1 < n / 2; ++i) EXPECT_NEAR(lm.thresholds[n / 2 + i], p.thresholds[i], 1e-4);
    EXPECT_NEAR(lm.mse, p.mse, 1e-4);
  }
}

TEST(LloydMax, OneBitIsSignTimesMeanAbs) {
  // For 1 bit the optimum is ±E|X| = ±sqrt(2/pi), MSE 1 - 2/pi.
  const LloydMax lm = SolveLloydMaxGaussian(1);
  EXPECT_NEAR(lm.levels[1], 0.7978845608, 1e-7);
  EXPECT_NEAR(lm.mse, 1 - 0.6366197724, 1e-7);
}

TEST(LloydMax, CachedTablesAreTheSolverOutput) {
  for (int bits = 2; bits <= 4; ++bits) EXPECT_EQ(GaussianLevels(bits).levels, SolveLloydMaxGaussian(bits).levels);
}

}  // namespace
}  // namespace lr::kvquant
