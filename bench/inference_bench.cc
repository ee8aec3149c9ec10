// Weight kernels: matrix-vector (decode) and matrix-matrix (prefill chunk) products per weight type, at each SIMD
// level the CPU has. Reported bytes/s count the weight bytes read (the activations are tiny beside them), so the
// matrix-vector figure compares directly with the machine's read bandwidth. Each matrix is 48 MiB or more, larger
// than the L3 caches, so every iteration streams it from memory, as a decode step does.
//
// Threads: OpenMP's default (set OMP_NUM_THREADS=2 to compare with `leanrotor bench -t 2`).
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "base/half.h"
#include "ops/kernels.h"

namespace lr::inference {
namespace {

constexpr int64_t kCols = 4096;

struct Matrix {
  std::vector<uint8_t> data;
  ops::WeightMatrix w;
};

// Random bytes with the f16 scale fields of each block set to small values (speed does not depend on them, but NaN
// scales would make the results meaningless to look at).
Matrix MakeMatrix(ops::TensorType type) {
  const ops::TensorTypeInfo t = *ops::LookupTensorType(static_cast<uint32_t>(type));
  const size_t row_bytes = ops::RowBytes(t, kCols);
  const int64_t rows = ((size_t{48} << 20) / row_bytes + 16) / 16 * 16;  // >= 48 MiB, whole 16-row groups
  Matrix m;
  m.data.resize(row_bytes * rows);
  std::mt19937 rng(7);
  for (auto& b : m.data) b = static_cast<uint8_t>(rng());
  const uint16_t small = FloatToHalf(0.01f);
  const size_t blocks = m.data.size() / t.block_bytes;
  for (size_t i = 0; i < blocks; ++i) {
    uint8_t* blk = m.data.data() + i * t.block_bytes;
    switch (type) {
      case ops::TensorType::kF32: {
        const float v = 0.01f;
        std::memcpy(blk, &v, 4);
        break;
      }
      case ops::TensorType::kBF16:
        blk[0] = 0;
        blk[1] = 0x3c;
        break;  // 0.0117
      case ops::TensorType::kQ6_K: std::memcpy(blk + 208, &small, 2); break;
      case ops::TensorType::kQ4_1:
      case ops::TensorType::kQ4_K:
      case ops::TensorType::kQ5_K:
        std::memcpy(blk, &small, 2);
        std::memcpy(blk + 2, &small, 2);
        break;
      default: std::memcpy(blk, &small, 2); break;  // f16 values, q4_0 / q8_0 scales
    }
  }
  m.w = ops::WeightMatrix{t, m.data.data(), rows, kCols, row_bytes};
  return m;
}

// args: weight type id, SIMD level, tokens per call, layout (WeightLayout: 1 = repacked to 16 interleaved rows)
void BM_MatMul(benchmark::State& state) {
  const auto type = static_cast<ops::TensorType>(state.range(0));
  const auto level = static_cast<Isa>(state.range(1));
  const int n_tokens = static_cast<int>(state.range(2));
  const bool repacked = state.range(3) == static_cast<int64_t>(ops::WeightLayout::kRows16);
  if (level > BestIsa()) {
    state.SkipWithError("SIMD level not available on this CPU");
    return;
  }
  ops::SetActiveIsa(level);
  const Matrix m = MakeMatrix(type);
  ops::OwnedWeightMatrix packed;
  if (repacked) packed = ops::Repack16(m.w);
  const ops::WeightMatrix& w = repacked ? packed.view : m.w;
  std::vector<float> x(static_cast<size_t>(kCols) * n_tokens, 0.5f), y(static_cast<size_t>(w.rows) * n_tokens);
  for (auto _ : state) {
    ops::MatMul(w, x.data(), n_tokens, y.data(), w.rows);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(m.data.size()));
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * n_tokens, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(m.w.type.name) + " " + IsaName(level) + (repacked ? " rows16" : ""));
  ops::SetActiveIsa(BestIsa());
}

void Args(benchmark::internal::Benchmark* b) {
  const ops::TensorType types[] = {ops::TensorType::kF32,  ops::TensorType::kF16,  ops::TensorType::kBF16,
                                   ops::TensorType::kQ8_0, ops::TensorType::kQ4_0, ops::TensorType::kQ4_1,
                                   ops::TensorType::kQ4_K, ops::TensorType::kQ5_K, ops::TensorType::kQ6_K};
  for (ops::TensorType t : types) {
    for (int level : {1, 2}) b->Args({static_cast<int64_t>(t), level, 1, 0});
    b->Args({static_cast<int64_t>(t), 2, 16, 0});
  }
  for (ops::TensorType t : {ops::TensorType::kQ8_0, ops::TensorType::kQ4_1}) {  // the layout the model repacks these to
    for (int level : {1, 2}) b->Args({static_cast<int64_t>(t), level, 1, 1});
    b->Args({static_cast<int64_t>(t), 2, 16, 1});
  }
  b->Args({static_cast<int64_t>(ops::TensorType::kQ4_1), 0, 1, 0});  // the scalar reference path, for scale
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
BENCHMARK(BM_MatMul)->Apply(Args);

}  // namespace
}  // namespace lr::inference

BENCHMARK_MAIN();
