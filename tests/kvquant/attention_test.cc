#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kvquant/attention_reference.h"
#include "kvquant/kernels.h"
#include "kvquant/kvquant.h"

namespace lr::kvquant {
namespace {

struct Cache {
  RowCodec k, v;
  std::vector<float> kf, vf, q;  // exact rows and queries
  std::vector<uint8_t> kb, vb;   // encoded rows
  std::vector<RowSpan> spans;
  std::vector<CodedSpans> Parts() const { return {{&k, &v, spans}}; }
};

// How MakeCache shapes the rows: N(0,1), or N(0,1) plus a constant per-channel offset (every 16th channel 6, the others
// up to 0.5, different for K and V), stored as is or centered on the rows' channel means, or centered and weighted
// (fixed weights 0.5 .. 2); or skewed: keys 4x larger in the first half of the channels, queries in the second half,
// stored as is or with the channel weights (E[q²] / E[k²])^(1/4) of kvquant.h; or turning: keys plus offsets that
// turn with the position as RoPE turns a constant offset (TurningPairs()), stored centered on the channel means or
// with those pairs as the rotating center (kvquant.h).
enum class Rows {
  kGaussian,
  kOffset,
  kOffsetCentered,
  kOffsetWeighted,
  kSkewed,
  kSkewedWeighted,
  kTurningCentered,
  kTurningRotating
};

// Six channel pairs with offsets of length 3 to 8 turning at 1 to 0.001 radians per position.
std::vector<RotatingCenter> TurningPairs() {
  std::vector<RotatingCenter> pairs;
  for (int p = 0; p < 6; ++p)
    pairs.push_back({2 * p + 1, 2 * p + 40, std::pow(0.25f, static_cast<float>(p)), 3.0f + p, p % 2 ? -4.0f : 2.0f});
  return pairs;
}

std::vector<float> ChannelMeans(const std::vector<float>& x, int dim) {
  std::vector<double> sum(dim, 0.0);
  for (size_t i = 0; i < x.size(); ++i) sum[i % dim] += x[i];
  std::vector<float> mean(dim);
  for (int j = 0; j < dim; ++j) mean[j] = static_cast<float>(sum[j] / static_cast<double>(x.size() / dim));
  return mean;
}

// n_rows rows of dim values in pages of `page` rows; queries 0.5·k_j + 0.5·noise.
Cache MakeCache(const std::string& kfmt, const std::string& vfmt, int dim, int n_rows, int n_q, int page, int seed,
                Rows rows = Rows::kGaussian) {
  Cache c{*RowCodec::Create(kfmt, dim, 9, 1, 0), *RowCodec::Create(vfmt, dim, 9, 1, 1), {}, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  c.kf.resize(static_cast<size_t>(n_rows) * dim);
  c.vf.resize(c.kf.size());
  for (float& x : c.kf) x = normal(rng);
  for (float& x : c.vf) x = normal(rng);
  const bool turning = rows == Rows::kTurningCentered || rows == Rows::kTurningRotating;
  if (rows != Rows::kGaussian && !turning) {
    for (size_t i = 0; i < c.kf.size(); ++i) {
      const int j = static_cast<int>(i % dim);
      c.kf[i] += j % 16 == 5 ? 6.0f : 0.5f * std::sin(static_cast<float>(j));
      c.vf[i] += j % 16 == 9 ? -6.0f : 0.5f * std::cos(static_cast<float>(j));
    }
  }
  if (turning) {
    for (int t = 0; t < n_rows; ++t) {
      for (const RotatingCenter& p : TurningPairs()) {
        float ua, ub;
        RotatingCenterAt(p, t, &ua, &ub);
        c.kf[t * dim + p.a] += ua;
        c.kf[t * dim + p.b] += ub;
      }
    }
  }
  if (rows == Rows::kTurningCentered) {
    EXPECT_TRUE(c.k.SetCenter(ChannelMeans(c.kf, dim)).ok());
  }
  if (rows == Rows::kTurningRotating) {
    EXPECT_TRUE(c.k.SetRotatingCenter(TurningPairs()).ok());
  }
  if (rows == Rows::kOffsetCentered || rows == Rows::kOffsetWeighted) {
    EXPECT_TRUE(c.k.SetCenter(ChannelMeans(c.kf, dim)).ok());
    EXPECT_TRUE(c.v.SetCenter(ChannelMeans(c.vf, dim)).ok());
  }
  if (rows == Rows::kOffsetWeighted) {
    std::vector<float> wk(dim), wv(dim);
    for (int j = 0; j < dim; ++j) wk[j] = 0.5f + 0.25f * static_cast<float>(j % 7), wv[j] = 2.0f - 0.25f * (j % 7);
    EXPECT_TRUE(c.k.SetWeights(wk).ok());
    EXPECT_TRUE(c.v.SetWeights(wv).ok());
  }
  const bool skewed = rows == Rows::kSkewed || rows == Rows::kSkewedWeighted;
  if (skewed)
    for (size_t i = 0; i < c.kf.size(); ++i) c.kf[i] *= static_cast<int>(i % dim) < dim / 2 ? 4.0f : 1.0f;
  for (int i = 0; i < n_q; ++i) {
    const int j = static_cast<int>(rng() % n_rows);
    for (int d = 0; d < dim; ++d) {
      const float q = 0.5f * c.kf[j * dim + d] + 0.5f * normal(rng);
      c.q.push_back(skewed ? (d < dim / 2 ? 0.25f : 4.0f) * q : q);
    }
  }
  if (rows == Rows::kSkewedWeighted) {
    std::vector<double> eq(dim, 0.0), ek(dim, 0.0);
    for (size_t i = 0; i < c.q.size(); ++i) eq[i % dim] += c.q[i] * c.q[i];
    for (size_t i = 0; i < c.kf.size(); ++i) ek[i % dim] += c.kf[i] * c.kf[i];
    std::vector<float> w(dim);
    for (int j = 0; j < dim; ++j) w[j] = static_cast<float>(std::pow(eq[j] / n_q / (ek[j] / n_rows), 0.25));
    EXPECT_TRUE(c.k.SetWeights(w).ok());
  }
  c.kb.resize(c.k.row_bytes() * n_rows);
  c.vb.resize(c.v.row_bytes() * n_rows);
  for (int t = 0; t < n_rows; ++t) {
    c.k.EncodeRow(&c.kf[t * dim], &c.kb[t * c.k.row_bytes()], t);
    c.v.EncodeRow(&c.vf[t * dim], &c.vb[t * c.v.row_bytes()], t);
  }
  for (int t = 0; t < n_rows; t += page)
    c.spans.push_back({&c.kb[t * c.k.row_bytes()], &c.vb[t * c.v.row_bytes()], std::min(page, n_rows - t), t});
  return c;
}

double RelError(const std::vector<float>& got, const std::vector<float>& want) {
  double e = 0, n = 0;
  for (size_t i = 0; i < got.size(); ++i) e += (got[i] - want[i]) * (got[i] - want[i]), n += want[i] * want[i];
  return std::sqrt(e / n);
}

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512})
    if (GetKernels(isa)) out.push_back(isa);
  return out;
}

