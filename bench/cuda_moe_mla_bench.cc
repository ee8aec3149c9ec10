// The deepseek2 decode kernels one at a time at the Leanstral shape (cuda/moe.h, cuda/mla.h, and the dense products
// the block uses): which part of a decode step costs what. Each kernel is captured 100 times into a CUDA graph (as a
// decode step runs them) and the graph timed with events; counters: microseconds per launch and, where the bytes read
// are known, GB/s. Random weights, random routing; one layer's experts (about 2 GB) and KV rows up to 32K positions.
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/mla.h"
#include "cuda/moe.h"

namespace lr::cuda {
namespace {

constexpr int kEmbd = 4096, kExperts = 128, kUsed = 4, kFf = 2048, kHeads = 32, kLat = 256, kRope = 64, kNope = 64,
              kV = 128, kLayers = 36;

DeviceBuffer Alloc(size_t bytes) {
  auto b = DeviceBuffer::Allocate(std::max<size_t>(bytes, 4), "bench");
  if (!b.ok()) std::abort();
  return std::move(b).value();
}

struct Weights {
  DeviceBuffer q, scales;
  DeviceMatrix m;
};
Weights Random(WeightType t, int64_t rows, int64_t cols, uint64_t seed) {
  Weights w;
  w.q = Alloc(QuantRowBytes(t, cols) * rows);
  w.scales = Alloc(static_cast<size_t>(rows) * (cols / 32) * ScaleBytesPerBlock(t));
  if (!RandomizeMatrix(t, rows, cols, w.q.as<uint8_t>(), w.scales.as<uint8_t>(), seed, nullptr).ok()) std::abort();
  w.m = DeviceMatrix{t, rows, cols, w.q.as<uint8_t>(), w.scales.as<uint8_t>(), QuantRowBytes(t, cols)};
  return w;
}

DeviceBuffer Floats(size_t count, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(count);
  for (float& x : v) x = normal(rng);
  DeviceBuffer b = Alloc(count * 4);
  if (!b.Upload(v.data(), count * 4).ok()) std::abort();
  return b;
}

// Microseconds per launch of `launch` (100 captured into a graph, the graph replayed 5 times).
double TimeGraph(const std::function<Status(cudaStream_t)>& launch) {
  cudaStream_t s;
  cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  cudaGraph_t graph;
  cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal);
  for (int i = 0; i < 100; ++i)
    if (!launch(s).ok()) std::abort();
  cudaStreamEndCapture(s, &graph);
  cudaGraphExec_t exec;
  cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphLaunch(exec, s);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start, s);
  for (int r = 0; r < 5; ++r) cudaGraphLaunch(exec, s);
  cudaEventRecord(stop, s);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(s);
  return ms * 1000.0 / 500.0;
}

void Report(benchmark::State& state, const std::function<Status(cudaStream_t)>& launch, double bytes) {
  double us = 0;
  for (auto _ : state) {
    us = TimeGraph(launch);
    state.SetIterationTime(us * 1e-6);
  }
  state.counters["us"] = us;
  if (bytes > 0) state.counters["GB/s"] = bytes / (us * 1e-6) / 1e9;
}

// The routing of n random tokens: the groups and weights the expert kernels read.
struct Routing {
  DeviceBuffer logits, experts, weights, first, order, row_of, active, tiles;
  ExpertGroups g;
  int distinct = 0;
};
Routing Route(int n) {
  Routing r;
  r.logits = Floats(static_cast<size_t>(n) * kExperts, n);
  const int slots = n * kUsed;
  r.experts = Alloc(slots * 4);
  r.weights = Alloc(slots * 4);
  r.first = Alloc((kExperts + 1) * 4);
  r.order = Alloc(slots * 4);
  r.row_of = Alloc(slots * 4);
  r.active = Alloc((kExperts + 1) * 4);
  r.tiles = Alloc((2 * MaxExpertTiles(slots, kExperts) + 1) * 4);
  r.g = ExpertGroups{r.first.as<int32_t>(), r.order.as<int32_t>(), r.row_of.as<int32_t>(), r.active.as<int32_t>(),
                     r.tiles.as<int32_t>()};
  RouterArgs a;
  a.n_expert = kExperts;
  a.n_used = kUsed;
  a.norm = true;
  if (!RouteAndGroup(a, r.logits.as<float>(), n, r.experts.as<int32_t>(), r.weights.as<float>(), r.g, nullptr, nullptr)
           .ok())
    std::abort();
  std::vector<int32_t> active(kExperts + 1);
  if (!Synchronize("route").ok() || !r.active.Download(active.data(), active.size() * 4).ok()) std::abort();
  r.distinct = active[kExperts];
  return r;
}

