// Lloyd-Max scalar quantizers for the standard normal distribution.
//
// The rotated formats (tq*, planar*, iso*, hx3) quantize coordinates that are close to Gaussian after a random
// rotation, so their code books are the MSE-optimal levels for N(0,1), scaled per block. The levels are computed
// here by our own solver (Lloyd iterations with exact Gaussian integrals, no tables copied from elsewhere); the test
// compares them with the published values in REFERENCES.md §5.
#pragma once

#include <vector>

namespace lr::kvquant {

struct LloydMax {
  std::vector<float> levels;      // 2^bits reconstruction levels, ascending, symmetric around 0
  std::vector<float> thresholds;  // 2^bits - 1 decision thresholds, ascending: midpoints of neighbouring levels
  double mse = 0;                 // expected squared error per coordinate for X ~ N(0,1)
};

// Solves for the optimal `bits`-bit quantizer of N(0,1) (1 <= bits <= 8) to a tolerance of 1e-12 in the levels.
LloydMax SolveLloydMaxGaussian(int bits);

// The solved quantizers for 2, 3 and 4 bits, computed once on first use (thread-safe).
const LloydMax& GaussianLevels(int bits);

}  // namespace lr::kvquant