class EveryFormat : public ::testing::TestWithParam<FormatInfo> {};

// Every kernel build (and the 2-thread split) computes the same attention as the scalar reference, up to float
// summation order; with centered and weighted codecs too (the reference decodes rows with their center and weights,
// the kernels divide the query by K's weights and the output by V's and add V's center). Query groups of 1 to 4 take
// the AVX-512 build's fused path, 6 its row-scratch path; pages of 37 rows end in short groups of rows.
TEST_P(EveryFormat, KernelsMatchScalarReference) {
  const std::string f(GetParam().name);
  struct Case {
    int dim;
    Rows rows;
    int n_q;
    int page;
  };
  for (const Case& cs :
       {Case{64, Rows::kGaussian, 3, 100}, Case{128, Rows::kGaussian, 3, 100}, Case{128, Rows::kOffsetCentered, 3, 100},
        Case{128, Rows::kOffsetWeighted, 3, 100}, Case{64, Rows::kGaussian, 1, 37}, Case{64, Rows::kGaussian, 2, 37},
        Case{128, Rows::kGaussian, 4, 37}, Case{64, Rows::kOffsetWeighted, 6, 37}}) {
    const int dim = cs.dim, n_q = cs.n_q;
    Cache c = MakeCache(f, f, dim, 300, n_q, cs.page, dim, cs.rows);
    const float scale = 1.0f / std::sqrt(static_cast<float>(dim));
    std::vector<float> want(n_q * dim), got(n_q * dim);
    AttendReference(c.Parts(), 0, c.q.data(), n_q, scale, want.data());
    for (Isa isa : SupportedIsas()) {
      for (int threads : {1, 2}) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " threads " + std::to_string(threads) + " dim " + std::to_string(dim) +
                     " n_q " + std::to_string(n_q) + " page " + std::to_string(cs.page));
        ASSERT_TRUE(AttendWith(*GetKernels(isa), c.Parts(), 0, c.q.data(), n_q, scale, got.data(), threads).ok());
        EXPECT_LT(RelError(got, want), 2e-6);
      }
    }
    ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), n_q, c.spans, scale, got.data()).ok());
    EXPECT_LT(RelError(got, want), 2e-6);
  }
}