void BM_ExpertGateUp(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  static Weights gate = Random(WeightType::kQ4_0, int64_t{kExperts} * kFf, kEmbd, 1);
  static Weights up = Random(WeightType::kQ4_0, int64_t{kExperts} * kFf, kEmbd, 2);
  Routing r = Route(n);
  DeviceBuffer x = Floats(static_cast<size_t>(n) * kEmbd, 3), g = Alloc(n * kUsed * kFf * 4),
               u = Alloc(n * kUsed * kFf * 4);
  const ExpertProduct pg{gate.m, kFf, x.as<float>(), true, g.as<float>()};
  const ExpertProduct pu{up.m, kFf, x.as<float>(), true, u.as<float>()};
  Report(
      state, [&](cudaStream_t s) { return ExpertGateUp(pg, pu, r.g, kUsed, std::min(n * kUsed, kExperts), n, s); },
      2.0 * r.distinct * kFf * QuantRowBytes(WeightType::kQ4_0, kEmbd) * (1 + 2.0 / 16));
  state.counters["experts"] = r.distinct;
}
BENCHMARK(BM_ExpertGateUp)->Arg(1)->Arg(16)->UseManualTime()->Iterations(3);

void BM_ExpertDown(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  static Weights down = Random(WeightType::kQ4_0, int64_t{kExperts} * kEmbd, kFf, 4);
  Routing r = Route(n);
  DeviceBuffer g = Floats(static_cast<size_t>(n) * kUsed * kFf, 5), y = Alloc(n * kUsed * kEmbd * 4);
  const ExpertProduct p{down.m, kEmbd, g.as<float>(), false, y.as<float>()};
  Report(
      state, [&](cudaStream_t s) { return ExpertMatMul(&p, 1, r.g, kUsed, std::min(n * kUsed, kExperts), n, s); },
      1.0 * r.distinct * kEmbd * QuantRowBytes(WeightType::kQ4_0, kFf) * (1 + 2.0 / 16));
}
BENCHMARK(BM_ExpertDown)->Arg(1)->Arg(16)->UseManualTime()->Iterations(3);

// The dense products of a layer: q_a + kv_a, q_b, wo, the shared expert's gate + up and down (Q8_0), the router (f32).
void BM_DenseProduct(benchmark::State& state) {
  const int n = static_cast<int>(state.range(1));
  struct Shape {
    WeightType t;
    int rows, cols;
  };
  static const Shape shapes[] = {{WeightType::kQ8_0, 1024 + kLat + kRope, kEmbd},
                                 {WeightType::kQ8_0, kHeads * (kNope + kRope), 1024},
                                 {WeightType::kQ8_0, kEmbd, kHeads * kV},
                                 {WeightType::kQ8_0, 2 * kFf, kEmbd},
                                 {WeightType::kQ8_0, kEmbd, kFf},
                                 {WeightType::kF32, kExperts, kEmbd}};
  const Shape& sh = shapes[state.range(0)];
  Weights w = Random(sh.t, sh.rows, sh.cols, 6);
  DeviceBuffer x = Floats(static_cast<size_t>(n) * sh.cols, 7), y = Alloc(static_cast<size_t>(n) * sh.rows * 4);
  Report(
      state, [&](cudaStream_t s) { return MatVec(w.m, x.as<float>(), n, y.as<float>(), sh.rows, false, s); },
      static_cast<double>(w.q.bytes() + w.scales.bytes()));
}
BENCHMARK(BM_DenseProduct)
    ->ArgsProduct({{0, 1, 2, 3, 4, 5}, {1, 16}})
    ->ArgNames({"shape", "n"})
    ->UseManualTime()
    ->Iterations(3);

