// Deterministic orthogonal rotations of a row, applied before quantization.
//
// A random orthogonal map spreads the energy of outlier channels over many coordinates and makes coordinates close
// to Gaussian, so that one Lloyd-Max code book fits all of them. Because the map R is orthogonal, q·k = (Rq)·(Rk):
// attention rotates the query once and scores the stored (rotated) keys directly; values are accumulated in the
// rotated domain and the output is rotated back once.
//
// Every rotation is block-diagonal over the row and derived only from (seed, layer, head), so a cache can be rebuilt,
// shared between processes and checked in tests:
//   kHadamard:   the row is cut into power-of-two segments, largest first (e.g. 320 = 256 + 64); on each segment
//                y = H·diag(s)·x / sqrt(n), H the Walsh-Hadamard matrix, s random signs. O(d log d).
//   kGivens:     coordinate pairs (2i, 2i+1) are rotated by a random angle each (PlanarQuant). O(d).
//   kQuaternion: coordinate quartets are read as a quaternion v and mapped to q_L·v·conj(q_R) with random unit
//                quaternions q_L, q_R per quartet (IsoQuant, full form). O(d).
#pragma once

#include <cstdint>
#include <vector>

namespace lr::kvquant {

enum class RotationKind { kNone, kHadamard, kGivens, kQuaternion };

class Rotation {
 public:
  // `dim` must suit the kind: a multiple of 32 for kHadamard, of 2 for kGivens, of 4 for kQuaternion (the codec
  // checks this before it builds one).
  Rotation(RotationKind kind, int dim, uint64_t seed, int layer, int head);

  RotationKind kind() const { return kind_; }
  int dim() const { return dim_; }

  // y = R x. x and y may alias. Only the first `n` coordinates are touched; `n` must end on a segment boundary
  // (IsBoundary), which lets MLA rotate the leading value part of a shared latent row on its own.
  void Apply(const float* x, float* y, int n) const;
  void Apply(const float* x, float* y) const { Apply(x, y, dim_); }
  // x = R^T y, the inverse. Same aliasing and `n` rules.
  void Invert(const float* y, float* x, int n) const;
  void Invert(const float* y, float* x) const { Invert(y, x, dim_); }

  // True when coordinate range [0, n) is a union of whole segments of the rotation.
  bool IsBoundary(int n) const;

  // The random parameters, for a device that applies the same rotation: kHadamard dim signs (+-1), kGivens dim/2
  // (cos, sin) pairs, kQuaternion per quartet q_L then q_R (8 floats, (a, b, c, d) each); empty for kNone.
  const std::vector<float>& params() const { return params_; }

 private:
  RotationKind kind_;
  int dim_;
  std::vector<int> segments_;  // kHadamard: segment lengths, in order
  std::vector<float> params_;  // signs (kHadamard), cos/sin pairs (kGivens), q_L and q_R (kQuaternion)
};

}  // namespace lr::kvquant
