// The format table, block layouts, and the scalar encoder/decoder of every format.
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <string>

#include "base/half.h"
#include "kvquant/codes.h"
#include "kvquant/kvquant.h"
#include "kvquant/lloyd_max.h"

namespace lr::kvquant {
namespace {

using Scale = ScaleRule;
enum class Levels { kInt8, kOffset8, kLm2, kLm3, kLm4 };

struct RunSpec {
  int bits;
  int count;
  Levels levels;
};

struct FormatSpec {
  FormatInfo info;
  RotationKind rotation;
  Scale scale;
  int n_runs;
  RunSpec runs[2];
};

constexpr FormatSpec kFormats[] = {
    {{"f16", 1, 2, 16.0, "IEEE half per value"}, RotationKind::kNone, Scale::kNone, 0, {}},
    {{"q8_0", 32, 34, 8.5, "llama.cpp q8_0: fp16 scale + 32 int8"},
     RotationKind::kNone,
     Scale::kMaxQ8,
     1,
     {{8, 32, Levels::kInt8}}},
    {{"q4_0", 32, 18, 4.5, "llama.cpp q4_0: fp16 scale + 32 nibbles, offset 8"},
     RotationKind::kNone,
     Scale::kMaxQ4,
     1,
     {{4, 32, Levels::kOffset8}}},
    {{"q4_0h", 32, 18, 4.5, "q4_0 after a Walsh-Hadamard rotation with random signs"},
     RotationKind::kHadamard,
     Scale::kMaxQ4,
     1,
     {{4, 32, Levels::kOffset8}}},
    {{"tq4", 32, 18, 4.5, "Hadamard + 4-bit Lloyd-Max, least-squares scale + coordinate descent per 32"},
     RotationKind::kHadamard,
     Scale::kLeastSquares,
     1,
     {{4, 32, Levels::kLm4}}},
    {{"tq3", 32, 14, 3.5, "Hadamard + 3-bit Lloyd-Max, least-squares scale + coordinate descent per 32"},
     RotationKind::kHadamard,
     Scale::kLeastSquares,
     1,
     {{3, 32, Levels::kLm3}}},
    {{"tq2", 32, 10, 2.5, "Hadamard + 2-bit Lloyd-Max, least-squares scale + coordinate descent per 32"},
     RotationKind::kHadamard,
     Scale::kLeastSquares,
     1,
     {{2, 32, Levels::kLm2}}},
    {{"planar3", 128, 50, 3.125, "Givens pairs + 3-bit Lloyd-Max, norm kept per 128"},
     RotationKind::kGivens,
     Scale::kNorm,
     1,
     {{3, 128, Levels::kLm3}}},
    {{"planar4", 128, 66, 4.125, "Givens pairs + 4-bit Lloyd-Max, norm kept per 128"},
     RotationKind::kGivens,
     Scale::kNorm,
     1,
     {{4, 128, Levels::kLm4}}},
    {{"iso3", 128, 50, 3.125, "quaternion quartets qL*v*conj(qR) + 3-bit Lloyd-Max, norm kept per 128"},
     RotationKind::kQuaternion,
     Scale::kNorm,
     1,
     {{3, 128, Levels::kLm3}}},
    {{"iso4", 128, 66, 4.125, "quaternion quartets qL*v*conj(qR) + 4-bit Lloyd-Max, norm kept per 128"},
     RotationKind::kQuaternion,
     Scale::kNorm,
     1,
     {{4, 128, Levels::kLm4}}},
    {{"hx3", 128, 56, 3.5, "ours: Hadamard + 48x4-bit/80x3-bit Lloyd-Max per 128, descent, dot-preserving scale"},
     RotationKind::kHadamard,
     Scale::kSelfDot,
     2,
     {{4, 48, Levels::kLm4}, {3, 80, Levels::kLm3}}},
    {{"hx3s", 128, 50, 3.125, "hx3's block with 3-bit codes only: Hadamard + 3-bit Lloyd-Max per 128, as hx3"},
     RotationKind::kHadamard,
     Scale::kSelfDot,
     1,
     {{3, 128, Levels::kLm3}}},
    {{"hx4", 128, 66, 4.125, "hx3's block with 4-bit codes only: Hadamard + 4-bit Lloyd-Max per 128, as hx3"},
     RotationKind::kHadamard,
     Scale::kSelfDot,
     1,
     {{4, 128, Levels::kLm4}}},
};
constexpr int kNumFormats = sizeof(kFormats) / sizeof(kFormats[0]);
constexpr int kMaxDim = 4096;

const float* LevelTable(Levels which) {
  static const auto kInt8 = [] {
    std::vector<float> t(256);
    for (int c = 0; c < 256; ++c) t[c] = static_cast<float>(static_cast<int8_t>(c));
    return t;
  }();
  static const auto kOffset8 = [] {
    std::vector<float> t(16);
    for (int c = 0; c < 16; ++c) t[c] = static_cast<float>(c - 8);
    return t;
  }();
  // Lloyd-Max tables padded with zeros to 16 floats, so that a kernel can hold any of them in one 16-lane register.
  static const auto kLm = [] {
    std::vector<std::vector<float>> t;
    for (int bits = 2; bits <= 4; ++bits) {
      t.push_back(GaussianLevels(bits).levels);
      t.back().resize(16, 0.0f);
    }
    return t;
  }();
  switch (which) {
    case Levels::kInt8: return kInt8.data();
    case Levels::kOffset8: return kOffset8.data();
    case Levels::kLm2: return kLm[0].data();
    case Levels::kLm3: return kLm[1].data();
    case Levels::kLm4: return kLm[2].data();
  }
  return nullptr;
}

int FindSpec(std::string_view name) {
  for (int i = 0; i < kNumFormats; ++i)
    if (kFormats[i].info.name == name) return i;
  return -1;
}

// Index of the level nearest to v in an ascending table of n levels.
int Nearest(const float* levels, int n, float v) {
  int c = 0;
  while (c + 1 < n && v > 0.5f * (levels[c] + levels[c + 1])) ++c;
  return c;
}

void EncodeBlock(Scale scale, const BlockLayout& b, const float* y, uint8_t* dst) {
  const int n = b.size;
  const float* lv[128];
  int nl[128];
  for (int r = 0, i = 0; r < b.n_runs; ++r)
    for (int j = 0; j < b.runs[r].count; ++j, ++i) lv[i] = b.runs[r].levels, nl[i] = 1 << b.runs[r].bits;
  uint8_t codes[128];
  float d = 0;
  switch (scale) {
    case Scale::kNone: assert(false); break;
    case Scale::kMaxQ8: {
      float amax = 0;
      for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(y[i]));
      d = amax / 127.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      for (int i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(static_cast<int8_t>(std::lround(y[i] * id)));
      break;
    }
    case Scale::kMaxQ4: {
      float amax = 0, max = 0;
      for (int i = 0; i < n; ++i) {
        if (std::fabs(y[i]) > amax) amax = std::fabs(y[i]), max = y[i];
      }
      d = max / -8.0f;
      const float id = d != 0 ? 1.0f / d : 0.0f;
      for (int i = 0; i < n; ++i) {
        const int c = static_cast<int8_t>(y[i] * id + 8.5f);
        codes[i] = static_cast<uint8_t>(c < 15 ? c : 15);
      }
      break;
    }
    case Scale::kLeastSquares:
    case Scale::kSelfDot:
    case Scale::kNorm: {
      double ss = 0;
      for (int i = 0; i < n; ++i) ss += static_cast<double>(y[i]) * y[i];
      const float rms = static_cast<float>(std::sqrt(ss / n));
      const float id = rms != 0 ? 1.0f / rms : 0.0f;
      for (int i = 0; i < n; ++i) codes[i] = static_cast<uint8_t>(Nearest(lv[i], nl[i], y[i] * id));
      if (ss == 0) break;
      double s1 = 0, s2 = 0;  // Σ y·l and Σ l², the least-squares scale is s1 / s2
      for (int i = 0; i < n; ++i) {
        const double l = lv[i][codes[i]];
        s1 += y[i] * l;
        s2 += l * l;
      }
      if (scale == Scale::kNorm) {
        d = s2 > 0 ? static_cast<float>(std::sqrt(ss / s2)) : 0.0f;
        break;
      }
      // Coordinate descent: the error with the best scale is Σy² - s1²/s2, so keep the move that raises s1²/s2 (the
      // squared cosine between y and the levels, which is also what the dot-preserving scale's error falls with).
      for (int pass = 0; pass < 2; ++pass) {
        for (int i = 0; i < n; ++i) {
          const double l = lv[i][codes[i]];
          for (int step = -1; step <= 1; step += 2) {
            const int c = codes[i] + step;
            if (c < 0 || c >= nl[i]) continue;
            const double l2 = lv[i][c];
            const double t1 = s1 + y[i] * (l2 - l), t2 = s2 + l2 * l2 - l * l;
            if (t1 > 0 && t1 * t1 * s2 > s1 * s1 * t2) {
              s1 = t1, s2 = t2;
              codes[i] = static_cast<uint8_t>(c);
              break;
            }
          }
        }
      }
      if (s2 > 0 && s1 > 0) d = static_cast<float>(scale == Scale::kLeastSquares ? s1 / s2 : ss / s1);
      break;
    }
  }
  const uint16_t h = FloatToHalf(d);
  std::memcpy(dst, &h, 2);
  uint8_t* p = dst + 2;
  for (int r = 0, i = 0; r < b.n_runs; ++r) {
    PackCodes(b.runs[r].bits, b.runs[r].count, codes + i, p);
    i += b.runs[r].count;
    p += b.runs[r].count * b.runs[r].bits / 8;
  }
}

void DecodeBlock(const BlockLayout& b, const uint8_t* src, float* y) {
  uint16_t h;
  std::memcpy(&h, src, 2);
  const float d = HalfToFloat(h);
  const uint8_t* p = src + 2;
  uint8_t codes[128];
  for (int r = 0, i = 0; r < b.n_runs; ++r) {
    UnpackCodes(b.runs[r].bits, b.runs[r].count, p, codes);
    for (int j = 0; j < b.runs[r].count; ++j) y[i + j] = d * b.runs[r].levels[codes[j]];
    i += b.runs[r].count;
    p += b.runs[r].count * b.runs[r].bits / 8;
  }
}

}  // namespace

void PackCodes(int bits, int n, const uint8_t* codes, uint8_t* dst) {
  assert(n % 16 == 0);
  switch (bits) {
    case 8: std::memcpy(dst, codes, n); break;
    case 4:
      for (int g = 0; g < n; g += 32) {
        const int half = std::min(32, n - g) / 2;  // 16, or 8 in a final group of 16
        for (int j = 0; j < half; ++j) *dst++ = static_cast<uint8_t>(codes[g + j] | codes[g + j + half] << 4);
      }
      break;
    case 2:
    case 3:
      for (int t = 0; t < n; t += 16) {
        const uint8_t* c = codes + t;
        for (int j = 0; j < 4; ++j)
          *dst++ = static_cast<uint8_t>((c[j] & 3) | (c[j + 4] & 3) << 2 | (c[j + 8] & 3) << 4 | (c[j + 12] & 3) << 6);
        if (bits == 3) {
          uint16_t hi = 0;
          for (int j = 0; j < 16; ++j) hi |= static_cast<uint16_t>(((c[j] >> 2) & 1) << j);
          std::memcpy(dst, &hi, 2);
          dst += 2;
        }
      }
      break;
    default: assert(false && "bits must be 2, 3, 4 or 8");
  }
}

void UnpackCodes(int bits, int n, const uint8_t* src, uint8_t* codes) {
  assert(n % 16 == 0);
  switch (bits) {
    case 8: std::memcpy(codes, src, n); break;
    case 4:
      for (int g = 0; g < n; g += 32) {
        const int half = std::min(32, n - g) / 2;
        for (int j = 0; j < half; ++j, ++src) codes[g + j] = *src & 15, codes[g + j + half] = *src >> 4;
      }
      break;
    case 2:
    case 3:
      for (int t = 0; t < n; t += 16) {
        uint8_t* c = codes + t;
        for (int j = 0; j < 4; ++j)
          for (int s = 0; s < 4; ++s) c[j + 4 * s] = (src[j] >> (2 * s)) & 3;
        src += 4;
        if (bits == 3) {
          uint16_t hi;
          std::memcpy(&hi, src, 2);
          for (int j = 0; j < 16; ++j) c[j] |= static_cast<uint8_t>(((hi >> j) & 1) << 2);
          src += 2;
        }
      }
      break;
    default: assert(false && "bits must be 2, 3, 4 or 8");
  }
}

std::vector<FormatInfo> ListFormats() {
  std::vector<FormatInfo> out;
  for (const FormatSpec& s : kFormats) out.push_back(s.info);
  return out;
}

Result<FormatInfo> FindFormat(std::string_view name) {
  const int i = FindSpec(name);
  if (i >= 0) return kFormats[i].info;
  std::string valid;
  for (const FormatSpec& s : kFormats) valid += (valid.empty() ? "" : ", ") + std::string(s.info.name);
  return InvalidArgument("unknown KV cache format '" + std::string(name) + "'; expected one of: " + valid);
}

RowCodec::RowCodec(const FormatInfo& info, int spec, int dim, Rotation rotation)
    : info_(info), spec_(spec), dim_(dim), rotation_(std::move(rotation)) {}

Result<RowCodec> RowCodec::Create(std::string_view format, int dim, uint64_t seed, int layer, int head) {
  LR_ASSIGN_OR_RETURN(FormatInfo info, FindFormat(format));
  const int spec_index = FindSpec(format);
  const FormatSpec& spec = kFormats[spec_index];
  const std::string what = "KV format " + std::string(info.name) + ": row dim " + std::to_string(dim);
  if (dim < 1 || dim > kMaxDim)
    return InvalidArgument(what + " is out of range; expected 1.." + std::to_string(kMaxDim));
  if (spec.n_runs > 0) {
    if (dim % 32 != 0) return InvalidArgument(what + " is not a multiple of 32");
    if (spec.n_runs > 1 && dim % 64 != 0) return InvalidArgument(what + " is not a multiple of 64");
  }
  RowCodec codec(info, spec_index, dim, Rotation(spec.rotation, dim, seed, layer, head));
  if (spec.n_runs == 0) {
    codec.row_bytes_ = 2 * static_cast<size_t>(dim);
    return codec;
  }
  int offset = 0;
  for (int begin = 0; begin < dim; begin += info.block_elems) {
    BlockLayout b{};
    b.begin = begin;
    b.size = std::min(info.block_elems, dim - begin);
    b.offset = offset;
    b.n_runs = spec.n_runs;
    for (int r = 0; r < spec.n_runs; ++r) {
      const RunSpec& rs = spec.runs[r];
      b.runs[r] = {rs.bits, rs.count, LevelTable(rs.levels)};
    }
    if (b.size < info.block_elems) {  // a short last block
      if (spec.n_runs == 1) {
        b.runs[0].count = b.size;
      } else {  // hx3: n/2 - 16 four-bit codes keep the block at 3.5 bits
        b.runs[0].count = b.size / 2 - 16;
        b.runs[1].count = b.size - b.runs[0].count;
      }
    }
    for (int r = 0; r < spec.n_runs; ++r) offset += b.runs[r].count * b.runs[r].bits / 8;
    offset += 2;
    codec.blocks_.push_back(b);
  }
  codec.row_bytes_ = static_cast<size_t>(offset);
  return codec;
}

ScaleRule RowCodec::scale_rule() const { return kFormats[spec_].scale; }

Status RowCodec::SetCenter(std::span<const float> center) {
  if (!center.empty() && center.size() != static_cast<size_t>(dim_))
    return InvalidArgument("KV format " + std::string(info_.name) + ": center of " + std::to_string(center.size()) +
                           " values for rows of dim " + std::to_string(dim_) + "; expected dim values or none");
  center_.assign(center.begin(), center.end());
  return Status::Ok();
}

Status RowCodec::SetWeights(std::span<const float> weights) {
  if (!weights.empty() && weights.size() != static_cast<size_t>(dim_))
    return InvalidArgument("KV format " + std::string(info_.name) + ": channel weights of " +
                           std::to_string(weights.size()) + " values for rows of dim " + std::to_string(dim_) +
                           "; expected dim values or none");
  for (size_t i = 0; i < weights.size(); ++i)
    if (!(weights[i] > 0) || !std::isfinite(weights[i]))
      return InvalidArgument("KV format " + std::string(info_.name) + ": channel weight " + std::to_string(i) + " is " +
                             std::to_string(weights[i]) + "; expected a positive finite number");
  weights_.assign(weights.begin(), weights.end());
  return Status::Ok();
}

Status RowCodec::SetRotatingCenter(std::span<const RotatingCenter> pairs) {
  if (pairs.size() > kMaxRotatingPairs)
    return InvalidArgument("KV format " + std::string(info_.name) + ": " + std::to_string(pairs.size()) +
                           " rotating center pairs; expected at most " + std::to_string(kMaxRotatingPairs));
  std::vector<bool> used(dim_, false);
  for (size_t i = 0; i < pairs.size(); ++i) {
    const RotatingCenter& p = pairs[i];
    const bool in_range = p.a >= 0 && p.a < dim_ && p.b >= 0 && p.b < dim_ && p.a != p.b;
    if (!in_range || used[p.a] || used[p.b] || !std::isfinite(p.theta) || !std::isfinite(p.ca) || !std::isfinite(p.cb))
      return InvalidArgument("KV format " + std::string(info_.name) + ": rotating center pair " + std::to_string(i) +
                             " (channels " + std::to_string(p.a) + ", " + std::to_string(p.b) +
                             "); expected two distinct channels below " + std::to_string(dim_) +
                             ", in no other pair, and finite values");
    used[p.a] = used[p.b] = true;
  }
  rotating_.assign(pairs.begin(), pairs.end());
  rotating_table_.assign(pairs.size() * 2 * kRotatingTableRows, 0.0f);
  for (size_t p = 0; p < pairs.size(); ++p) {
    for (int t = 0; t < kRotatingTableRows; ++t) {
      const double angle = static_cast<double>(t) * pairs[p].theta;
      rotating_table_[(2 * p) * kRotatingTableRows + t] = static_cast<float>(std::cos(angle));
      rotating_table_[(2 * p + 1) * kRotatingTableRows + t] = static_cast<float>(std::sin(angle));
    }
  }
  return Status::Ok();
}

void RotatingCenterAt(const RotatingCenter& p, int pos, float* ua, float* ub) {
  const double angle = static_cast<double>(pos) * p.theta, c = std::cos(angle), s = std::sin(angle);
  *ua = static_cast<float>(p.ca * c - p.cb * s);
  *ub = static_cast<float>(p.ca * s + p.cb * c);
}

void RowCodec::EncodeRow(const float* x, uint8_t* dst, int pos) const {
  float centered[kMaxDim];
  if (!center_.empty() || !weights_.empty() || !rotating_.empty()) {
    for (int i = 0; i < dim_; ++i) centered[i] = center_.empty() ? x[i] : x[i] - center_[i];
    for (const RotatingCenter& p : rotating_) {
      float ua, ub;
      RotatingCenterAt(p, pos, &ua, &ub);
      centered[p.a] -= ua;
      centered[p.b] -= ub;
    }
    for (size_t i = 0; i < weights_.size(); ++i) centered[i] *= weights_[i];
    x = centered;
  }
  if (is_f16()) {
    for (int i = 0; i < dim_; ++i) {
      const uint16_t h = FloatToHalf(x[i]);
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return;
  }
  float y[kMaxDim];
  rotation_.Apply(x, y);
  const Scale scale = kFormats[spec_].scale;
  for (const BlockLayout& b : blocks_) EncodeBlock(scale, b, y + b.begin, dst + b.offset);
}

void RowCodec::DecodeRowRotated(const uint8_t* src, float* y) const {
  if (is_f16()) {
    for (int i = 0; i < dim_; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      y[i] = HalfToFloat(h);
    }
    return;
  }
  for (const BlockLayout& b : blocks_) DecodeBlock(b, src + b.offset, y + b.begin);
}

void RowCodec::DecodeRow(const uint8_t* src, float* x, int pos) const {
  DecodeRowRotated(src, x);
  rotation_.Invert(x, x);
  for (size_t i = 0; i < weights_.size(); ++i) x[i] /= weights_[i];
  for (size_t i = 0; i < center_.size(); ++i) x[i] += center_[i];
  for (const RotatingCenter& p : rotating_) {
    float ua, ub;
    RotatingCenterAt(p, pos, &ua, &ub);
    x[p.a] += ua;
    x[p.b] += ub;
  }
}

}  // namespace lr::kvquant
