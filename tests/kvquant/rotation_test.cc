#include "kvquant/rotation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

namespace lr::kvquant {
namespace {

std::vector<float> RandomRow(int dim, int seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(dim);
  for (float& v : x) v = normal(rng);
  return x;
}

double Norm(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += static_cast<double>(v) * v;
  return std::sqrt(s);
}

class RotationKinds : public ::testing::TestWithParam<RotationKind> {};

TEST_P(RotationKinds, OrthogonalAndInvertible) {
  for (int dim : {32, 64, 128, 320}) {
    const Rotation r(GetParam(), dim, 7, 3, 2);
    const std::vector<float> x = RandomRow(dim, dim);
    std::vector<float> y(dim), back(dim);
    r.Apply(x.data(), y.data());
    EXPECT_NEAR(Norm(y), Norm(x), 1e-4 * Norm(x));
    r.Invert(y.data(), back.data());
    for (int i = 0; i < dim; ++i) EXPECT_NEAR(back[i], x[i], 1e-5);
    // In place gives the same result.
    std::vector<float> z = x;
    r.Apply(z.data(), z.data());
    EXPECT_EQ(z, y);
  }
}

TEST_P(RotationKinds, PreservesInnerProducts) {
  const int dim = 128;
  const Rotation r(GetParam(), dim, 1, 0, 0);
  const std::vector<float> a = RandomRow(dim, 1), b = RandomRow(dim, 2);
  std::vector<float> ra(dim), rb(dim);
  r.Apply(a.data(), ra.data());
  r.Apply(b.data(), rb.data());
  double d0 = 0, d1 = 0;
  for (int i = 0; i < dim; ++i) d0 += a[i] * b[i], d1 += ra[i] * rb[i];
  EXPECT_NEAR(d0, d1, 1e-4);
}

TEST(Rotation, DeterministicFromSeedLayerHead) {
  const int dim = 64;
  const std::vector<float> x = RandomRow(dim, 5);
  for (RotationKind kind : {RotationKind::kHadamard, RotationKind::kGivens, RotationKind::kQuaternion}) {
    auto apply = [&](uint64_t seed, int layer, int head) {
      std::vector<float> y(dim);
      Rotation(kind, dim, seed, layer, head).Apply(x.data(), y.data());
      return y;
    };
    EXPECT_EQ(apply(42, 1, 2), apply(42, 1, 2));
    EXPECT_NE(apply(42, 1, 2), apply(42, 1, 3));
    EXPECT_NE(apply(42, 1, 2), apply(42, 2, 2));
    EXPECT_NE(apply(42, 1, 2), apply(43, 1, 2));
  }
}

INSTANTIATE_TEST_SUITE_P(All, RotationKinds,
                         ::testing::Values(RotationKind::kNone, RotationKind::kHadamard, RotationKind::kGivens,
                                           RotationKind::kQuaternion));

TEST(Rotation, HadamardMixesTheWholeSegment) {
  // A one-hot input spreads to ±1/sqrt(n) over its whole power-of-two segment.
  const Rotation r(RotationKind::kHadamard, 128, 9, 0, 0);
  std::vector<float> x(128, 0.0f), y(128);
  x[17] = 1.0f;
  r.Apply(x.data(), y.data());
  for (float v : y) EXPECT_NEAR(std::fabs(v), 1.0f / std::sqrt(128.0f), 1e-6);
}

TEST(Rotation, SegmentsAndBoundaries) {
  // 320 = 256 + 64: the leading 256 (an MLA latent) can be rotated on its own, 64 cannot.
  const Rotation h(RotationKind::kHadamard, 320, 1, 0, 0);
  EXPECT_TRUE(h.IsBoundary(0));
  EXPECT_TRUE(h.IsBoundary(256));
  EXPECT_TRUE(h.IsBoundary(320));
  EXPECT_FALSE(h.IsBoundary(64));
  EXPECT_FALSE(h.IsBoundary(321));
  const Rotation q(RotationKind::kQuaternion, 320, 1, 0, 0);
  EXPECT_TRUE(q.IsBoundary(64));
  EXPECT_FALSE(q.IsBoundary(66));

  // Rotating the leading 256 alone equals the leading 256 of the full rotation.
  const std::vector<float> x = RandomRow(320, 3);
  std::vector<float> full(320), part(320, 0.0f);
  h.Apply(x.data(), full.data());
  h.Apply(x.data(), part.data(), 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(part[i], full[i]);
}

}  // namespace
}  // namespace lr::kvquant
