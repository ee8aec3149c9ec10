// The MoE kernels of cuda/moe.h against their scalar references: Route against inference::RouteToken on random
// logits (softmax, sigmoid with a bias, expert groups, renormalisation, scale), RouteAndGroup against Route,
// GroupByExpert's grouping checked row by row, and the routed experts' products plus the weighted sum against
// ops::DequantizeRow and plain loops; the decode steps' products on int8 activations (ExpertGateUpQ8, ExpertDownQ8,
// RouteAndGroup's gather) against a double-precision product on the CPU's quantization of the same inputs
// (ops::QuantizeRowQ8), their quantized outputs bit for bit; RmsNormStrided's quantization. (The rest of the MLA
// kernels are tested through the whole block: tests/cuda/model_test.cc, the deepseek2 fixtures.) Skipped when no CUDA
// device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/half.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/mla.h"
#include "cuda/moe.h"
#include "inference/moe.h"
#include "ops/kernels.h"
#include "tests/cuda/device_test_util.h"
#include "tests/ops/random_rows.h"

namespace lr::cuda {
namespace {

using testing::CpuQ8;
using testing::Dequantized;
using testing::OnDevice;
using testing::Poisoned;
using testing::QuantizeCpu;
using testing::TestMatrix;
using testing::ToDevice;
using testing::Upload;
using CudaMoeTest = OnDevice<::testing::Test>;

template <typename T>
std::vector<T> Down(const DeviceBuffer& b, size_t count) {
  std::vector<T> v(count);
  EXPECT_TRUE(Synchronize("test").ok());
  EXPECT_TRUE(b.Download(v.data(), count * sizeof(T)).ok());
  return v;
}

// The device's int8 values and (d, s) (q, ds) equal the CPU's quantization of `of`, bit for bit.
void ExpectQ8Equals(const DeviceBuffer& q, const DeviceBuffer& ds, const std::vector<float>& of) {
  const CpuQ8 want = QuantizeCpu(of);
  const auto got_q = Down<int8_t>(q, want.q.size());
  const auto got_ds = Down<float>(ds, want.ds.size());
  for (size_t i = 0; i < want.q.size(); ++i) ASSERT_EQ(got_q[i], want.q[i]) << "value " << i;
  for (size_t b = 0; b < want.ds.size(); ++b)
    ASSERT_EQ(got_ds[b], want.ds[b]) << (b % 2 ? "s" : "d") << " of block " << b / 2;
}

struct RouterCase {
  const char* name;
  int n_expert, n_used, n_groups, n_groups_used;
  bool sigmoid, norm, bias;
  float scale;
};

class CudaRouterTest : public CudaMoeTest, public ::testing::WithParamInterface<RouterCase> {};

TEST_P(CudaRouterTest, MatchesRouteToken) {
  const RouterCase& rc = GetParam();
  inference::ModelConfig c;
  c.n_expert = rc.n_expert;
  c.n_expert_used = rc.n_used;
  c.n_expert_groups = rc.n_groups;
  c.n_expert_groups_used = rc.n_groups_used;
  c.gating = rc.sigmoid ? inference::ExpertGating::kSigmoid : inference::ExpertGating::kSoftmax;
  c.expert_weights_norm = rc.norm;
  c.expert_weights_scale = rc.scale;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> bias;
  if (rc.bias)
    for (int e = 0; e < rc.n_expert; ++e) bias.push_back(0.1f * normal(rng));
  const int n = 301;  // several blocks, a partial last one
  std::vector<float> logits(static_cast<size_t>(n) * rc.n_expert);
  for (float& v : logits) v = normal(rng);
  DeviceBuffer d_logits = ToDevice(logits), d_bias = ToDevice(bias);
  DeviceBuffer d_experts = ToDevice(std::vector<int32_t>(n * rc.n_used, -1));
  DeviceBuffer d_weights = ToDevice(std::vector<float>(n * rc.n_used, NAN));
  RouterArgs a;
  a.n_expert = rc.n_expert;
  a.n_used = rc.n_used;
  a.n_groups = rc.n_groups;
  a.n_groups_used = rc.n_groups_used;
  a.sigmoid = rc.sigmoid;
  a.norm = rc.norm;
  a.scale = rc.scale;
  a.bias = rc.bias ? d_bias.as<float>() : nullptr;
  ASSERT_TRUE(Route(a, d_logits.as<float>(), n, d_experts.as<int32_t>(), d_weights.as<float>(), nullptr).ok());
  auto experts = Down<int32_t>(d_experts, n * rc.n_used);
  auto weights = Down<float>(d_weights, n * rc.n_used);
  // A decode step's 13 tokens through RouteAndGroup (one launch up to 256 experts): the same choices as Route, and
  // their grouping.
  constexpr int kStep = 13;
  const int slots = kStep * rc.n_used;
  DeviceBuffer d_first = ToDevice(std::vector<int32_t>(rc.n_expert + 1)),
               d_order = ToDevice(std::vector<int32_t>(slots));
  DeviceBuffer d_row_of = ToDevice(std::vector<int32_t>(slots)),
               d_active = ToDevice(std::vector<int32_t>(rc.n_expert + 1));
  DeviceBuffer d_tiles = ToDevice(std::vector<int32_t>(2 * MaxExpertTiles(slots, rc.n_expert) + 1));
  DeviceBuffer d_step_experts = ToDevice(std::vector<int32_t>(slots, -1)),
               d_step_weights = ToDevice(std::vector<float>(slots));
  const ExpertGroups g{d_first.as<int32_t>(), d_order.as<int32_t>(), d_row_of.as<int32_t>(), d_active.as<int32_t>(),
                       d_tiles.as<int32_t>()};
  ASSERT_TRUE(RouteAndGroup(a, d_logits.as<float>(), kStep, d_step_experts.as<int32_t>(), d_step_weights.as<float>(), g,
                            nullptr, nullptr)
                  .ok());
  const auto step_experts = Down<int32_t>(d_step_experts, slots);
  EXPECT_EQ(step_experts, std::vector<int32_t>(experts.begin(), experts.begin() + slots));
  EXPECT_EQ(Down<float>(d_step_weights, slots), std::vector<float>(weights.begin(), weights.begin() + slots));
  const auto active = Down<int32_t>(d_active, rc.n_expert + 1);
  const std::set<int> distinct(step_experts.begin(), step_experts.end());
  EXPECT_EQ(std::vector<int>(active.begin(), active.begin() + active[rc.n_expert]),
            std::vector<int>(distinct.begin(), distinct.end()));
  const auto first = Down<int32_t>(d_first, rc.n_expert + 1);
  const auto row_of = Down<int32_t>(d_row_of, slots);
  for (int s = 0; s < slots; ++s) {
    EXPECT_GE(row_of[s], first[step_experts[s]]);
    EXPECT_LT(row_of[s], first[step_experts[s] + 1]);
  }
  int same = 0;
  for (int t = 0; t < n; ++t) {
    std::vector<int> want_e(rc.n_used);
    std::vector<float> want_w(rc.n_used);
    inference::RouteToken(c, bias, &logits[static_cast<size_t>(t) * rc.n_expert], want_e.data(), want_w.data());
    for (int i = 0; i < rc.n_used; ++i) {
      const int s = t * rc.n_used + i;
      same += experts[s] == want_e[i];
      EXPECT_NEAR(weights[s], want_w[i], 1e-5f * std::max(1.0f, std::fabs(want_w[i])))
          << "token " << t << " choice " << i;
    }
  }
  EXPECT_EQ(same, n * rc.n_used);
}

INSTANTIATE_TEST_SUITE_P(Routers, CudaRouterTest,
                         ::testing::Values(RouterCase{"mistral4", 128, 4, 1, 1, false, true, false, 1.0f},
                                           RouterCase{"mixtral", 8, 2, 1, 1, false, true, false, 1.0f},
                                           RouterCase{"softmax_unnormalised", 64, 6, 1, 1, false, false, false, 1.0f},
                                           RouterCase{"deepseek_v3", 256, 8, 8, 4, true, true, true, 2.5f},
                                           RouterCase{"sigmoid_groups_small", 8, 2, 4, 2, true, true, true, 2.5f},
                                           RouterCase{"many_experts", 1024, 16, 32, 5, true, false, true, 1.0f}),
                         [](const auto& info) { return std::string(info.param.name); });

// Group random choices of up to 16 tokens (decode: the matrix-vector path) and of 700 (prefill: tiles on the tensor
// cores), then run the products and the weighted sum (with the next RMSNorm): every row against the scalar reference;
// the fused gate / up / SwiGLU against the plain product.
TEST_F(CudaMoeTest, GroupedExpertProductsMatchReference) {
  const int ne = 16, k = 3, cols = 64, rows = 96;  // gate-like product: rows per expert, cols = n_embd
  for (WeightType type : {WeightType::kQ4_0, WeightType::kQ8_0, WeightType::kF16}) {
    for (int n : {1, 5, 16, 700}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(type)) + " type, " + std::to_string(n) + " tokens");
      std::mt19937 rng(n);
      std::uniform_int_distribution<int> byte(0, 255);
      // Random weights in GGUF's layout (scales kept small and positive), split for the device.
      const size_t gguf_row = GgufRowBytes(type, cols);
      std::vector<uint8_t> gguf(gguf_row * ne * rows);
      for (uint8_t& b : gguf) b = static_cast<uint8_t>(byte(rng));
      const size_t block_bytes = type == WeightType::kQ4_0 ? 18 : type == WeightType::kQ8_0 ? 34 : 0;
      if (type == WeightType::kF16) {
        for (size_t i = 0; i + 1 < gguf.size(); i += 2)
          gguf[i + 1] = static_cast<uint8_t>((0x30 + (gguf[i + 1] & 0x7)) | (gguf[i + 1] & 0x80));
      } else {
        for (size_t i = 0; i < gguf.size(); i += block_bytes) {
          gguf[i] = static_cast<uint8_t>(byte(rng));
          gguf[i + 1] = 0x20;  // f16 d of about 0.008
        }
      }
      const int64_t all_rows = int64_t{ne} * rows;
      std::vector<uint8_t> q(QuantRowBytes(type, cols) * all_rows),
          scales(all_rows * cols / 32 * ScaleBytesPerBlock(type));
      SplitBlocks(type, gguf.data(), all_rows, cols, q.data(), scales.data());
      DeviceBuffer d_q = ToDevice(q), d_scales = ToDevice(scales);
      const DeviceMatrix w{type, all_rows, cols, d_q.as<uint8_t>(), d_scales.as<uint8_t>(), QuantRowBytes(type, cols)};
      // Distinct experts per token, random inputs and weights.
      std::vector<int32_t> chosen;
      std::vector<float> weight;
      std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
      for (int t = 0; t < n; ++t) {
        std::vector<int> e(ne);
        for (int i = 0; i < ne; ++i) e[i] = i;
        std::shuffle(e.begin(), e.end(), rng);
        for (int i = 0; i < k; ++i) {
          chosen.push_back(n > 16 ? e[i] : e[i] % 6);  // decode steps: few experts, shared by tokens
          weight.push_back(unit(rng));
        }
        if (n <= 16) {  // keep the choices of one token distinct after % 6
          std::sort(chosen.end() - k, chosen.end());
          if (std::unique(chosen.end() - k, chosen.end()) != chosen.end()) {
            for (int i = 0; i < k; ++i) chosen[chosen.size() - k + i] = (t + 2 * i) % 6;
          }
        }
      }
      const int slots = n * k;
      std::vector<float> x(static_cast<size_t>(n) * cols), acc(static_cast<size_t>(n) * rows);
      for (float& v : x) v = unit(rng);
      for (float& v : acc) v = unit(rng);
      DeviceBuffer d_chosen = ToDevice(chosen), d_weight = ToDevice(weight), d_x = ToDevice(x), d_acc = ToDevice(acc);
      DeviceBuffer d_first = ToDevice(std::vector<int32_t>(ne + 1)), d_order = ToDevice(std::vector<int32_t>(slots));
      DeviceBuffer d_row_of = ToDevice(std::vector<int32_t>(slots)), d_active = ToDevice(std::vector<int32_t>(ne + 1));
      DeviceBuffer d_tally = ToDevice(std::vector<int32_t>(1));
      const int max_tiles = MaxExpertTiles(slots, ne);
      DeviceBuffer d_tiles = ToDevice(std::vector<int32_t>(2 * max_tiles + 1));
      const ExpertGroups g{d_first.as<int32_t>(), d_order.as<int32_t>(), d_row_of.as<int32_t>(), d_active.as<int32_t>(),
                           d_tiles.as<int32_t>()};
      ASSERT_TRUE(GroupByExpert(d_chosen.as<int32_t>(), slots, ne, g, d_tally.as<int32_t>(), nullptr).ok());
      const auto first = Down<int32_t>(d_first, ne + 1);
      const auto order = Down<int32_t>(d_order, slots);
      const auto row_of = Down<int32_t>(d_row_of, slots);
      const auto active = Down<int32_t>(d_active, ne + 1);
      const std::set<int> distinct(chosen.begin(), chosen.end());
      EXPECT_EQ(active[ne], static_cast<int>(distinct.size()));
      EXPECT_EQ(Down<int32_t>(d_tally, 1)[0], static_cast<int>(distinct.size()));
      EXPECT_EQ(std::vector<int>(active.begin(), active.begin() + active[ne]),
                std::vector<int>(distinct.begin(), distinct.end()));
      // The tiles cover every expert's rows in order, kExpertTileTokens at a time.
      const auto tiles = Down<int32_t>(d_tiles, 2 * max_tiles + 1);
      std::vector<std::pair<int, int>> want_tiles;
      for (int e = 0; e < ne; ++e)
        for (int j = first[e]; j < first[e + 1]; j += kExpertTileTokens) want_tiles.push_back({e, j});
      ASSERT_EQ(tiles[2 * max_tiles], static_cast<int>(want_tiles.size()));
      for (size_t t = 0; t < want_tiles.size(); ++t)
        EXPECT_EQ(std::make_pair(tiles[2 * t], tiles[2 * t + 1]), want_tiles[t]) << "tile " << t;
      for (int s = 0; s < slots; ++s) {
        ASSERT_EQ(order[row_of[s]], s);
        EXPECT_GE(row_of[s], first[chosen[s]]);
        EXPECT_LT(row_of[s], first[chosen[s] + 1]);
      }
      // Gate-like product (gathered tokens), then the weighted sum of its outputs into acc.
      DeviceBuffer d_y = ToDevice(std::vector<float>(static_cast<size_t>(slots) * rows, NAN));
      const ExpertProduct p{w, rows, d_x.as<float>(), true, d_y.as<float>()};
      // The same product twice in one launch (as gate and up): both outputs equal.
      DeviceBuffer d_y2 = ToDevice(std::vector<float>(static_cast<size_t>(slots) * rows, NAN));
      const ExpertProduct pair[] = {p, {w, rows, d_x.as<float>(), true, d_y2.as<float>()}};
      ASSERT_TRUE(ExpertMatMul(pair, 2, g, k, std::min(slots, ne), n, nullptr).ok());
      EXPECT_EQ(Down<float>(d_y2, static_cast<size_t>(slots) * rows),
                Down<float>(d_y, static_cast<size_t>(slots) * rows));
      // Gate and up with SwiGLU (here both the same matrix): silu(y) * y.
      DeviceBuffer d_gate = ToDevice(std::vector<float>(static_cast<size_t>(slots) * rows, NAN));
      DeviceBuffer d_up = ToDevice(std::vector<float>(static_cast<size_t>(slots) * rows, NAN));
      ASSERT_TRUE(ExpertGateUp({w, rows, d_x.as<float>(), true, d_gate.as<float>()},
                               {w, rows, d_x.as<float>(), true, d_up.as<float>()}, g, k, std::min(slots, ne), n,
                               nullptr)
                      .ok());
      {
        const auto plain = Down<float>(d_y, static_cast<size_t>(slots) * rows);
        const auto fused = Down<float>(d_gate, plain.size());
        for (size_t i = 0; i < plain.size(); ++i) {
          const float want_i = plain[i] / (1.0f + std::exp(-plain[i])) * plain[i];
          ASSERT_NEAR(fused[i], want_i, 1e-5f * std::max(1.0f, std::fabs(want_i))) << "SwiGLU row " << i;
        }
      }
      // The weighted sum into acc, and the new rows' RMSNorm (weights w_norm) into xn.
      std::vector<float> w_norm(rows);
      for (float& v : w_norm) v = unit(rng);
      DeviceBuffer d_w_norm = ToDevice(w_norm), d_xn = ToDevice(std::vector<float>(acc.size(), NAN));
      DeviceBuffer d_xnq = ToDevice(std::vector<int8_t>(acc.size())), d_xnds = ToDevice(std::vector<float>(acc.size()));
      RowNorm norm{d_w_norm.as<float>(), 1e-6f, d_xn.as<float>()};
      norm.q = Q8Activations{d_xnq.as<int8_t>(), d_xnds.as<float>()};
      ASSERT_TRUE(
          CombineExperts(d_y.as<float>(), d_weight.as<float>(), g, n, k, rows, d_acc.as<float>(), nullptr, &norm).ok());
      const auto y = Down<float>(d_y, static_cast<size_t>(slots) * rows);
      const auto got = Down<float>(d_acc, acc.size());
      const auto xn = Down<float>(d_xn, acc.size());
      for (int t = 0; t < n; ++t) {
        double ss = 0;
        for (int r = 0; r < rows; ++r) ss += static_cast<double>(got[t * rows + r]) * got[t * rows + r];
        const double scale = 1.0 / std::sqrt(ss / rows + 1e-6);
        for (int r = 0; r < rows; ++r)
          ASSERT_NEAR(xn[t * rows + r], got[t * rows + r] * scale * w_norm[r], 1e-4) << "token " << t << " row " << r;
      }
      ExpectQ8Equals(d_xnq, d_xnds, xn);
      const ops::TensorTypeInfo info = *ops::LookupTensorType(static_cast<uint32_t>(type));
      std::vector<float> wrow(cols), want = acc;
      double max_err = 0;
      for (int s = 0; s < slots; ++s) {
        const int t = s / k;
        for (int r = 0; r < rows; ++r) {
          ops::DequantizeRow(info, gguf.data() + (static_cast<size_t>(chosen[s]) * rows + r) * gguf_row, wrow.data(),
                             cols);
          double dot = 0;
          for (int c = 0; c < cols; ++c) dot += static_cast<double>(wrow[c]) * x[static_cast<size_t>(t) * cols + c];
          max_err = std::max(
              max_err, std::fabs(dot - y[static_cast<size_t>(row_of[s]) * rows + r]) / std::max(1.0, std::fabs(dot)));
          want[static_cast<size_t>(t) * rows + r] += weight[s] * static_cast<float>(dot);
        }
      }
      // f32 products for decode steps; above 16 tokens the tensor cores' f16 activations.
      const double tolerance = n > kMaxMatVecTokens ? 1e-2 : 1e-4;
      EXPECT_LT(max_err, tolerance);
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 10 * tolerance * std::max(1.0f, std::fabs(want[i])));
    }
  }
}