void BM_RouteAndGroup(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  Routing r = Route(n);
  RouterArgs a;
  a.n_expert = kExperts;
  a.n_used = kUsed;
  a.norm = true;
  Report(
      state,
      [&](cudaStream_t s) {
        return RouteAndGroup(a, r.logits.as<float>(), n, r.experts.as<int32_t>(), r.weights.as<float>(), r.g, nullptr,
                             s);
      },
      0);
}
BENCHMARK(BM_RouteAndGroup)->Arg(1)->Arg(16)->UseManualTime()->Iterations(3);

// MLA: the row store and absorption, the attention over `depth` positions, the values.
struct Mla {
  DeviceBuffer pool, pages, pos, first, q, kv, q_abs, latent, part, attn, kv_b, kv_norm, inv_freq;
  KvPool kv_pool;
  TokenPlaces places;
  MlaArgs a;
};
Mla MakeMla(int n, int depth) {
  Mla m;
  const int n_pages = (depth + n + kPageTokens - 1) / kPageTokens;
  const size_t page_bytes = static_cast<size_t>(kLayers) * (kLat + kRope) * 2 * kPageTokens;
  m.pool = Alloc(page_bytes * n_pages);
  if (!RandomizeMatrix(WeightType::kF16, static_cast<int64_t>(n_pages) * kLayers * kPageTokens, kLat + kRope,
                       m.pool.as<uint8_t>(), nullptr, 8, nullptr)
           .ok())
    std::abort();
  std::vector<int32_t> pages(n_pages), pos(n), first(n, 0);
  for (int i = 0; i < n_pages; ++i) pages[i] = i;
  for (int i = 0; i < n; ++i) pos[i] = depth + i;
  m.pages = Alloc(n_pages * 4);
  m.pos = Alloc(n * 4);
  m.first = Alloc(n * 4);
  if (!m.pages.Upload(pages.data(), n_pages * 4).ok() || !m.pos.Upload(pos.data(), n * 4).ok() ||
      !m.first.Upload(first.data(), n * 4).ok())
    std::abort();
  m.kv_pool = KvPool{m.pool.as<uint8_t>(), page_bytes, kLayers, 1, kLat + kRope, 0};
  m.places = TokenPlaces{m.pos.as<int32_t>(), m.first.as<int32_t>(), m.pages.as<int32_t>()};
  m.q = Floats(static_cast<size_t>(n) * kHeads * (kNope + kRope), 9);
  m.kv = Floats(static_cast<size_t>(n) * (kLat + kRope), 10);
  m.q_abs = Alloc(static_cast<size_t>(n) * kHeads * (kLat + kRope) * 4);
  m.latent = Alloc(static_cast<size_t>(n) * kHeads * kLat * 4);
  m.attn = Alloc(static_cast<size_t>(n) * kHeads * kV * 4);
  m.kv_b = Alloc(static_cast<size_t>(kHeads) * (kNope + kV) * kLat * 2);
  if (!RandomizeMatrix(WeightType::kF16, kHeads * (kNope + kV), kLat, m.kv_b.as<uint8_t>(), nullptr, 11, nullptr).ok())
    std::abort();
  m.kv_norm = Floats(kLat, 12);
  m.inv_freq = Floats(kRope / 2, 13);
  m.a.n_head = kHeads;
  m.a.nope = kNope;
  m.a.rope = kRope;
  m.a.lat = kLat;
  m.a.v_dim = kV;
  m.a.eps = 1e-6f;
  m.a.kv_norm = m.kv_norm.as<float>();
  m.a.inv_freq = m.inv_freq.as<float>();
  m.a.temperature_scale = 0.1f;
  m.a.temperature_length = 8192;
  m.a.layer = kLayers - 1;
  m.a.kv_b = m.kv_b.as<uint16_t>();
  m.part = Alloc(std::max<size_t>(MlaAttentionScratchFloats(m.a, n), 1) * 4);
  return m;
}

