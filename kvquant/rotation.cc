#include "kvquant/rotation.h"

#include <cassert>
#include <cmath>

namespace lr::kvquant {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in [0, 1) with 24 random bits.
float Uniform(uint64_t& state) { return static_cast<float>(SplitMix64(state) >> 40) * (1.0f / 16777216.0f); }

struct Quat {
  float a, b, c, d;
};

Quat Mul(const Quat& p, const Quat& q) {
  return {p.a * q.a - p.b * q.b - p.c * q.c - p.d * q.d, p.a * q.b + p.b * q.a + p.c * q.d - p.d * q.c,
          p.a * q.c - p.b * q.d + p.c * q.a + p.d * q.b, p.a * q.d + p.b * q.c - p.c * q.b + p.d * q.a};
}

Quat Conj(const Quat& q) { return {q.a, -q.b, -q.c, -q.d}; }

// Uniformly random unit quaternion (Shoemake's method).
Quat RandomUnitQuat(uint64_t& state) {
  const float u1 = Uniform(state), u2 = Uniform(state), u3 = Uniform(state);
  const float r1 = std::sqrt(1 - u1), r2 = std::sqrt(u1);
  const float t2 = 2 * static_cast<float>(M_PI) * u2, t3 = 2 * static_cast<float>(M_PI) * u3;
  return {r1 * std::sin(t2), r1 * std::cos(t2), r2 * std::sin(t3), r2 * std::cos(t3)};
}

// In-place unnormalised Walsh-Hadamard transform of n (a power of two) values.
void Wht(float* x, int n) {
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; i += 2 * h) {
      for (int j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
    }
  }
}

}  // namespace

Rotation::Rotation(RotationKind kind, int dim, uint64_t seed, int layer, int head) : kind_(kind), dim_(dim) {
  // One stream per (seed, layer, head, kind): the three are hashed into the start state.
  uint64_t mix = (static_cast<uint64_t>(static_cast<uint32_t>(layer)) << 32) ^ static_cast<uint32_t>(head);
  mix ^= static_cast<uint64_t>(kind) << 60;
  uint64_t state = seed ^ SplitMix64(mix);
  switch (kind) {
    case RotationKind::kNone: break;
    case RotationKind::kHadamard: {
      assert(dim % 32 == 0);
      for (int rest = dim; rest > 0;) {
        int n = 1;
        while (n * 2 <= rest) n *= 2;
        segments_.push_back(n);
        rest -= n;
      }
      params_.resize(dim);
      for (int i = 0; i < dim; ++i) params_[i] = (SplitMix64(state) >> 63) ? -1.0f : 1.0f;
      break;
    }
    case RotationKind::kGivens:
      assert(dim % 2 == 0);
      params_.resize(dim);
      for (int i = 0; i < dim / 2; ++i) {
        const float theta = 2 * static_cast<float>(M_PI) * Uniform(state);
        params_[2 * i] = std::cos(theta);
        params_[2 * i + 1] = std::sin(theta);
      }
      break;
    case RotationKind::kQuaternion:
      assert(dim % 4 == 0);
      params_.resize(2 * dim);
      for (int i = 0; i < dim / 4; ++i) {
        const Quat l = RandomUnitQuat(state), r = RandomUnitQuat(state);
        float* p = &params_[8 * i];
        p[0] = l.a, p[1] = l.b, p[2] = l.c, p[3] = l.d;
        p[4] = r.a, p[5] = r.b, p[6] = r.c, p[7] = r.d;
      }
      break;
  }
}

bool Rotation::IsBoundary(int n) const {
  if (n < 0 || n > dim_) return false;
  switch (kind_) {
    case RotationKind::kNone: return true;
    case RotationKind::kGivens: return n % 2 == 0;
    case RotationKind::kQuaternion: return n % 4 == 0;
    case RotationKind::kHadamard: {
      int end = 0;
      for (int s : segments_) {
        if (end == n) return true;
        end += s;
      }
      return end == n;
    }
  }
  return false;
}

void Rotation::Apply(const float* x, float* y, int n) const {
  assert(IsBoundary(n));
  switch (kind_) {
    case RotationKind::kNone:
      if (x != y)
        for (int i = 0; i < n; ++i) y[i] = x[i];
      break;
    case RotationKind::kHadamard:
      for (int start = 0, k = 0; start < n; start += segments_[k++]) {
        const int len = segments_[k];
        for (int i = start; i < start + len; ++i) y[i] = x[i] * params_[i];
        Wht(y + start, len);
        const float norm = 1.0f / std::sqrt(static_cast<float>(len));
        for (int i = start; i < start + len; ++i) y[i] *= norm;
      }
      break;
    case RotationKind::kGivens:
      for (int i = 0; i < n; i += 2) {
        const float c = params_[i], s = params_[i + 1], a = x[i], b = x[i + 1];
        y[i] = c * a - s * b;
        y[i + 1] = s * a + c * b;
      }
      break;
    case RotationKind::kQuaternion:
      for (int i = 0; i < n; i += 4) {
        const float* p = &params_[2 * i];
        const Quat l{p[0], p[1], p[2], p[3]}, r{p[4], p[5], p[6], p[7]};
        const Quat w = Mul(Mul(l, Quat{x[i], x[i + 1], x[i + 2], x[i + 3]}), Conj(r));
        y[i] = w.a, y[i + 1] = w.b, y[i + 2] = w.c, y[i + 3] = w.d;
      }
      break;
  }
}

void Rotation::Invert(const float* y, float* x, int n) const {
  assert(IsBoundary(n));
  switch (kind_) {
    case RotationKind::kNone:
      if (x != y)
        for (int i = 0; i < n; ++i) x[i] = y[i];
      break;
    case RotationKind::kHadamard:
      for (int start = 0, k = 0; start < n; start += segments_[k++]) {
        const int len = segments_[k];
        if (x != y)
          for (int i = start; i < start + len; ++i) x[i] = y[i];
        Wht(x + start, len);
        const float norm = 1.0f / std::sqrt(static_cast<float>(len));
        for (int i = start; i < start + len; ++i) x[i] *= norm * params_[i];
      }
      break;
    case RotationKind::kGivens:
      for (int i = 0; i < n; i += 2) {
        const float c = params_[i], s = params_[i + 1], a = y[i], b = y[i + 1];
        x[i] = c * a + s * b;
        x[i + 1] = -s * a + c * b;
      }
      break;
    case RotationKind::kQuaternion:
      for (int i = 0; i < n; i += 4) {
        const float* p = &params_[2 * i];
        const Quat l{p[0], p[1], p[2], p[3]}, r{p[4], p[5], p[6], p[7]};
        const Quat v = Mul(Mul(Conj(l), Quat{y[i], y[i + 1], y[i + 2], y[i + 3]}), r);
        x[i] = v.a, x[i + 1] = v.b, x[i + 2] = v.c, x[i + 3] = v.d;
      }
      break;
  }
}

}  // namespace lr::kvquant
