// Weight kernels: the scalar dequantizers against hand-built blocks (bit positions of each format), and MatMul at
// every SIMD level this CPU has against the scalar reference (dequantize + f64 dot) on random blocks.
#include "ops/kernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "base/half.h"
#include "tests/ops/random_rows.h"

namespace lr::ops {
namespace {

using testing::PutHalf;
using testing::RandomRows;

TensorTypeInfo Info(TensorType t) { return *LookupTensorType(static_cast<uint32_t>(t)); }

// --- hand-built blocks: each checks one layout detail against the format's definition ---

TEST(DequantizeRow, Q4_0NibbleOrder) {
  uint8_t blk[18] = {};
  PutHalf(blk, 0.5f);
  for (int j = 0; j < 16; ++j) blk[2 + j] = static_cast<uint8_t>((j & 0xF) | ((15 - j) << 4));
  float y[32];
  DequantizeRow(Info(TensorType::kQ4_0), blk, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(y[j], 0.5f * (j - 8));
    EXPECT_FLOAT_EQ(y[j + 16], 0.5f * (15 - j - 8));
  }
}

TEST(DequantizeRow, Q4_1AddsMin) {
  uint8_t blk[20] = {};
  PutHalf(blk, 0.25f);
  PutHalf(blk + 2, -1.0f);
  for (int j = 0; j < 16; ++j) blk[4 + j] = static_cast<uint8_t>(j | (j << 4));
  float y[32];
  DequantizeRow(Info(TensorType::kQ4_1), blk, y, 32);
  for (int j = 0; j < 16; ++j) {
    EXPECT_FLOAT_EQ(y[j], 0.25f * j - 1.0f);
    EXPECT_FLOAT_EQ(y[j + 16], 0.25f * j - 1.0f);
  }
}

TEST(DequantizeRow, Q8_0Signed) {
  uint8_t blk[34] = {};
  PutHalf(blk, 2.0f);
  for (int j = 0; j < 32; ++j) blk[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(j - 16));
  float y[32];
  DequantizeRow(Info(TensorType::kQ8_0), blk, y, 32);
  for (int j = 0; j < 32; ++j) EXPECT_FLOAT_EQ(y[j], 2.0f * (j - 16));
}

TEST(DequantizeRow, Q4_KScalePackingAndNibbles) {
  uint8_t blk[144] = {};
  PutHalf(blk, 1.0f);      // d
  PutHalf(blk + 2, 0.5f);  // dmin
  uint8_t* s = blk + 4;
  // Sub-block 1: scale 7, min 3 (low 6 bits of bytes 1 and 5). Sub-block 5: scale 3 | (1 << 4) = 19 taken from
  // byte 9's low nibble and byte 1's top two bits; min 2 | (2 << 4) = 34 from byte 9's high nibble and byte 5's top.
  s[1] = 7 | (1 << 6);
  s[5] = 3 | (2 << 6);
  s[9] = 3 | (2 << 4);
  uint8_t* qs = blk + 16;
  for (int l = 0; l < 32; ++l) {
    qs[l] = 0x20 | 0x01;       // pair 0: sub-block 0 = 1 (scale 0), sub-block 1 = 2
    qs[64 + l] = 0x50 | 0x04;  // pair 2: sub-block 4 = 4, sub-block 5 = 5
  }
  float y[256];
  DequantizeRow(Info(TensorType::kQ4_K), blk, y, 256);
  for (int l = 0; l < 32; ++l) {
    EXPECT_FLOAT_EQ(y[l], 0.0f);                         // scale 0, min 0
    EXPECT_FLOAT_EQ(y[32 + l], 7.0f * 2 - 0.5f * 3);     // sub-block 1
    EXPECT_FLOAT_EQ(y[160 + l], 19.0f * 5 - 0.5f * 34);  // sub-block 5
    EXPECT_FLOAT_EQ(y[128 + l], 0.0f);                   // sub-block 4: scale (s[8] & 15) | (s[0] >> 6) = 0
  }
}

TEST(DequantizeRow, Q5_KHighBit) {
  uint8_t blk[176] = {};
  PutHalf(blk, 1.0f);
  uint8_t* s = blk + 4;
  for (int j = 0; j < 4; ++j) s[j] = 1;  // scales 0-3 = 1
  s[8] = s[9] = s[10] = s[11] = 1;       // scales 4-7 = 1 (low nibble), mins 0
  uint8_t* qh = blk + 16;
  qh[3] = 1 << 6;  // value 3 of sub-block 6 gets +16
  uint8_t* qs = blk + 48;
  qs[96 + 3] = 0x0F;  // value 3 of sub-block 6 (pair 3, low nibble) = 15
  float y[256];
  DequantizeRow(Info(TensorType::kQ5_K), blk, y, 256);
  for (int i = 0; i < 256; ++i) EXPECT_FLOAT_EQ(y[i], i == 6 * 32 + 3 ? 31.0f : 0.0f) << i;
}

TEST(DequantizeRow, Q6_KLayout) {
  uint8_t blk[210] = {};
  PutHalf(blk + 208, 1.0f);
  int8_t* sc = reinterpret_cast<int8_t*>(blk + 192);
  for (int i = 0; i < 16; ++i) sc[i] = static_cast<int8_t>(i + 1);
  // Everything 0 decodes to (0 - 32) * scale. Second half, value 64 + 17: low bits from ql[64 + 17] high nibble,
  // high bits from bits 4-5 of qh[32 + 17]; its scale is scales[8 + (64 + 17) / 16] = scales[13].
  blk[64 + 17] = 0xA0;            // low nibble of the high half: 10
  blk[128 + 32 + 17] = 0x2 << 4;  // high bits: 2 -> 32
  float y[256];
  DequantizeRow(Info(TensorType::kQ6_K), blk, y, 256);
  for (int i = 0; i < 256; ++i) {
    const int scale = i / 16 + 1;
    const float expected = i == 128 + 64 + 17 ? 14.0f * (42 - 32) : static_cast<float>(scale * -32);
    EXPECT_FLOAT_EQ(y[i], expected) << i;
  }
}

TEST(DequantizeRow, FloatTypes) {
  const float v[3] = {1.5f, -2.25f, 3.0f};
  float y[3];
  DequantizeRow(Info(TensorType::kF32), reinterpret_cast<const uint8_t*>(v), y, 3);
  EXPECT_EQ(std::memcmp(v, y, sizeof(v)), 0);
  uint8_t h[6];
  for (int i = 0; i < 3; ++i) PutHalf(h + 2 * i, v[i]);
  DequantizeRow(Info(TensorType::kF16), h, y, 3);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(y[i], v[i]);
  uint8_t b[6];
  for (int i = 0; i < 3; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &v[i], 4);
    const uint16_t top = static_cast<uint16_t>(bits >> 16);
    std::memcpy(b + 2 * i, &top, 2);
  }
  DequantizeRow(Info(TensorType::kBF16), b, y, 3);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(y[i], v[i]);
}

TEST(QuantizeRowQ8, RoundTripAndSums) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> x(96);
  for (float& v : x) v = nd(rng);
  std::vector<BlockQ8> q(3);
  QuantizeRowQ8(x.data(), 96, q.data());
  for (int b = 0; b < 3; ++b) {
    int sums[2] = {0, 0};
    for (int i = 0; i < 32; ++i) {
      EXPECT_LE(std::fabs(q[b].d * q[b].q[i] - x[32 * b + i]), q[b].d * 0.5f + 1e-6f);
      sums[i / 16] += q[b].q[i];
    }
    EXPECT_EQ(q[b].sum[0], sums[0]);
    EXPECT_EQ(q[b].sum[1], sums[1]);
    EXPECT_FLOAT_EQ(q[b].s, q[b].d * static_cast<float>(sums[0] + sums[1]));
  }
}