// exp_sum of every build against plain double arithmetic: the running max taken over the chunk (exactly), then the
// exponentials and their sum, for chunk lengths around the vector widths and a running max below or above the chunk's.
TEST(Kernels, ExpSumMatchesScalar) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (Isa isa : SupportedIsas()) {
    for (int n : {1, 7, 8, 15, 16, 17, 33, 64}) {
      for (float start : {-INFINITY, 0.0f, 30.0f}) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " n " + std::to_string(n) + " start " + std::to_string(start));
        std::vector<float> s(n);
        for (float& x : s) x = normal(rng);
        float want_max = start;
        for (float x : s) want_max = std::max(want_max, x);
        double want_sum = 0;
        std::vector<double> want(n);
        for (int t = 0; t < n; ++t) want_sum += want[t] = std::exp(static_cast<double>(s[t]) - want_max);
        float max = start;
        const float sum = GetKernels(isa)->exp_sum(s.data(), n, &max);
        EXPECT_EQ(max, want_max);
        EXPECT_NEAR(sum, want_sum, 2e-6 * want_sum + 1e-30);
        for (int t = 0; t < n; ++t) EXPECT_NEAR(s[t], want[t], 2e-6 * want[t] + 1e-30) << t;
      }
    }
  }
}

// add_rows of every build against the plain loop, for 1 to 6 queries and row counts off the vector widths.
TEST(Kernels, AddRowsMatchesScalar) {
  std::mt19937 rng(6);
  std::normal_distribution<float> normal;
  const int n_rows = 16, stride = 64;
  std::vector<float> rows(static_cast<size_t>(n_rows) * stride);
  for (float& x : rows) x = normal(rng);
  for (Isa isa : SupportedIsas()) {
    for (int n_q : {1, 3, 4, 6}) {
      for (int n : {5, 16, 32, 37}) {
        SCOPED_TRACE(std::string(IsaName(isa)) + " n_q " + std::to_string(n_q) + " n " + std::to_string(n));
        std::vector<float> c(static_cast<size_t>(n_q) * n_rows), s(static_cast<size_t>(n_q) * n);
        for (float& x : c) x = normal(rng);
        for (float& x : s) x = normal(rng);
        std::vector<double> want(s.begin(), s.end());
        for (int i = 0; i < n_q; ++i)
          for (int t = 0; t < n; ++t)
            for (int j = 0; j < n_rows; ++j)
              want[i * n + t] += static_cast<double>(c[i * n_rows + j]) * rows[j * stride + t];
        GetKernels(isa)->add_rows(c.data(), n_q, rows.data(), n_rows, stride, n, s.data());
        for (size_t k = 0; k < s.size(); ++k) EXPECT_NEAR(s[k], want[k], 1e-5 * (1 + std::abs(want[k]))) << k;
      }
    }
  }
}

