// The MoE kernels of cuda/moe.h against their scalar references: Route against inference::RouteToken on random
// logits (softmax, sigmoid with a bias, expert groups, renormalisation, scale), RouteAndGroup against Route,
// GroupByExpert's grouping checked row by row, and the routed experts' products plus the weighted sum against
// ops::DequantizeRow and plain loops. (The MLA kernels are tested through the whole block: tests/cuda/model_test.cc,
// the deepseek2 fixtures.) Skipped when no CUDA device is present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/moe.h"
#include "inference/moe.h"
#include "ops/kernels.h"
#include "tests/cuda/device_test_util.h"

namespace lr::cuda {
namespace {

using testing::OnDevice;
using testing::ToDevice;
using CudaMoeTest = OnDevice<::testing::Test>;

template <typename T>
std::vector<T> Down(const DeviceBuffer& b, size_t count) {
  std::vector<T> v(count);
  EXPECT_TRUE(Synchronize("test").ok());
  EXPECT_TRUE(b.Download(v.data(), count * sizeof(T)).ok());
  return v;
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
      const RowNorm norm{d_w_norm.as<float>(), 1e-6f, d_xn.as<float>()};
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

}  // namespace
}  // namespace lr::cuda