// Every level quantizes bit for bit as the scalar level does, ties (x.5 after scaling, rounded to even) and an
// all-zero block included.
TEST(QuantizeRowQ8, EveryLevelEqualsScalar) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> x(32 * 20);
  for (float& v : x) v = nd(rng);
  for (int i = 0; i < 32; ++i) x[32 + i] = 0.0f;
  for (int i = 0; i < 32; ++i) x[64 + i] = i == 0 ? 127.0f : (i % 2 ? 0.5f : -2.5f) + static_cast<float>(i % 7);
  const Isa detected = BestIsa();
  SetActiveIsa(Isa::kBaseline);
  std::vector<BlockQ8> ref(20);
  QuantizeRowQ8(x.data(), static_cast<int64_t>(x.size()), ref.data());
  for (int level = 1; level <= static_cast<int>(detected); ++level) {
    SetActiveIsa(static_cast<Isa>(level));
    std::vector<BlockQ8> q(20);
    QuantizeRowQ8(x.data(), static_cast<int64_t>(x.size()), q.data());
    for (int b = 0; b < 20; ++b) {
      EXPECT_EQ(std::memcmp(&q[b], &ref[b], sizeof(BlockQ8)), 0)
          << "block " << b << " level " << IsaName(static_cast<Isa>(level));
    }
  }
  SetActiveIsa(detected);
}