// Mixed key and value formats (the runner picks them separately).
TEST(Attention, SeparateKeyAndValueFormats) {
  Cache c = MakeCache("hx3", "q8_0", 128, 200, 4, 64, 3);
  std::vector<float> want(4 * 128), got(4 * 128);
  AttendReference(c.Parts(), 0, c.q.data(), 4, 0.1f, want.data());
  ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), 4, c.spans, 0.1f, got.data()).ok());
  EXPECT_LT(RelError(got, want), 2e-6);
}

// Attention output against exact f32 attention on the unquantized rows (Gaussian data, 1024 rows, dim 128).
// The tolerance per format is 1.2x to 1.5x its measured error, so a regression in a format's accuracy fails here.
// (Measured: q4_0 0.104, tq4 0.105, tq3 0.207, tq2 0.445, hx3 0.157.)
TEST(Attention, ErrorAgainstExactAttention) {
  const struct {
    const char* name;
    double tolerance;
  } cases[] = {{"f16", 1e-3},  {"q8_0", 0.009}, {"q4_0", 0.14},    {"q4_0h", 0.13},   {"tq4", 0.14},
               {"tq3", 0.26},  {"tq2", 0.55},   {"planar3", 0.26}, {"planar4", 0.14}, {"iso3", 0.26},
               {"iso4", 0.14}, {"hx3", 0.20},   {"hx3s", 0.26},    {"hx4", 0.14}};
  for (const auto& cs : cases) {
    Cache c = MakeCache(cs.name, cs.name, 128, 1024, 8, 256, 5);
    const float scale = 1.0f / std::sqrt(128.0f);
    std::vector<float> exact(8 * 128), got(8 * 128);
    AttendF32(c.kf.data(), c.vf.data(), 1024, 128, 128, c.q.data(), 8, scale, exact.data());
    ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), 8, c.spans, scale, got.data()).ok());
    const double err = RelError(got, exact);
    EXPECT_LT(err, cs.tolerance) << cs.name;
  }
}

// Centering is exact: on f16 rows with channel offsets, centered attention equals exact f32 attention on the raw rows
// up to fp16 rounding of the centered rows (which is finer than that of the raw ones).
TEST(Attention, CenteringIsExact) {
  Cache raw = MakeCache("f16", "f16", 128, 500, 4, 128, 6, Rows::kOffset);
  Cache centered = MakeCache("f16", "f16", 128, 500, 4, 128, 6, Rows::kOffsetCentered);
  const float scale = 1.0f / std::sqrt(128.0f);
  std::vector<float> exact(4 * 128), got(4 * 128), got_raw(4 * 128);
  AttendF32(centered.kf.data(), centered.vf.data(), 500, 128, 128, centered.q.data(), 4, scale, exact.data());
  ASSERT_TRUE(Attend(centered.k, centered.v, centered.q.data(), 4, centered.spans, scale, got.data()).ok());
  ASSERT_TRUE(Attend(raw.k, raw.v, raw.q.data(), 4, raw.spans, scale, got_raw.data()).ok());
  EXPECT_LT(RelError(got, exact), 5e-4);
  EXPECT_LT(RelError(got_raw, exact), 5e-4);
}

// Attention on f16 rows stored as `rows` says (centered, weighted, ...) against exact f32 attention on the raw rows.
double F16ErrorAgainstExact(Rows rows) {
  Cache c = MakeCache("f16", "f16", 128, 500, 4, 128, 6, rows);
  const float scale = 1.0f / std::sqrt(128.0f);
  std::vector<float> exact(4 * 128), got(4 * 128);
  AttendF32(c.kf.data(), c.vf.data(), 500, 128, 128, c.q.data(), 4, scale, exact.data());
  EXPECT_TRUE(Attend(c.k, c.v, c.q.data(), 4, c.spans, scale, got.data()).ok());
  return RelError(got, exact);
}

