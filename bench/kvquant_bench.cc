// kvquant kernels: encode throughput per format, and attention time per decoded token over 512, 4K and 32K
// compressed rows (one KV head with a GQA group of 4 queries, head dim 128, pages of 256 rows, 1 and 2 threads).
// "attend" repeats one head group's range, which then sits in the caches (16 MiB of f16 at 32K fits a 32 MiB L3).
// "attend_stream" walks 16 copies of the range in turn (256 MiB of f16), as a decode step does when it visits every
// layer's cache once: the rows come from memory, which is where fewer bytes per row pay. "attend_decode" is one
// decode step of the default model at depth 8K, in the paged cache's layout (BM_Decode); "attend_decode_isa" the same
// step with each kernel build (baseline, AVX2, AVX-512) this CPU runs. "shared_prefix" is pass@16's attention for one
// head at a 32K prompt, with the prompt's rows read once for all attempts or once per attempt.
// After the Google Benchmark table it prints every format's time as a ratio to f16's from the same run, twice: by
// wall-clock time, and by the CPU time of the calling thread (for one thread, the figure to read on a machine shared
// with other work, where wall-clock time mostly measures waiting for a core).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "kvquant/kernels.h"
#include "kvquant/kvquant.h"

namespace {

using lr::kvquant::RowCodec;
using lr::kvquant::RowSpan;

constexpr int kDim = 128;
constexpr int kGroup = 4;
constexpr int kPage = 256;

std::vector<float> Gaussian(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  return x;
}

void BM_Encode(benchmark::State& state, std::string format) {
  const RowCodec codec = *RowCodec::Create(format, kDim, 1, 0, 0);
  const int rows = 1024;
  const std::vector<float> x = Gaussian(static_cast<size_t>(rows) * kDim, 1);
  std::vector<uint8_t> out(codec.row_bytes() * rows);
  for (auto _ : state) {
    for (int t = 0; t < rows; ++t) codec.EncodeRow(&x[t * kDim], &out[t * codec.row_bytes()]);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * rows);
}

void BM_Attend(benchmark::State& state, std::string format, int ctx, int threads, int copies) {
  const RowCodec k = *RowCodec::Create(format, kDim, 1, 0, 0), v = *RowCodec::Create(format, kDim, 1, 0, 1);
  std::vector<uint8_t> kb(k.row_bytes() * ctx), vb(v.row_bytes() * ctx);
  {
    const std::vector<float> x = Gaussian(static_cast<size_t>(2) * ctx * kDim, 2);
    for (int t = 0; t < ctx; ++t) {
      k.EncodeRow(&x[t * kDim], &kb[t * k.row_bytes()]);
      v.EncodeRow(&x[(ctx + t) * kDim], &vb[t * v.row_bytes()]);
    }
  }
  // Copies at distinct addresses, each a range of pages.
  std::vector<std::vector<uint8_t>> kc(copies, kb), vc(copies, vb);
  std::vector<std::vector<RowSpan>> spans(copies);
  for (int c = 0; c < copies; ++c)
    for (int t = 0; t < ctx; t += kPage)
      spans[c].push_back({&kc[c][t * k.row_bytes()], &vc[c][t * v.row_bytes()], kPage});
  const std::vector<float> q = Gaussian(kGroup * kDim, 3);
  std::vector<float> out(kGroup * kDim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  int c = 0;
  for (auto _ : state) {
    const auto& sp = spans[c];
    c = (c + 1) % copies;
    const lr::Status s = threads == 1
                             ? lr::kvquant::Attend(k, v, q.data(), kGroup, sp, scale, out.data())
                             : lr::kvquant::AttendParallel(k, v, q.data(), kGroup, sp, scale, out.data(), threads);
    if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(kb.size() + vb.size()));
}

// One decode step's attention on the default model's cache at depth 8K (SmolLM2-135M: 30 layers x 3 KV heads of
// dim 64, GQA groups of 3 queries), laid out as the paged cache lays it out: pages of 32 positions, each holding, for
// every (layer, head), its 32 key rows and then its 32 value rows. One iteration attends every (layer, head) in turn
// over all its pages, so rows come from memory in 32-row runs a page apart (189 MB of f16 per step), as in
// `leanrotor bench --depth 8192`.
void BM_Decode(benchmark::State& state, std::string format, int threads, lr::Isa isa) {
  constexpr int kHeads = 90, kModelDim = 64, kModelGroup = 3, kPageTokens = 32, kDepth = 8192;
  const RowCodec k = *RowCodec::Create(format, kModelDim, 1, 0, 0), v = *RowCodec::Create(format, kModelDim, 1, 0, 1);
  const size_t kp = k.row_bytes() * kPageTokens, vp = v.row_bytes() * kPageTokens, page = kHeads * (kp + vp);
  std::vector<uint8_t> pages(page * (kDepth / kPageTokens));
  {
    const std::vector<float> x = Gaussian(static_cast<size_t>(2) * kDepth * kModelDim, 2);
    for (int t = 0; t < kDepth; ++t) {
      uint8_t* base = &pages[page * (t / kPageTokens)];
      for (int h = 0; h < kHeads; ++h) {
        k.EncodeRow(&x[t * kModelDim], base + h * (kp + vp) + (t % kPageTokens) * k.row_bytes());
        v.EncodeRow(&x[(kDepth + t) * kModelDim], base + h * (kp + vp) + kp + (t % kPageTokens) * v.row_bytes());
      }
    }
  }
  std::vector<std::vector<RowSpan>> spans(kHeads);
  for (int h = 0; h < kHeads; ++h)
    for (int t = 0; t < kDepth; t += kPageTokens) {
      const uint8_t* base = &pages[page * (t / kPageTokens) + h * (kp + vp)];
      spans[h].push_back({base, base + kp, kPageTokens, t});
    }
  const std::vector<float> q = Gaussian(kModelGroup * kModelDim, 3);
  std::vector<float> out(kModelGroup * kModelDim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kModelDim));
  const lr::kvquant::Kernels& kernels = *lr::kvquant::GetKernels(isa);
  for (auto _ : state) {
    for (int h = 0; h < kHeads; ++h) {
      const lr::kvquant::CodedSpans part{&k, &v, spans[h]};
      const lr::Status s =
          lr::kvquant::AttendWith(kernels, {&part, 1}, 0, q.data(), kModelGroup, scale, out.data(), threads);
      if (!s.ok()) state.SkipWithError(s.ToString().c_str());
      benchmark::DoNotOptimize(out.data());
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(pages.size()));
}

// k = 16 attempts forked from one 32K-row prompt, one KV head with a GQA group of 4 queries each, every attempt with
// 64 rows of its own: the decode step's attention for that head, with the prompt's rows read once for all 64
// queries (AttendSharedPrefix, shared = true) or once per attempt (AttendMixed per attempt).
void BM_SharedPrefix(benchmark::State& state, std::string format, bool shared) {
  constexpr int kAttempts = 16, kPrompt = 32768, kOwn = 64;
  const RowCodec k = *RowCodec::Create(format, kDim, 1, 0, 0), v = *RowCodec::Create(format, kDim, 1, 0, 1);
  auto encode = [&](int rows, unsigned seed, std::vector<uint8_t>* kb, std::vector<uint8_t>* vb) {
    const std::vector<float> x = Gaussian(static_cast<size_t>(2) * rows * kDim, seed);
    kb->resize(k.row_bytes() * rows);
    vb->resize(v.row_bytes() * rows);
    for (int t = 0; t < rows; ++t) {
      k.EncodeRow(&x[t * kDim], &(*kb)[t * k.row_bytes()]);
      v.EncodeRow(&x[(rows + t) * kDim], &(*vb)[t * v.row_bytes()]);
    }
  };
  std::vector<uint8_t> kb, vb;
  encode(kPrompt, 2, &kb, &vb);
  std::vector<RowSpan> prompt;
  for (int t = 0; t < kPrompt; t += kPage) prompt.push_back({&kb[t * k.row_bytes()], &vb[t * v.row_bytes()], kPage});
  std::vector<std::vector<uint8_t>> own_k(kAttempts), own_v(kAttempts);
  std::vector<RowSpan> own_spans(kAttempts);
  std::vector<lr::kvquant::CodedSpans> own_parts(kAttempts);
  for (int a = 0; a < kAttempts; ++a) {
    encode(kOwn, 10 + a, &own_k[a], &own_v[a]);
    own_spans[a] = {own_k[a].data(), own_v[a].data(), kOwn};
    own_parts[a] = {&k, &v, {&own_spans[a], 1}};
  }
  std::vector<std::span<const lr::kvquant::CodedSpans>> own;
  for (int a = 0; a < kAttempts; ++a) own.push_back({&own_parts[a], 1});
  const lr::kvquant::CodedSpans shared_part{&k, &v, prompt};
  const std::vector<float> q = Gaussian(kAttempts * kGroup * kDim, 3);
  std::vector<float> out(kAttempts * kGroup * kDim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  for (auto _ : state) {
    if (shared) {
      const lr::Status s = lr::kvquant::AttendSharedPrefix({&shared_part, 1}, own, q.data(), kGroup, scale, out.data());
      if (!s.ok()) state.SkipWithError(s.ToString().c_str());
    } else {
      for (int a = 0; a < kAttempts; ++a) {
        const lr::kvquant::CodedSpans parts[] = {shared_part, own_parts[a]};
        const lr::Status s =
            lr::kvquant::AttendMixed(parts, &q[a * kGroup * kDim], kGroup, scale, &out[a * kGroup * kDim]);
        if (!s.ok()) state.SkipWithError(s.ToString().c_str());
      }
    }
    benchmark::DoNotOptimize(out.data());
  }
}

// Console output as usual, plus the real time of every run, for the ratio table.
class RecordingReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& r : runs) {
      real[r.benchmark_name()] = r.GetAdjustedRealTime();
      cpu[r.benchmark_name()] = r.GetAdjustedCPUTime();
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> real, cpu;
};

}  // namespace

#ifdef LR_KVQUANT_BENCH_CUDA
int RunGpuSection();  // kvquant_bench_cuda.cc
#endif

int main(int argc, char** argv) {
  // --gpu: the GPU section alone (kvquant_bench_cuda.cc), in builds with the CUDA backend.
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--gpu") {
#ifdef LR_KVQUANT_BENCH_CUDA
      return RunGpuSection();
#else
      std::fprintf(stderr, "kvquant_bench: --gpu needs a build with the CUDA backend (LEANROTOR_CUDA)\n");
      return 1;
#endif
    }
  }
  const int contexts[] = {512, 4096, 32768};
  std::vector<std::string> formats;
  for (const auto& f : lr::kvquant::ListFormats()) formats.emplace_back(f.name);
  for (const std::string& f : formats)
    benchmark::RegisterBenchmark(("encode/" + f).c_str(), BM_Encode, f)->Unit(benchmark::kMicrosecond);
  for (int ctx : contexts)
    for (int threads : {1, 2})
      for (const std::string& f : formats)
        benchmark::RegisterBenchmark(
            ("attend/" + f + "/ctx:" + std::to_string(ctx) + "/threads:" + std::to_string(threads)).c_str(), BM_Attend,
            f, ctx, threads, 1)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
  for (int threads : {1, 2})
    for (const std::string& f : formats)
      benchmark::RegisterBenchmark(("attend_stream/" + f + "/ctx:32768/threads:" + std::to_string(threads)).c_str(),
                                   BM_Attend, f, 32768, threads, 16)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  for (int threads : {1, 2})
    for (const std::string& f : formats)
      benchmark::RegisterBenchmark(("attend_decode/" + f + "/ctx:8192/threads:" + std::to_string(threads)).c_str(),
                                   BM_Decode, f, threads, lr::BestIsa())
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  // The same step with each kernel build this CPU runs (one thread), for the builds' speed against each other.
  for (lr::Isa isa : {lr::Isa::kBaseline, lr::Isa::kAvx2, lr::Isa::kAvx512})
    if (lr::kvquant::GetKernels(isa))
      for (const std::string f : {"f16", "q8_0", "tq4", "hx3", "hx3s"})
        benchmark::RegisterBenchmark(
            ("attend_decode_isa/" + std::string(lr::IsaName(isa)) + "/" + f + "/threads:1").c_str(), BM_Decode, f, 1,
            isa)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
  for (const std::string f : {"f16", "q8_0", "hx3"})
    for (bool shared : {false, true})
      benchmark::RegisterBenchmark(("shared_prefix/" + f + (shared ? "/shared" : "/per_attempt")).c_str(),
                                   BM_SharedPrefix, f, shared)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
  benchmark::Initialize(&argc, argv);
  RecordingReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();

  // Ratios to f16 from this run (< 1: faster than f16).
  for (const auto* times : {&reporter.real, &reporter.cpu}) {
    auto ratio = [&](const std::string& name, const std::string& f16) {
      const auto a = times->find(name), b = times->find(f16);
      if (a == times->end() || b == times->end()) return std::string("    -");
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%6.2f", a->second / b->second);
      return std::string(buf);
    };
    std::printf("\ntime / f16 time, same run, by %s (attend: one head group of %d queries, head dim %d)\n",
                times == &reporter.real ? "wall-clock time" : "CPU time of the calling thread", kGroup, kDim);
    std::printf("%-8s %7s", "format", "encode");
    for (int ctx : contexts)
      for (int threads : {1, 2}) std::printf("  %5dx%dt", ctx, threads);
    std::printf("  stream32Kx1t  stream32Kx2t  decode8Kx1t  decode8Kx2t\n");
    for (const std::string& f : formats) {
      std::printf("%-8s %7s", f.c_str(), ratio("encode/" + f, "encode/f16").c_str());
      for (int ctx : contexts)
        for (int threads : {1, 2}) {
          const std::string tail = "/ctx:" + std::to_string(ctx) + "/threads:" + std::to_string(threads) + "/real_time";
          std::printf("  %8s", ratio("attend/" + f + tail, "attend/f16" + tail).c_str());
        }
      for (int threads : {1, 2}) {
        const std::string tail = "/ctx:32768/threads:" + std::to_string(threads) + "/real_time";
        std::printf("  %12s", ratio("attend_stream/" + f + tail, "attend_stream/f16" + tail).c_str());
      }
      for (int threads : {1, 2}) {
        const std::string tail = "/ctx:8192/threads:" + std::to_string(threads) + "/real_time";
        std::printf("  %11s", ratio("attend_decode/" + f + tail, "attend_decode/f16" + tail).c_str());
      }
      std::printf("\n");
    }
  }
  return 0;
}