// --- MatMul against the reference on random rows ---

struct Case {
  TensorType type;
  int64_t cols;
};

class MatMulTest : public ::testing::TestWithParam<Case> {};

TEST_P(MatMulTest, MatchesReferenceAtEveryLevel) {
  const TensorTypeInfo t = Info(GetParam().type);
  const int64_t cols = GetParam().cols;
  const int64_t rows = 37;  // not a multiple of the 16-row chunks
  const int n_tokens = 6;   // one group of 4 tokens and 2 single ones
  const int64_t y_stride = rows + 5;
  std::mt19937 rng(static_cast<uint32_t>(t.type) * 7919u + 17u);
  const std::vector<uint8_t> data = RandomRows(t, rows, cols, rng);
  const WeightMatrix w{t, data.data(), rows, cols, RowBytes(t, cols)};
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(cols * n_tokens);
  for (float& v : x) v = nd(rng);

  // References in f64 from the decoded weights: with the exact activations (the scalar path and float weights), and
  // with the activations after int8 quantization (what the SIMD integer kernels multiply). Both are tight: a nibble,
  // lane or scale mix-up is far outside them.
  std::vector<float> xq_values(x.size());
  {
    std::vector<BlockQ8> xq(cols / 32 + 1);
    for (int tok = 0; tok < n_tokens && cols % 32 == 0; ++tok) {
      QuantizeRowQ8(x.data() + tok * cols, cols, xq.data());
      for (int64_t c = 0; c < cols; ++c) xq_values[tok * cols + c] = xq[c / 32].d * xq[c / 32].q[c % 32];
    }
  }
  std::vector<double> ref(rows * n_tokens), ref_q8(rows * n_tokens), scale(rows * n_tokens);
  std::vector<float> wrow(cols);
  for (int64_t r = 0; r < rows; ++r) {
    DequantizeRow(t, w.row(r), wrow.data(), cols);
    for (int tok = 0; tok < n_tokens; ++tok) {
      double sum = 0, sum_q8 = 0, abs_sum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        sum += static_cast<double>(wrow[c]) * x[tok * cols + c];
        sum_q8 += static_cast<double>(wrow[c]) * xq_values[tok * cols + c];
        abs_sum += std::fabs(static_cast<double>(wrow[c]) * x[tok * cols + c]);
      }
      ref[tok * rows + r] = sum;
      ref_q8[tok * rows + r] = sum_q8;
      scale[tok * rows + r] = abs_sum;
    }
  }

  const Isa detected = BestIsa();
  for (int level = 0; level <= static_cast<int>(detected); ++level) {
    SetActiveIsa(static_cast<Isa>(level));
    std::vector<float> y(y_stride * n_tokens, -12345.0f);
    MatMul(w, x.data(), n_tokens, y.data(), y_stride);
    const bool integer_path = t.block_elems != 1 && level != 0;
    for (int tok = 0; tok < n_tokens; ++tok) {
      for (int64_t r = 0; r < rows; ++r) {
        const int i = tok * rows + r;
        const double expect = integer_path ? ref_q8[i] : ref[i];
        ASSERT_NEAR(y[tok * y_stride + r], expect, 2e-5 * scale[i] + 1e-6)
            << t.name << " level " << IsaName(static_cast<Isa>(level)) << " row " << r << " token " << tok;
      }
      for (int64_t r = rows; r < y_stride; ++r) ASSERT_EQ(y[tok * y_stride + r], -12345.0f);  // padding untouched
    }
    if (integer_path) {  // and the int8 activations stay close to the exact product
      for (int i = 0; i < rows * n_tokens; ++i) ASSERT_NEAR(ref_q8[i], ref[i], 0.02 * scale[i] + 1e-6);
    }
  }
  SetActiveIsa(detected);
}