// Stacked experts of one type in the device layout, and their rows decoded on the CPU.
struct TestExperts {
  DeviceBuffer q, scales;
  DeviceMatrix m;
  std::vector<float> w;  // all rows x cols
};
TestExperts RandomExperts(WeightType t, int64_t rows, int64_t cols, std::mt19937& rng) {
  const ops::TensorTypeInfo info = *ops::LookupTensorType(static_cast<uint32_t>(t));
  const std::vector<uint8_t> gguf = ops::testing::RandomRows(info, rows, cols, rng);
  TestMatrix up = Upload(t, gguf, rows, cols);
  TestExperts r{std::move(up.q), std::move(up.scales), up.m, {}};
  r.w.resize(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    ops::DequantizeRow(info, gguf.data() + i * GgufRowBytes(t, cols), &r.w[i * cols], cols);
  return r;
}

double RowDot(const std::vector<float>& w, int64_t row, const float* x, int64_t cols) {
  double sum = 0;
  for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(w[row * cols + c]) * x[c];
  return sum;
}

// A decode step's routed experts on int8 activations: RouteAndGroup (the fused launch, and the separate one of more
// than 256 experts) gathers each grouped row's quantized input; ExpertGateUpQ8 and ExpertDownQ8 over the chosen
// experts against double-precision products of the CPU-decoded weights and the CPU-quantized inputs. Odd shapes: 3 or
// 5 blocks per row, down rows not a multiple of the rows a block takes, steps of 1..16 tokens.
TEST_F(CudaMoeTest, Int8ExpertProductsMatchReference) {
  struct Case {
    WeightType type;
    int ne, k;
    int64_t embd, ff;
  };
  for (const Case& c : {Case{WeightType::kQ4_0, 12, 3, 96, 64}, Case{WeightType::kQ8_0, 300, 4, 160, 96},
                        Case{WeightType::kQ4_K, 8, 2, 256, 256}, Case{WeightType::kQ6_K, 6, 2, 512, 32}}) {
    for (int n : {1, 2, 3, 5, 9, 16}) {
      SCOPED_TRACE(std::to_string(static_cast<int>(c.type)) + " type, " + std::to_string(c.ne) + " experts, " +
                   std::to_string(n) + " tokens");
      std::mt19937 rng(static_cast<unsigned>(n * 31 + c.ne));
      const int64_t embd = c.embd, ff = c.ff;
      const int64_t down_rows = 37;  // per expert: not a multiple of the rows a block takes
      TestExperts gate = RandomExperts(c.type, c.ne * ff, embd, rng), up = RandomExperts(c.type, c.ne * ff, embd, rng);
      // Down matrices of ff columns need whole blocks of the type (K-quants: 256).
      const WeightType down_type =
          ff % 256 == 0 || c.type == WeightType::kQ4_0 || c.type == WeightType::kQ8_0 ? c.type : WeightType::kQ8_0;
      TestExperts down = RandomExperts(down_type, c.ne * down_rows, ff, rng);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      std::vector<float> logits(static_cast<size_t>(n) * c.ne), x(static_cast<size_t>(n) * embd);
      for (float& v : logits) v = normal(rng);
      for (float& v : x) v = normal(rng);
      std::fill(x.begin(), x.begin() + 32, 0.0f);  // an all-zero block (d = 0)
      const CpuQ8 xq = QuantizeCpu(x);
      const std::vector<float> xv = Dequantized(xq);
      DeviceBuffer d_logits = ToDevice(logits), d_xq = ToDevice(xq.q), d_xds = ToDevice(xq.ds);
      const int slots = n * c.k;
      DeviceBuffer d_experts = ToDevice(std::vector<int32_t>(slots)), d_weights = ToDevice(std::vector<float>(slots));
      DeviceBuffer d_first = ToDevice(std::vector<int32_t>(c.ne + 1)), d_order = ToDevice(std::vector<int32_t>(slots));
      DeviceBuffer d_row_of = ToDevice(std::vector<int32_t>(slots)),
                   d_active = ToDevice(std::vector<int32_t>(c.ne + 1));
      const ExpertGroups g{d_first.as<int32_t>(), d_order.as<int32_t>(), d_row_of.as<int32_t>(), d_active.as<int32_t>(),
                           nullptr};
      DeviceBuffer d_xg = ToDevice(std::vector<int8_t>(slots * embd, 0x55)),
                   d_xgds = ToDevice(std::vector<float>(slots * embd / 16, NAN));
      const Q8Gather gather{Q8Activations{d_xq.as<int8_t>(), d_xds.as<float>()},
                            Q8Activations{d_xg.as<int8_t>(), d_xgds.as<float>()}, embd};
      RouterArgs a;
      a.n_expert = c.ne;
      a.n_used = c.k;
      a.norm = true;
      ASSERT_TRUE(RouteAndGroup(a, d_logits.as<float>(), n, d_experts.as<int32_t>(), d_weights.as<float>(), g, nullptr,
                                nullptr, &gather)
                      .ok());
      const auto experts = Down<int32_t>(d_experts, slots);
      const auto order = Down<int32_t>(d_order, slots);
      const auto row_of = Down<int32_t>(d_row_of, slots);
      // Grouped row j holds token order[j] / k's quantized input.
      const auto xg = Down<int8_t>(d_xg, slots * embd);
      const auto xgds = Down<float>(d_xgds, slots * embd / 16);
      for (int j = 0; j < slots; ++j) {
        const int t = order[j] / c.k;
        for (int64_t i = 0; i < embd; ++i) ASSERT_EQ(xg[j * embd + i], xq.q[t * embd + i]) << "grouped row " << j;
        for (int64_t b = 0; b < embd / 16; ++b) ASSERT_EQ(xgds[j * embd / 16 + b], xq.ds[t * embd / 16 + b]);
      }
      // Gate, up and SwiGLU into h (grouped rows), quantized into hq.
      DeviceBuffer d_h = Poisoned(slots * ff), d_hq = ToDevice(std::vector<int8_t>(slots * ff)),
                   d_hds = Poisoned(slots * ff / 16);
      const Q8Activations hq{d_hq.as<int8_t>(), d_hds.as<float>()};
      const int max_active = std::min(slots, c.ne);
      Status st = ExpertGateUpQ8(gate.m, up.m, ff, gather.out, g, max_active, n, d_h.as<float>(), hq, nullptr);
      ASSERT_TRUE(st.ok()) << st.ToString();
      const auto h = Down<float>(d_h, slots * ff);
      double err = 0, norm = 0;
      for (int s = 0; s < slots; ++s) {
        const int t = s / c.k, j = row_of[s], e = experts[s];
        for (int64_t r = 0; r < ff; ++r) {
          const double gv = RowDot(gate.w, e * ff + r, &xv[t * embd], embd);
          const double uv = RowDot(up.w, e * ff + r, &xv[t * embd], embd);
          const double want = gv / (1.0 + std::exp(-gv)) * uv;
          err += (h[j * ff + r] - want) * (h[j * ff + r] - want);
          norm += want * want;
        }
      }
      EXPECT_LT(std::sqrt(err / norm), 1e-5) << "gate / up";
      ExpectQ8Equals(d_hq, d_hds, h);
      // Down over the quantized h.
      DeviceBuffer d_y = Poisoned(slots * down_rows);
      st = ExpertDownQ8(down.m, down_rows, hq, g, max_active, n, d_y.as<float>(), nullptr);
      ASSERT_TRUE(st.ok()) << st.ToString();
      const auto y = Down<float>(d_y, slots * down_rows);
      const std::vector<float> hv = Dequantized(QuantizeCpu(h));
      err = norm = 0;
      for (int s = 0; s < slots; ++s) {
        const int j = row_of[s], e = experts[s];
        for (int64_t r = 0; r < down_rows; ++r) {
          const double want = RowDot(down.w, e * down_rows + r, &hv[j * ff], ff);
          err += (y[j * down_rows + r] - want) * (y[j * down_rows + r] - want);
          norm += want * want;
        }
      }
      EXPECT_LT(std::sqrt(err / norm), 1e-5) << "down";
    }
  }
  // Shapes the kernels refuse: rows per expert not dividing the stacked rows, f32 weights, more than 16 tokens.
  std::mt19937 rng(3);
  TestExperts q = RandomExperts(WeightType::kQ4_0, 4 * 64, 64, rng);
  TestExperts f = RandomExperts(WeightType::kF32, 4 * 64, 64, rng);
  const ExpertGroups none{};
  EXPECT_FALSE(ExpertDownQ8(q.m, 48, Q8Activations{}, none, 1, 1, nullptr, nullptr).ok());
  EXPECT_FALSE(ExpertDownQ8(f.m, 64, Q8Activations{}, none, 1, 1, nullptr, nullptr).ok());
  EXPECT_FALSE(ExpertDownQ8(q.m, 64, Q8Activations{}, none, 1, 17, nullptr, nullptr).ok());
  EXPECT_FALSE(ExpertGateUpQ8(q.m, q.m, 48, Q8Activations{}, none, 1, 1, nullptr, Q8Activations{}, nullptr).ok());
}

// RmsNormStrided with quantization: rows of `dim` values in rows of `stride` (the padding 0), normalised as the CPU
// does, and the whole rows quantized bit for bit as ops::QuantizeRowQ8 does the rows it wrote.
TEST_F(CudaMoeTest, RmsNormStridedQuantizes) {
  const int n = 5, dim = 48, stride = 64;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n * stride, 0.0f), w(dim);
  for (int i = 0; i < n; ++i)
    for (int d = 0; d < dim; ++d) x[i * stride + d] = normal(rng);
  for (float& v : w) v = normal(rng);
  DeviceBuffer d_x = ToDevice(x), d_w = ToDevice(w);
  DeviceBuffer d_q = ToDevice(std::vector<int8_t>(n * stride, 0x55)), d_ds = Poisoned(n * stride / 16);
  const Q8Activations xq{d_q.as<int8_t>(), d_ds.as<float>()};
  ASSERT_TRUE(RmsNormStrided(d_x.as<float>(), n, dim, stride, d_w.as<float>(), 1e-6f, nullptr, &xq).ok());
  const auto got = Down<float>(d_x, n * stride);
  for (int i = 0; i < n; ++i) {
    double ss = 0;
    for (int d = 0; d < dim; ++d) ss += static_cast<double>(x[i * stride + d]) * x[i * stride + d];
    const double scale = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int d = 0; d < stride; ++d) {
      const double want = d < dim ? x[i * stride + d] * scale * w[d] : 0.0;
      ASSERT_NEAR(got[i * stride + d], want, 1e-5 * std::max(1.0, std::fabs(want))) << "row " << i << " value " << d;
    }
  }
  ExpectQ8Equals(d_q, d_ds, got);
  EXPECT_FALSE(RmsNormStrided(d_x.as<float>(), n, dim, 48, d_w.as<float>(), 1e-6f, nullptr, &xq).ok())
      << "a stride not a multiple of 32";
}