void BM_MlaPrepare(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  Mla m = MakeMla(n, 0);
  Report(
      state,
      [&](cudaStream_t s) {
        return MlaPrepare(m.a, m.q.as<float>(), m.kv.as<float>(), m.kv_pool, m.places, n, m.q_abs.as<float>(), s);
      },
      static_cast<double>(m.kv_b.bytes()) * kNope / (kNope + kV));
}
BENCHMARK(BM_MlaPrepare)->Arg(1)->Arg(16)->UseManualTime()->Iterations(3);

void BM_MlaAttention(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0)), depth = static_cast<int>(state.range(1));
  Mla m = MakeMla(n, depth);
  Report(
      state,
      [&](cudaStream_t s) {
        return MlaAttention(m.a, m.q_abs.as<float>(), 0.1f, m.kv_pool, m.places, n, m.latent.as<float>(),
                            m.part.as<float>(), s);
      },
      static_cast<double>(depth) * (kLat + kRope) * 2 * (n == 1 ? 1 : 0));  // rows read, one sequence at batch 1
}
BENCHMARK(BM_MlaAttention)
    ->ArgsProduct({{1, 16}, {64, 8192, 32768}})
    ->ArgNames({"n", "depth"})
    ->UseManualTime()
    ->Iterations(3);

void BM_MlaValues(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  Mla m = MakeMla(n, 0);
  Report(
      state, [&](cudaStream_t s) { return MlaValues(m.a, m.latent.as<float>(), n, m.attn.as<float>(), s); },
      static_cast<double>(m.kv_b.bytes()) * kV / (kNope + kV));
}
BENCHMARK(BM_MlaValues)->Arg(1)->Arg(16)->UseManualTime()->Iterations(3);

void BM_SmallSteps(benchmark::State& state) {  // RMSNorm, SwiGLU, the experts' weighted sum: launch-bound steps
  const int n = static_cast<int>(state.range(1));
  Routing r = Route(n);
  DeviceBuffer x = Floats(static_cast<size_t>(n) * kEmbd, 14), y = Alloc(static_cast<size_t>(n) * kEmbd * 4);
  DeviceBuffer w = Floats(kEmbd, 15), ys = Floats(static_cast<size_t>(n) * kUsed * kEmbd, 16);
  DeviceBuffer g = Floats(static_cast<size_t>(n) * kFf, 17), u = Floats(static_cast<size_t>(n) * kFf, 18);
  switch (state.range(0)) {
    case 0:
      Report(
          state,
          [&](cudaStream_t s) {
            return RmsNorm(x.as<float>(), nullptr, n, kEmbd, w.as<float>(), 1e-6f, y.as<float>(), s);
          },
          0);
      break;
    case 1:
      Report(
          state, [&](cudaStream_t s) { return SwiGlu(g.as<float>(), u.as<float>(), int64_t{n} * kFf, s); }, 0);
      break;
    default:
      Report(
          state,
          [&](cudaStream_t s) {
            return CombineExperts(ys.as<float>(), r.weights.as<float>(), r.g, n, kUsed, kEmbd, x.as<float>(), s);
          },
          0);
  }
}
BENCHMARK(BM_SmallSteps)->ArgsProduct({{0, 1, 2}, {1, 16}})->ArgNames({"step", "n"})->UseManualTime()->Iterations(3);

}  // namespace
}  // namespace lr::cuda

int main(int argc, char** argv) {
  const lr::Result<lr::cuda::DeviceInfo> info = lr::cuda::QueryDevice();
  if (!info.ok()) {
    std::fprintf(stderr, "cuda_moe_mla_bench: %s\n", info.status().ToString().c_str());
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  return 0;
}
