// Opening the default model (LocalModel::Open), in three ways: an f16 cache (no KV calibration), a q8_0 cache whose
// calibration is computed (one prefill of the calibration text, no cache directory), and a q8_0 cache whose
// calibration is loaded from the cache directory (stored by a first open before the timing starts).
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <filesystem>
#include <string>

#include "inference/local_model.h"

namespace lr::inference {
namespace {

const std::string kDefaultModel = std::string(LR_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

LocalModelOptions Options(const std::string& format, const std::string& cache_dir) {
  LocalModelOptions o;
  o.path = kDefaultModel;
  o.n_ctx = 512;
  o.kv_budget_mib = 64;
  o.kv.k_format = o.kv.v_format = format;
  o.cache_dir = cache_dir;
  return o;
}

void Open(benchmark::State& state, const LocalModelOptions& o) {
  for (auto _ : state) {
    Result<std::unique_ptr<LocalModel>> lm = LocalModel::Open(o);
    if (!lm.ok()) return state.SkipWithError(lm.status().ToString().c_str());
    benchmark::DoNotOptimize(lm->get());
  }
}

void BM_OpenF16(benchmark::State& state) { Open(state, Options("f16", "")); }

void BM_OpenQ8ComputingTheCalibration(benchmark::State& state) { Open(state, Options("q8_0", "")); }

void BM_OpenQ8WithTheStoredCalibration(benchmark::State& state) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("lr_model_load_bench_" + std::to_string(::getpid()))).string();
  if (!LocalModel::Open(Options("q8_0", dir)).ok()) return state.SkipWithError("the first open failed");
  Open(state, Options("q8_0", dir));
  std::filesystem::remove_all(dir);
}

BENCHMARK(BM_OpenF16)->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK(BM_OpenQ8ComputingTheCalibration)->Unit(benchmark::kMillisecond)->Iterations(1);
BENCHMARK(BM_OpenQ8WithTheStoredCalibration)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
}  // namespace lr::inference

BENCHMARK_MAIN();