// MLA attention over latent rows in the paged pool (MlaArgs' shapes: Leanstral's 256 + 64 and the fixtures' 32 + 16):
// MlaAttention (f32; decode steps split over blocks, their states combined by MlaValues; a prefill chunk) and
// FlashAttentionLatent (tensor cores, f16 queries and weights) against a double-precision softmax over the same f16
// rows, and v_b times the result. Two sequences in shuffled pages:
// a 70-token chunk of the first at positions 37..106 beside 9 tokens of the second (the flash kernel's passes per
// sequence), and a decode step of 3 tokens (the first over 10 pages: several splits).
TEST_F(CudaMoeTest, MlaAttentionMatchesReference) {
  for (const auto [lat, rope, n_head] : {std::array<int, 3>{256, 64, 32}, std::array<int, 3>{32, 16, 4}}) {
    SCOPED_TRACE("latent " + std::to_string(lat) + " + rope " + std::to_string(rope));
    const int kd = lat + rope, n_layer = 2, layer = 1;
    std::mt19937 rng(static_cast<unsigned>(kd));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // Sequence lengths 300 and 60 in pages 0..11 of the pool, shuffled.
    const int len[2] = {300, 60};
    std::vector<int32_t> pages = {4, 11, 1, 3, 9, 0, 12, 2, 7, 5, 6, 10, 8};  // sequence 0: 10 pages, 1: 2, a spare
    const int first_page[2] = {0, 10};
    const size_t page_bytes = static_cast<size_t>(n_layer) * kPageTokens * kd * 2;
    std::vector<uint16_t> pool_host(page_bytes / 2 * 13);
    std::vector<std::vector<float>> rows(2);  // per sequence: len x kd values (f16-rounded)
    for (int sq = 0; sq < 2; ++sq) {
      for (int p = 0; p < len[sq]; ++p) {
        const int page = pages[first_page[sq] + p / kPageTokens];
        for (int d = 0; d < kd; ++d) {
          const uint16_t h = FloatToHalf(normal(rng));
          rows[sq].push_back(HalfToFloat(h));
          pool_host[static_cast<size_t>(page) * page_bytes / 2 +
                    (static_cast<size_t>(layer) * kPageTokens + p % kPageTokens) * kd + d] = h;
        }
      }
    }
    DeviceBuffer d_pool = ToDevice(pool_host), d_pages = ToDevice(pages);
    const KvPool pool{d_pool.as<uint8_t>(), page_bytes, n_layer, 1, kd, 0};
    MlaArgs a;
    a.n_head = n_head;
    a.nope = 16;
    a.rope = rope;
    a.lat = lat;
    a.v_dim = 40;  // not whole blocks of 32: MlaValues without quantization
    std::vector<uint16_t> kv_b(static_cast<size_t>(n_head) * (a.nope + a.v_dim) * lat);
    for (uint16_t& v : kv_b) v = FloatToHalf(0.1f * normal(rng));
    DeviceBuffer d_kv_b = ToDevice(kv_b);
    a.kv_b = d_kv_b.as<uint16_t>();
    a.layer = layer;
    const float scale = 0.07f;
    // Steps: (sequence, position) of each token.
    std::vector<std::pair<int, int>> chunk, decode = {{0, 299}, {1, 59}, {0, 40}};
    for (int p = 37; p < 107; ++p) chunk.push_back({0, p});
    for (int p = 51; p < 60; ++p) chunk.push_back({1, p});
    for (const auto* step : {&chunk, &decode}) {
      const int n = static_cast<int>(step->size());
      std::vector<int32_t> pos, first;
      for (const auto& [sq, p] : *step) {
        pos.push_back(p);
        first.push_back(first_page[sq]);
      }
      std::vector<float> q(static_cast<size_t>(n) * n_head * kd);
      for (float& v : q) v = normal(rng);
      DeviceBuffer d_q = ToDevice(q), d_pos = ToDevice(pos), d_first = ToDevice(first);
      const TokenPlaces places{d_pos.as<int32_t>(), d_first.as<int32_t>(), d_pages.as<int32_t>()};
      // The reference: head h of token i over its sequence's rows 0..pos.
      std::vector<double> want;
      for (int i = 0; i < n; ++i) {
        const auto [sq, p] = (*step)[i];
        for (int h = 0; h < n_head; ++h) {
          const float* qh = &q[(static_cast<size_t>(i) * n_head + h) * kd];
          std::vector<double> sc(p + 1);
          double mx = -1e300, sum = 0;
          for (int j = 0; j <= p; ++j) {
            double dot = 0;
            for (int d = 0; d < kd; ++d) dot += static_cast<double>(qh[d]) * rows[sq][static_cast<size_t>(j) * kd + d];
            sc[j] = dot * scale;
            mx = std::max(mx, sc[j]);
          }
          for (double& v : sc) sum += (v = std::exp(v - mx));
          for (int d = 0; d < lat; ++d) {
            double o = 0;
            for (int j = 0; j <= p; ++j) o += sc[j] * rows[sq][static_cast<size_t>(j) * kd + d];
            want.push_back(o / sum);
          }
        }
      }
      auto check = [&](const DeviceBuffer& out, double tolerance, const char* what) {
        const auto got = Down<float>(out, want.size());
        double err = 0, norm = 0;
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_FALSE(std::isnan(got[i])) << what << " value " << i;
          err += (got[i] - want[i]) * (got[i] - want[i]);
          norm += want[i] * want[i];
        }
        EXPECT_LT(std::sqrt(err / norm), tolerance) << what << ", " << n << " tokens";
      };
      DeviceBuffer d_out = Poisoned(want.size());
      DeviceBuffer d_part = Poisoned(std::max<size_t>(MlaAttentionScratchFloats(a, n), 1));
      ASSERT_TRUE(
          MlaAttention(a, d_q.as<float>(), scale, pool, places, n, d_out.as<float>(), d_part.as<float>(), nullptr)
              .ok());
      const int splits = MlaAttentionSplits(a, n);
      if (splits == 1) check(d_out, 1e-5, "MlaAttention");
      // The values v_b_h . latent through MlaValues, which combines the split states of a decode step.
      const MlaSplitStates states{d_part.as<float>(), splits, d_pos.as<int32_t>()};
      DeviceBuffer d_values = Poisoned(static_cast<size_t>(n) * n_head * a.v_dim);
      ASSERT_TRUE(
          MlaValues(a, d_out.as<float>(), n, d_values.as<float>(), nullptr, nullptr, splits > 1 ? &states : nullptr)
              .ok());
      const auto values = Down<float>(d_values, static_cast<size_t>(n) * n_head * a.v_dim);
      double err = 0, norm = 0;
      for (int i = 0; i < n; ++i)
        for (int h = 0; h < n_head; ++h)
          for (int r = 0; r < a.v_dim; ++r) {
            double v = 0;
            for (int l = 0; l < lat; ++l)
              v += HalfToFloat(kv_b[(static_cast<size_t>(h) * (a.nope + a.v_dim) + a.nope + r) * lat + l]) *
                   want[(static_cast<size_t>(i) * n_head + h) * lat + l];
            const float got = values[(static_cast<size_t>(i) * n_head + h) * a.v_dim + r];
            ASSERT_FALSE(std::isnan(got)) << "token " << i << " head " << h << " row " << r;
            err += (got - v) * (got - v);
            norm += v * v;
          }
      EXPECT_LT(std::sqrt(err / norm), 1e-5) << "MlaValues over MlaAttention, " << splits << " splits";
      if (n > kMaxMatVecTokens) {
        ASSERT_TRUE(FlashAttentionLatentTakes(kd, lat));
        DeviceBuffer d_flash = Poisoned(want.size());
        ASSERT_TRUE(FlashAttentionLatent(d_q.as<float>(), n_head, scale, pool, layer, places, n, lat,
                                         d_flash.as<float>(), nullptr)
                        .ok());
        check(d_flash, 5e-3, "FlashAttentionLatent");
      }
    }
  }
  EXPECT_FALSE(FlashAttentionLatentTakes(576, 512));
}