// q4_1 and q8_0 also at 3 and 5 blocks: the 512-bit kernels take blocks in pairs and the odd last one alone.
INSTANTIATE_TEST_SUITE_P(
    AllTypes, MatMulTest,
    ::testing::Values(Case{TensorType::kF32, 70}, Case{TensorType::kF16, 70}, Case{TensorType::kBF16, 70},
                      Case{TensorType::kQ4_0, 128}, Case{TensorType::kQ4_1, 128}, Case{TensorType::kQ4_1, 96},
                      Case{TensorType::kQ4_1, 160}, Case{TensorType::kQ8_0, 128}, Case{TensorType::kQ8_0, 96},
                      Case{TensorType::kQ8_0, 160}, Case{TensorType::kQ4_K, 512}, Case{TensorType::kQ5_K, 512},
                      Case{TensorType::kQ6_K, 512}),
    [](const auto& info) { return std::string(Info(info.param.type).name) + "_" + std::to_string(info.param.cols); });

// MatMulMany splits the rows of all its products over the threads in one region: each output must equal MatMul's
// for that matrix alone, bit for bit, at every level, whatever the mix of types and row counts.
TEST(MatMulMany, EqualsOneMatMulPerMatrix) {
  const int64_t cols = 256;
  const int n_tokens = 3;
  std::mt19937 rng(99);
  const TensorType types[] = {TensorType::kQ4_1, TensorType::kQ8_0, TensorType::kF16};
  const int64_t rows[] = {37, 16, 5};
  std::vector<std::vector<uint8_t>> data;
  std::vector<WeightMatrix> ws;
  for (int i = 0; i < 3; ++i) data.push_back(RandomRows(Info(types[i]), rows[i], cols, rng));
  for (int i = 0; i < 3; ++i)
    ws.push_back({Info(types[i]), data[i].data(), rows[i], cols, RowBytes(Info(types[i]), cols)});
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(cols * n_tokens);
  for (float& v : x) v = nd(rng);
  const Isa detected = BestIsa();
  for (int level = 0; level <= static_cast<int>(detected); ++level) {
    SetActiveIsa(static_cast<Isa>(level));
    std::vector<std::vector<float>> one(3), many(3);
    std::vector<MatMulOut> outs;
    for (int i = 0; i < 3; ++i) {
      const int64_t stride = rows[i] + 3;
      one[i].assign(stride * n_tokens, -1.0f);
      many[i].assign(stride * n_tokens, -1.0f);
      MatMul(ws[i], x.data(), n_tokens, one[i].data(), stride);
      outs.push_back({&ws[i], many[i].data(), stride});
    }
    MatMulMany(outs, x.data(), n_tokens);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(many[i], one[i]) << "matrix " << i << " level " << level;

    // The same products inside a parallel region the caller opened, and with `add` onto what y held.
    std::vector<std::vector<float>> team(3), added(3);
    std::vector<MatMulOut> team_outs, add_outs;
    for (int i = 0; i < 3; ++i) {
      team[i].assign(one[i].size(), -1.0f);
      added[i].assign(one[i].size(), 0.0f);
      for (size_t j = 0; j < added[i].size(); ++j) added[i][j] = 0.25f * static_cast<float>(j % 5);
      team_outs.push_back({&ws[i], team[i].data(), rows[i] + 3});
      add_outs.push_back({&ws[i], added[i].data(), rows[i] + 3, /*add=*/true});
    }
    std::vector<BlockQ8> xq(n_tokens * cols / 32);
#pragma omp parallel num_threads(2)
    {
      MatMulManyTeam(team_outs, x.data(), n_tokens, xq.data());
      MatMulManyTeam(add_outs, x.data(), n_tokens, xq.data());
    }
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(team[i], one[i]) << "matrix " << i << " level " << level;
      for (int t = 0; t < n_tokens; ++t) {
        for (int64_t r = 0; r < rows[i] + 3; ++r) {
          const size_t j = static_cast<size_t>(t * (rows[i] + 3) + r);
          const float before = 0.25f * static_cast<float>(j % 5);
          EXPECT_EQ(added[i][j], r < rows[i] ? before + one[i][j] : before) << "matrix " << i << " level " << level;
        }
      }
    }
  }
  SetActiveIsa(detected);
}