// Weights are exact too: f16 rows stored centered and weighted give exact attention up to fp16 rounding.
TEST(Attention, WeightsAreExact) { EXPECT_LT(F16ErrorAgainstExact(Rows::kOffsetWeighted), 5e-4); }

// Where the keys' energy and the queries' sit in different channels, key weights (E[q²] / E[k²])^(1/4) move the
// rounding error out of the channels the queries read: the attention error of every rotating format falls by at
// least 1.3x (measured: tq2 1.47x, q4_0h 1.7x, tq3 1.8x, tq4 2.3x, planar3 2.4x, iso3 4.6x, planar4 5.1x, hx3 5.3x,
// iso4 12.7x).
TEST(Attention, KeyWeightsLowerErrorWhereQueriesAndKeysDiffer) {
  for (const FormatInfo& f : ListFormats()) {
    if (f.name == "f16" || f.name == "q8_0" || f.name == "q4_0") continue;  // no rotation: the error stays per channel
    double err[2];
    for (int weighted = 0; weighted < 2; ++weighted) {
      Cache c =
          MakeCache(std::string(f.name), "f16", 128, 1024, 8, 256, 5, weighted ? Rows::kSkewedWeighted : Rows::kSkewed);
      const float scale = 1.0f / std::sqrt(128.0f) / 4.0f;
      std::vector<float> exact(8 * 128), got(8 * 128);
      AttendF32(c.kf.data(), c.vf.data(), 1024, 128, 128, c.q.data(), 8, scale, exact.data());
      ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), 8, c.spans, scale, got.data()).ok());
      err[weighted] = RelError(got, exact);
    }
    EXPECT_LT(err[1] * 1.3, err[0]) << f.name << ": error " << err[0] << " unweighted, " << err[1] << " weighted";
  }
}

// On rows with channel offsets, every compressed format's attention error against exact attention falls with the
// rows' channel means as centers: by at least 1.2x (measured: 1.28x tq4, 1.3x-1.4x tq2/tq3/q4_0h, 1.9x hx3, more for
// the formats without a Hadamard rotation).
TEST(Attention, CenteringLowersErrorOnOffsetRows) {
  for (const FormatInfo& f : ListFormats()) {
    if (f.name == "f16") continue;
    double err[2];
    for (int centered = 0; centered < 2; ++centered) {
      Cache c = MakeCache(std::string(f.name), std::string(f.name), 128, 1024, 8, 256, 5,
                          centered ? Rows::kOffsetCentered : Rows::kOffset);
      const float scale = 1.0f / std::sqrt(128.0f);
      std::vector<float> exact(8 * 128), got(8 * 128);
      AttendF32(c.kf.data(), c.vf.data(), 1024, 128, 128, c.q.data(), 8, scale, exact.data());
      ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), 8, c.spans, scale, got.data()).ok());
      err[centered] = RelError(got, exact);
    }
    EXPECT_LT(err[1] * 1.2, err[0]) << f.name << ": error " << err[0] << " uncentered, " << err[1] << " centered";
  }
}

// A rotating center is exact: f16 keys with turning offsets stored less the turning center give exact attention up
// to fp16 rounding; every kernel build and the 2- and 3-thread splits (which cut pages mid-way, so pieces start at
// other positions) match the scalar reference, which decodes every row at its position.
TEST(Attention, RotatingCenterIsExact) {
  EXPECT_LT(F16ErrorAgainstExact(Rows::kTurningRotating), 5e-4);
  Cache hx3 = MakeCache("hx3", "tq3", 128, 500, 4, 128, 6, Rows::kTurningRotating);
  const float scale = 1.0f / std::sqrt(128.0f);
  std::vector<float> want(4 * 128), got(4 * 128);
  AttendReference(hx3.Parts(), 0, hx3.q.data(), 4, scale, want.data());
  for (Isa isa : SupportedIsas()) {
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " threads " + std::to_string(threads));
      ASSERT_TRUE(AttendWith(*GetKernels(isa), hx3.Parts(), 0, hx3.q.data(), 4, scale, got.data(), threads).ok());
      EXPECT_LT(RelError(got, want), 2e-6);
    }
  }
}