// MlaValues (v_b_h times the attended latents) against a double-precision product of the same f16 rows: Leanstral's
// 128 values per head (whole blocks of 32: quantized too, bit for bit as the CPU quantizes the values written) and
// the fixtures' 24 (a partial block, not quantized).
TEST_F(CudaMoeTest, MlaValuesMatchReference) {
  for (const int v_dim : {128, 24}) {
    SCOPED_TRACE(std::to_string(v_dim) + " values per head");
    const int n_head = 3, nope = 16, lat = 96, n = 2;
    std::mt19937 rng(static_cast<unsigned>(v_dim));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> kv_b(static_cast<size_t>(n_head) * (nope + v_dim) * lat);
    for (uint16_t& h : kv_b) h = FloatToHalf(0.1f * normal(rng));
    std::vector<float> latent(static_cast<size_t>(n) * n_head * lat);
    for (float& v : latent) v = normal(rng);
    DeviceBuffer d_kv_b = ToDevice(kv_b), d_latent = ToDevice(latent), d_out = Poisoned(n * n_head * v_dim);
    DeviceBuffer d_q = ToDevice(std::vector<int8_t>(n * n_head * v_dim)), d_ds = Poisoned(n * n_head * v_dim / 16 + 1);
    MlaArgs a;
    a.n_head = n_head;
    a.nope = nope;
    a.lat = lat;
    a.v_dim = v_dim;
    a.kv_b = d_kv_b.as<uint16_t>();
    const Q8Activations q{d_q.as<int8_t>(), d_ds.as<float>()};
    const bool quantize = v_dim % 32 == 0;
    ASSERT_TRUE(MlaValues(a, d_latent.as<float>(), n, d_out.as<float>(), nullptr, quantize ? &q : nullptr).ok());
    const auto got = Down<float>(d_out, n * n_head * v_dim);
    for (int i = 0; i < n; ++i)
      for (int h = 0; h < n_head; ++h)
        for (int r = 0; r < v_dim; ++r) {
          double want = 0;
          for (int l = 0; l < lat; ++l)
            want +=
                static_cast<double>(HalfToFloat(kv_b[(static_cast<size_t>(h) * (nope + v_dim) + nope + r) * lat + l])) *
                latent[(static_cast<size_t>(i) * n_head + h) * lat + l];
          ASSERT_NEAR(got[(static_cast<size_t>(i) * n_head + h) * v_dim + r], want,
                      1e-4 * std::max(1.0, std::fabs(want)))
              << "token " << i << " head " << h << " row " << r;
        }
    if (quantize) ExpectQ8Equals(d_q, d_ds, got);
    if (!quantize) EXPECT_FALSE(MlaValues(a, d_latent.as<float>(), n, d_out.as<float>(), nullptr, &q).ok());
  }
}