// MatMulTasksTeam: each task (its own matrix, inputs and token count, as MoE experts are) must equal MatMul of that
// task alone, bit for bit, at every level, with 1, 2 and 3 threads splitting the tasks' rows (a split may fall inside
// a task), for row layouts and repacked ones, and a task of zero tokens writes nothing.
TEST(MatMulTasksTeam, EqualsOneMatMulPerTask) {
  const int64_t cols = 128;
  std::mt19937 rng(23);
  const TensorType types[] = {TensorType::kQ4_0, TensorType::kQ4_0, TensorType::kQ8_0, TensorType::kF16,
                              TensorType::kQ4_1};
  const int64_t rows[] = {48, 80, 32, 21, 16};
  const int tokens[] = {1, 7, 3, 2, 0};
  constexpr int kTasks = 5;
  std::vector<std::vector<uint8_t>> data;
  std::vector<OwnedWeightMatrix> packed;
  std::vector<WeightMatrix> ws;
  for (int i = 0; i < kTasks; ++i) {
    data.push_back(RandomRows(Info(types[i]), rows[i], cols, rng));
    ws.push_back({Info(types[i]), data[i].data(), rows[i], cols, RowBytes(Info(types[i]), cols)});
  }
  for (int i : {1, 2}) {  // two of them repacked
    packed.push_back(Repack16(ws[i]));
    ws[i] = packed.back().view;
  }
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<std::vector<float>> x(kTasks);
  std::vector<std::vector<BlockQ8>> xq(kTasks);
  for (int i = 0; i < kTasks; ++i) {
    x[i].resize(static_cast<size_t>(cols * std::max(tokens[i], 1)));
    for (float& v : x[i]) v = nd(rng);
    xq[i].resize(x[i].size() / 32);
  }
  const Isa detected = BestIsa();
  for (int level = 0; level <= static_cast<int>(detected); ++level) {
    SetActiveIsa(static_cast<Isa>(level));
    for (int i = 0; i < kTasks; ++i) QuantizeRowQ8(x[i].data(), static_cast<int64_t>(x[i].size()), xq[i].data());
    for (int threads = 1; threads <= 3; ++threads) {
      std::vector<std::vector<float>> one(kTasks), got(kTasks);
      std::vector<MatMulTask> tasks;
      for (int i = 0; i < kTasks; ++i) {
        const int64_t stride = rows[i] + 2;
        one[i].assign(static_cast<size_t>(stride * std::max(tokens[i], 1)), -1.0f);
        got[i] = one[i];
        if (tokens[i] > 0) MatMul(ws[i], x[i].data(), tokens[i], one[i].data(), stride);
        tasks.push_back({ws[i], x[i].data(), xq[i].data(), tokens[i], got[i].data(), stride});
      }
#pragma omp parallel num_threads(threads)
      MatMulTasksTeam(tasks);
      for (int i = 0; i < kTasks; ++i)
        EXPECT_EQ(got[i], one[i]) << "task " << i << " level " << level << " threads " << threads;
    }
  }
  SetActiveIsa(detected);
}

// --- GemmF32 against an f64 product, at every level, on shapes with partial row tiles and column strips ---