// On keys whose offsets turn with the position, a fixed center (the channel means) removes little of them; the
// rotating center removes them: the MSE of the decoded keys of every rotating format falls at least 2-fold (measured:
// 2.3x for each of q4_0h, tq4, tq3, hx3, tq2). (The attention error on these synthetic rows, whose queries share the
// keys' offsets, does not follow it; the gain on the model's rows is measured by perplexity, docs/RESULTS.md.)
TEST(Attention, RotatingCenterLowersKeyErrorOnTurningOffsets) {
  for (const char* f : {"q4_0h", "tq4", "tq3", "hx3", "tq2"}) {
    double mse[2];
    for (int rotating = 0; rotating < 2; ++rotating) {
      Cache c = MakeCache(f, "f16", 128, 1024, 8, 256, 5, rotating ? Rows::kTurningRotating : Rows::kTurningCentered);
      mse[rotating] = 0;
      std::vector<float> row(128);
      for (int t = 0; t < 1024; ++t) {
        c.k.DecodeRow(&c.kb[t * c.k.row_bytes()], row.data(), t);
        for (int j = 0; j < 128; ++j) mse[rotating] += (row[j] - c.kf[t * 128 + j]) * (row[j] - c.kf[t * 128 + j]);
      }
    }
    EXPECT_LT(mse[1] * 2, mse[0]) << f << ": key MSE " << mse[0] / 1024 / 128 << " centered, " << mse[1] / 1024 / 128
                                  << " rotating center";
  }
}

INSTANTIATE_TEST_SUITE_P(All, EveryFormat, ::testing::ValuesIn(ListFormats()),
                         [](const auto& info) { return std::string(info.param.name); });