// Prefill products of Q4_0 experts on int8 activations (ExpertMatMulQ8, tensor cores) over GroupByExpert's tiles:
// gathered (the tokens' rows) and grouped inputs, against double-precision products of the CPU-decoded weights and
// the CPU's quantization of the inputs. 40 and 700 tokens (tiles partly filled, several tiles of one expert), rows
// per expert not a multiple of the 128 a block takes; refused: Q8_0, columns not a multiple of 128.
TEST_F(CudaMoeTest, Int8PrefillExpertProductsMatchReference) {
  const int ne = 16, k = 3;
  const int64_t cols = 256, rows = 96;
  for (int n : {40, 700}) {
    SCOPED_TRACE(std::to_string(n) + " tokens");
    std::mt19937 rng(static_cast<unsigned>(n));
    TestExperts w = RandomExperts(WeightType::kQ4_0, ne * rows, cols, rng);
    std::uniform_int_distribution<int> pick(0, ne - 1);
    std::vector<int32_t> chosen;
    for (int t = 0; t < n; ++t) {
      std::vector<int> e(ne);
      for (int i = 0; i < ne; ++i) e[i] = i;
      std::shuffle(e.begin(), e.end(), rng);
      for (int i = 0; i < k; ++i) chosen.push_back(t % 5 == 0 ? i : e[i]);  // expert 0..2 more often: several tiles
    }
    const int slots = n * k;
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(n) * cols), xs(static_cast<size_t>(slots) * cols);
    for (float& v : x) v = normal(rng);
    for (float& v : xs) v = normal(rng);
    const CpuQ8 xq = QuantizeCpu(x), xsq = QuantizeCpu(xs);
    const std::vector<float> xv = Dequantized(xq), xsv = Dequantized(xsq);
    DeviceBuffer d_chosen = ToDevice(chosen), d_xq = ToDevice(xq.q), d_xds = ToDevice(xq.ds), d_xsq = ToDevice(xsq.q),
                 d_xsds = ToDevice(xsq.ds);
    DeviceBuffer d_first = ToDevice(std::vector<int32_t>(ne + 1)), d_order = ToDevice(std::vector<int32_t>(slots));
    DeviceBuffer d_row_of = ToDevice(std::vector<int32_t>(slots)), d_active = ToDevice(std::vector<int32_t>(ne + 1));
    DeviceBuffer d_tiles = ToDevice(std::vector<int32_t>(2 * MaxExpertTiles(slots, ne) + 1));
    const ExpertGroups g{d_first.as<int32_t>(), d_order.as<int32_t>(), d_row_of.as<int32_t>(), d_active.as<int32_t>(),
                         d_tiles.as<int32_t>()};
    ASSERT_TRUE(GroupByExpert(d_chosen.as<int32_t>(), slots, ne, g, nullptr, nullptr).ok());
    const auto row_of = Down<int32_t>(d_row_of, slots);
    for (const bool gather : {true, false}) {
      SCOPED_TRACE(gather ? "gathered" : "grouped");
      ASSERT_TRUE(ExpertMatMulQ8Takes(w.m));
      DeviceBuffer d_y = Poisoned(static_cast<size_t>(slots) * rows);
      const Q8Activations in = gather ? Q8Activations{d_xq.as<int8_t>(), d_xds.as<float>()}
                                      : Q8Activations{d_xsq.as<int8_t>(), d_xsds.as<float>()};
      const Status st = ExpertMatMulQ8(w.m, rows, in, gather, g, k, n, d_y.as<float>(), nullptr);
      ASSERT_TRUE(st.ok()) << st.ToString();
      const auto y = Down<float>(d_y, static_cast<size_t>(slots) * rows);
      double err = 0, norm = 0;
      for (int s = 0; s < slots; ++s) {
        const int j = row_of[s];
        const float* in_v = gather ? &xv[static_cast<size_t>(s / k) * cols] : &xsv[static_cast<size_t>(j) * cols];
        for (int64_t r = 0; r < rows; ++r) {
          const double want = RowDot(w.w, chosen[s] * rows + r, in_v, cols);
          const float got = y[static_cast<size_t>(j) * rows + r];
          ASSERT_FALSE(std::isnan(got)) << "slot " << s << " row " << r;
          err += (got - want) * (got - want);
          norm += want * want;
        }
      }
      EXPECT_LT(std::sqrt(err / norm), 1e-5);
    }
  }
  std::mt19937 rng(5);
  EXPECT_FALSE(ExpertMatMulQ8Takes(RandomExperts(WeightType::kQ8_0, 64, 128, rng).m));
  EXPECT_FALSE(ExpertMatMulQ8Takes(RandomExperts(WeightType::kQ4_0, 64, 96, rng).m));
}

}  // namespace
}  // namespace lr::cuda