TEST(GemmF32, MatchesF64AtEveryLevel) {
  struct Shape {
    int m, n, k;
  };
  // 6-row tiles and 2 x 16 (AVX-512) or 2 x 8 (AVX2) column strips: full ones, partial ones, a strip narrower than
  // one vector, k = 0; the MLA shapes (320-wide queries by latent rows, probabilities by 256-wide rows).
  const Shape shapes[] = {{1, 1, 1}, {7, 45, 70}, {13, 33, 5},   {6, 32, 320},
                          {5, 7, 3}, {4, 9, 0},   {32, 256, 64}, {19, 100, 320}};
  std::mt19937 rng(29);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const Isa detected = BestIsa();
  for (const Shape& s : shapes) {
    const int64_t lda = s.k + 3, ldb = s.n + 5, ldc = s.n + 2;
    std::vector<float> a(static_cast<size_t>(s.m * lda)), b(static_cast<size_t>(std::max(s.k, 1) * ldb));
    for (float& v : a) v = nd(rng);
    for (float& v : b) v = nd(rng);
    for (int level = 0; level <= static_cast<int>(detected); ++level) {
      SetActiveIsa(static_cast<Isa>(level));
      std::vector<float> c(static_cast<size_t>(s.m * ldc), -12345.0f);
      GemmF32(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), ldc);
      for (int i = 0; i < s.m; ++i) {
        for (int j = 0; j < s.n; ++j) {
          double want = 0, abs_sum = 0;
          for (int p = 0; p < s.k; ++p) {
            want += static_cast<double>(a[i * lda + p]) * b[p * ldb + j];
            abs_sum += std::fabs(static_cast<double>(a[i * lda + p]) * b[p * ldb + j]);
          }
          ASSERT_NEAR(c[i * ldc + j], want, 1e-5 * abs_sum + 1e-7)
              << "level " << IsaName(static_cast<Isa>(level)) << " shape " << s.m << "x" << s.n << "x" << s.k << " at "
              << i << "," << j;
        }
        for (int64_t j = s.n; j < ldc; ++j) ASSERT_EQ(c[i * ldc + j], -12345.0f);  // padding untouched
      }
    }
  }
  SetActiveIsa(detected);
}

// --- Repack16: the 16-row interleaved layout against the GGUF rows it was made from ---

struct RepackCase {
  TensorType type;
  int64_t rows;
  int64_t cols;
};

class Repack16Test : public ::testing::TestWithParam<RepackCase> {};

TEST_P(Repack16Test, RowsRoundTrip) {
  const TensorTypeInfo t = Info(GetParam().type);
  const int64_t rows = GetParam().rows, cols = GetParam().cols;
  std::mt19937 rng(static_cast<uint32_t>(rows * 131 + cols));
  const std::vector<uint8_t> data = RandomRows(t, rows, cols, rng);
  const WeightMatrix w{t, data.data(), rows, cols, RowBytes(t, cols)};
  ASSERT_TRUE(Repack16Applies(w));
  const OwnedWeightMatrix packed = Repack16(w);
  EXPECT_EQ(packed.view.layout, WeightLayout::kRows16);
  EXPECT_EQ(packed.view.row_bytes, w.row_bytes);  // same bytes per weight
  EXPECT_EQ(reinterpret_cast<uintptr_t>(packed.view.data) % 64, 0u);
  EXPECT_FALSE(Repack16Applies(packed.view));
  std::vector<uint8_t> row(w.row_bytes);
  for (int64_t r = 0; r < rows; ++r) {
    CopyRowBytes(packed.view, r, row.data());
    ASSERT_EQ(0, std::memcmp(row.data(), w.row(r), w.row_bytes)) << t.name << " row " << r;
  }
}