// MLA: one row of 320 = latent 256 + rope key 64; V is the leading 256 values of the same stored row.
TEST(Attention, SharedKeyValueRows) {
  for (const char* f : {"f16", "q8_0", "tq3", "hx3", "planar3", "iso4"}) {
    SCOPED_TRACE(f);
    Cache c = MakeCache(f, f, 320, 150, 4, 64, 8, Rows::kOffsetWeighted);
    for (RowSpan& s : c.spans) s.v = nullptr;  // ignored for shared rows
    std::vector<float> want(4 * 256), got(4 * 256);
    AttendReference(c.Parts(), 256, c.q.data(), 4, 0.07f, want.data());
    ASSERT_TRUE(AttendSharedKV(c.k, 256, c.q.data(), 4, c.spans, 0.07f, got.data()).ok());
    EXPECT_LT(RelError(got, want), 2e-6);
  }
  Cache c = MakeCache("tq3", "tq3", 320, 10, 1, 10, 1);
  std::vector<float> out(320);
  // 64 is not a segment boundary of the 256 + 64 Hadamard; 100 is no block boundary.
  EXPECT_EQ(AttendSharedKV(c.k, 64, c.q.data(), 1, c.spans, 1, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AttendSharedKV(c.k, 100, c.q.data(), 1, c.spans, 1, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AttendSharedKV(c.k, 0, c.q.data(), 1, c.spans, 1, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AttendSharedKV(c.k, 321, c.q.data(), 1, c.spans, 1, out.data()).code(), StatusCode::kInvalidArgument);
}

// A range attended in pieces (AttendMixedState) and merged (FinishAttention) gives AttendMixed's result: what lets
// the runner split one head's range between threads.
TEST(Attention, StatesOfPiecesMergeToTheWholeRange) {
  Cache c = MakeCache("hx3", "tq3", 128, 300, 3, 100, 4, Rows::kOffsetWeighted);
  std::vector<float> want(3 * 128), got(3 * 128);
  ASSERT_TRUE(AttendMixed(c.Parts(), c.q.data(), 3, 0.09f, want.data()).ok());
  // Pieces of 1, 150 and 149 rows, the middle one across a page boundary.
  const std::vector<RowSpan> pieces[] = {
      {{c.spans[0].k, c.spans[0].v, 1}},
      {{c.spans[0].k + c.k.row_bytes(), c.spans[0].v + c.v.row_bytes(), 99}, {c.spans[1].k, c.spans[1].v, 51}},
      {{c.spans[1].k + 51 * c.k.row_bytes(), c.spans[1].v + 51 * c.v.row_bytes(), 49}, c.spans[2]}};
  std::vector<AttentionState> states(3);
  for (int p = 0; p < 3; ++p) {
    const CodedSpans part{&c.k, &c.v, pieces[p]};
    ASSERT_TRUE(AttendMixedState({&part, 1}, c.q.data(), 3, 0.09f, &states[p]).ok());
  }
  FinishAttention(states, 3, 128, got.data());
  EXPECT_LT(RelError(got, want), 2e-6);
}

// A range in two formats (the first rows f16, the rest centered hx3 keys and tq3 values, as the runner's cache with
// f16 sink rows): every kernel build and the 2-thread split match the scalar reference, which decodes each part with
// its own codec. The key center's shift matters here (it differs between the parts), unlike within one format.
TEST(Attention, MixedFormatsMatchScalarReference) {
  Cache f16 = MakeCache("f16", "f16", 64, 200, 3, 32, 11, Rows::kOffset);
  Cache hx3 = MakeCache("hx3", "tq3", 64, 200, 3, 32, 11, Rows::kOffsetCentered);
  ASSERT_EQ(f16.kf, hx3.kf);
  // Rows 0..4 from the f16 cache, rows 5..199 from the compressed one: one range of 200 distinct rows.
  const RowSpan head[] = {{f16.kb.data(), f16.vb.data(), 5}};
  std::vector<RowSpan> tail = {{&hx3.kb[5 * hx3.k.row_bytes()], &hx3.vb[5 * hx3.v.row_bytes()], 27}};
  for (size_t i = 1; i < hx3.spans.size(); ++i) tail.push_back(hx3.spans[i]);
  const CodedSpans parts[] = {{&f16.k, &f16.v, head}, {&hx3.k, &hx3.v, tail}};
  const float scale = 0.125f;
  std::vector<float> want(3 * 64), got(3 * 64);
  AttendReference(parts, 0, hx3.q.data(), 3, scale, want.data());
  for (Isa isa : SupportedIsas()) {
    for (int threads : {1, 2, 3}) {
      SCOPED_TRACE(std::string(IsaName(isa)) + " threads " + std::to_string(threads));
      ASSERT_TRUE(AttendWith(*GetKernels(isa), parts, 0, hx3.q.data(), 3, scale, got.data(), threads).ok());
      EXPECT_LT(RelError(got, want), 2e-6);
    }
  }
  ASSERT_TRUE(AttendMixed(parts, hx3.q.data(), 3, scale, got.data()).ok());
  EXPECT_LT(RelError(got, want), 2e-6);
  const CodedSpans null_codec[] = {{&f16.k, nullptr, head}};
  EXPECT_EQ(AttendMixed(null_codec, hx3.q.data(), 3, scale, got.data()).code(), StatusCode::kInvalidArgument);
  Cache wide = MakeCache("f16", "f16", 128, 10, 1, 10, 1);
  const CodedSpans unequal[] = {{&f16.k, &f16.v, head}, {&wide.k, &wide.v, wide.spans}};
  EXPECT_EQ(AttendMixed(unequal, hx3.q.data(), 3, scale, got.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AttendMixed({}, hx3.q.data(), 3, scale, got.data()).code(), StatusCode::kInvalidArgument);
}

// k sequences forked from one prompt: the shared pages read once for all their queries, then each sequence's own rows,
// give what each sequence's own attention over the whole range gives (sequences with no own rows, and groups of 1 to
// 6 queries: the fused and the scratch kernel paths).
TEST(Attention, SharedPrefixEqualsPerSequenceAttention) {
  for (const char* format : {"f16", "q8_0", "hx3"}) {
    for (int n_q : {1, 3, 6}) {
      SCOPED_TRACE(std::string(format) + " n_q " + std::to_string(n_q));
      const int n_seq = 4, dim = 64, shared_rows = 96;
      Cache prompt = MakeCache(format, format, dim, shared_rows, n_seq * n_q, 32, 21, Rows::kOffset);
      std::vector<Cache> tails;
      std::vector<std::vector<CodedSpans>> own(n_seq);
      for (int s = 0; s < n_seq; ++s) tails.push_back(MakeCache(format, format, dim, 1 + 13 * s, 1, 32, 30 + s));
      for (int s = 1; s < n_seq; ++s) own[s] = {{&prompt.k, &prompt.v, tails[s].spans}};  // sequence 0: no own rows
      const std::vector<std::span<const CodedSpans>> own_spans(own.begin(), own.end());
      std::vector<float> got(static_cast<size_t>(n_seq) * n_q * dim), want(static_cast<size_t>(n_q) * dim);
      ASSERT_TRUE(AttendSharedPrefix(prompt.Parts(), own_spans, prompt.q.data(), n_q, 0.125f, got.data()).ok());
      for (int s = 0; s < n_seq; ++s) {
        std::vector<CodedSpans> whole = prompt.Parts();
        whole.insert(whole.end(), own[s].begin(), own[s].end());
        ASSERT_TRUE(AttendMixed(whole, prompt.q.data() + s * n_q * dim, n_q, 0.125f, want.data()).ok());
        const std::vector<float> mine(got.begin() + s * n_q * dim, got.begin() + (s + 1) * n_q * dim);
        EXPECT_LT(RelError(mine, want), 2e-6) << "sequence " << s;
      }
    }
  }
}

TEST(Attention, BadRangesAreClearErrors) {
  Cache c = MakeCache("tq3", "tq3", 64, 10, 2, 10, 1);
  std::vector<float> out(2 * 64);
  const Status empty = Attend(c.k, c.v, c.q.data(), 2, {}, 1, out.data());
  EXPECT_EQ(empty.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("empty"), std::string::npos);
  const RowSpan zero[] = {{c.kb.data(), c.vb.data(), 0}};
  EXPECT_EQ(Attend(c.k, c.v, c.q.data(), 2, zero, 1, out.data()).code(), StatusCode::kInvalidArgument);
  const RowSpan negative[] = {{c.kb.data(), c.vb.data(), -1}};
  EXPECT_EQ(Attend(c.k, c.v, c.q.data(), 2, negative, 1, out.data()).code(), StatusCode::kInvalidArgument);
  const RowSpan null_v[] = {{c.kb.data(), nullptr, 3}};
  EXPECT_EQ(Attend(c.k, c.v, c.q.data(), 2, null_v, 1, out.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Attend(c.k, c.v, c.q.data(), 0, c.spans, 1, out.data()).code(), StatusCode::kInvalidArgument);
}

// Empty spans between non-empty ones are skipped; a range cut into pages gives the same result as one span.
TEST(Attention, PagesAndEmptySpans) {
  Cache c = MakeCache("iso3", "tq4", 128, 257, 2, 257, 4);
  std::vector<float> one(2 * 128), paged(2 * 128);
  ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), 2, c.spans, 0.1f, one.data()).ok());
  std::vector<RowSpan> pages;
  for (int t = 0; t < 257; t += 16) {
    pages.push_back({&c.kb[t * c.k.row_bytes()], &c.vb[t * c.v.row_bytes()], std::min(16, 257 - t)});
    pages.push_back({nullptr, nullptr, 0});
  }
  ASSERT_TRUE(Attend(c.k, c.v, c.q.data(), 2, pages, 0.1f, paged.data()).ok());
  EXPECT_LT(RelError(paged, one), 2e-6);
}

}  // namespace
}  // namespace lr::kvquant