// MatMul on the repacked matrix, at every level, with 1..9 tokens (token groups of 4 and every remainder) and with
// `add`, equals the scalar reference on the original rows within MatMulTest's tolerance.
TEST_P(Repack16Test, MatMulMatchesOriginalAtEveryLevel) {
  const TensorTypeInfo t = Info(GetParam().type);
  const int64_t rows = GetParam().rows, cols = GetParam().cols;
  std::mt19937 rng(static_cast<uint32_t>(rows * 7 + cols * 3 + static_cast<int>(t.type)));
  const std::vector<uint8_t> data = RandomRows(t, rows, cols, rng);
  const WeightMatrix w{t, data.data(), rows, cols, RowBytes(t, cols)};
  const OwnedWeightMatrix packed = Repack16(w);
  const int max_tokens = 9;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(cols * max_tokens);
  for (float& v : x) v = nd(rng);
  std::vector<float> wrow(cols);
  const int64_t y_stride = rows + 3;
  const Isa detected = BestIsa();
  for (int n_tokens = 1; n_tokens <= max_tokens; ++n_tokens) {
    SetActiveIsa(Isa::kBaseline);
    std::vector<float> ref(y_stride * n_tokens, -7.0f);
    MatMul(w, x.data(), n_tokens, ref.data(), y_stride);
    // f64 reference with the int8 activations the SIMD kernels multiply, and the tolerance scale of each output.
    std::vector<double> ref_q8(rows * n_tokens), scale(rows * n_tokens);
    std::vector<BlockQ8> xq(cols / 32);
    for (int tok = 0; tok < n_tokens; ++tok) {
      QuantizeRowQ8(x.data() + tok * cols, cols, xq.data());
      for (int64_t r = 0; r < rows; ++r) {
        DequantizeRow(t, w.row(r), wrow.data(), cols);
        double sum = 0, abs_sum = 0;
        for (int64_t c = 0; c < cols; ++c) {
          sum += static_cast<double>(wrow[c]) * xq[c / 32].d * xq[c / 32].q[c % 32];
          abs_sum += std::fabs(static_cast<double>(wrow[c]) * x[tok * cols + c]);
        }
        ref_q8[tok * rows + r] = sum;
        scale[tok * rows + r] = abs_sum;
      }
    }
    for (int level = 0; level <= static_cast<int>(detected); ++level) {
      SetActiveIsa(static_cast<Isa>(level));
      std::vector<float> y(y_stride * n_tokens, -7.0f), added(y_stride * n_tokens);
      for (size_t j = 0; j < added.size(); ++j) added[j] = 0.5f * static_cast<float>(j % 3);
      MatMul(packed.view, x.data(), n_tokens, y.data(), y_stride);
      const MatMulOut add_out{&packed.view, added.data(), y_stride, /*add=*/true};
      MatMulMany({&add_out, 1}, x.data(), n_tokens);
      for (int tok = 0; tok < n_tokens; ++tok) {
        for (int64_t r = 0; r < y_stride; ++r) {
          const size_t j = static_cast<size_t>(tok * y_stride + r);
          const float before = 0.5f * static_cast<float>(j % 3);
          if (r >= rows) {  // padding untouched
            ASSERT_EQ(y[j], -7.0f);
            ASSERT_EQ(added[j], before);
            continue;
          }
          const int i = static_cast<int>(tok * rows + r);
          const double expect = level == 0 ? ref[j] : ref_q8[i];
          const double tol = level == 0 ? 0.0 : 2e-5 * scale[i] + 1e-6;
          ASSERT_NEAR(y[j], expect, tol) << t.name << " level " << level << " tokens " << n_tokens << " row " << r
                                         << " token " << tok;
          ASSERT_NEAR(added[j], before + y[j], 1e-5 * (1 + std::fabs(y[j]))) << t.name << " level " << level;
        }
      }
    }
  }
  SetActiveIsa(detected);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Repack16Test,
                         ::testing::Values(RepackCase{TensorType::kQ4_0, 16, 32}, RepackCase{TensorType::kQ4_0, 48, 96},
                                           RepackCase{TensorType::kQ4_0, 192, 576},
                                           RepackCase{TensorType::kQ4_1, 16, 32}, RepackCase{TensorType::kQ4_1, 48, 96},
                                           RepackCase{TensorType::kQ4_1, 192, 576},
                                           RepackCase{TensorType::kQ4_1, 48, 64}, RepackCase{TensorType::kQ8_0, 16, 32},
                                           RepackCase{TensorType::kQ8_0, 48, 96},
                                           RepackCase{TensorType::kQ8_0, 192, 576},
                                           RepackCase{TensorType::kQ8_0, 16, 64}),
                         [](const auto& info) {
                           return std::string(Info(info.param.type).name) + "_" + std::to_string(info.param.rows) +
                                  "x" + std::to_string(info.param.cols);
                         });

}  // namespace
}  // namespace lr::ops
