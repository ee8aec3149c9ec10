// Tokenizer speed: encoding Lean text (the prompts leanrotor builds are a few KB), one long word (the worst case for
// BPE merging), decoding, and loading. Uses the default model and models/tekken_240911.json (scripts/setup.sh);
// a benchmark whose file is missing reports an error instead of a number.
#include <benchmark/benchmark.h>

#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "inference/gguf.h"
#include "inference/tokenizer.h"

namespace lr::inference {
namespace {

const std::string kRoot = LR_SOURCE_DIR;
const std::string kModel = kRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
const std::string kTekken = kRoot + "/models/tekken_240911.json";

// About `bytes` of real Lean: statements and proofs from the few-shot set, concatenated.
std::string LeanText(size_t bytes) {
  std::ifstream in(kRoot + "/../shared/data/minif2f_valid_few_shot.jsonl");
  std::string line, out;
  while (out.size() < bytes && std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    out += j["informal_prefix"].get<std::string>() + j["formal_statement"].get<std::string>() +
           j["formal_proof"].get<std::string>() + "\n\n";
  }
  return out.substr(0, std::min(out.size(), bytes));
}

const Tokenizer* SmolLM2() {
  static std::unique_ptr<Tokenizer> t = [] {
    std::unique_ptr<Tokenizer> r;
    auto f = GgufFile::Open(kModel);
    if (!f.ok()) return r;
    auto tok = Tokenizer::FromGguf(*f);
    if (tok.ok()) r = std::make_unique<Tokenizer>(std::move(tok).value());
    return r;
  }();
  return t.get();
}

const Tokenizer* Tekken() {
  static std::unique_ptr<Tokenizer> t = [] {
    std::unique_ptr<Tokenizer> r;
    auto tok = Tokenizer::FromTekkenJson(kTekken);
    if (tok.ok()) r = std::make_unique<Tokenizer>(std::move(tok).value());
    return r;
  }();
  return t.get();
}

void Encode(benchmark::State& state, const Tokenizer* t, const std::string& text) {
  if (t == nullptr || text.empty()) {
    state.SkipWithError("tokenizer file or Lean data missing (run scripts/setup.sh)");
    return;
  }
  size_t tokens = 0;
  for (auto _ : state) {
    std::vector<int32_t> ids = t->Encode(text, true);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
  state.counters["tokens"] = static_cast<double>(tokens);
  state.counters["bytes"] = static_cast<double>(text.size());
}

void BM_EncodeLean_SmolLM2(benchmark::State& state) {
  Encode(state, SmolLM2(), LeanText(static_cast<size_t>(state.range(0))));
}
BENCHMARK(BM_EncodeLean_SmolLM2)->Arg(1 << 10)->Arg(4 << 10)->Arg(16 << 10)->Unit(benchmark::kMicrosecond);

void BM_EncodeLean_Tekken(benchmark::State& state) {
  Encode(state, Tekken(), LeanText(static_cast<size_t>(state.range(0))));
}
BENCHMARK(BM_EncodeLean_Tekken)->Arg(1 << 10)->Arg(4 << 10)->Arg(16 << 10)->Unit(benchmark::kMicrosecond);

// One word with no split point: every merge happens inside one piece.
void BM_EncodeOneLongWord_SmolLM2(benchmark::State& state) {
  std::string word;
  const char* syllables[] = {"lean", "rot", "or", "theo", "rem", "succ", "le", "mul", "comm"};
  for (size_t i = 0; word.size() < static_cast<size_t>(state.range(0)); ++i) word += syllables[(i * 7 + 3) % 9];
  Encode(state, SmolLM2(), word);
}
BENCHMARK(BM_EncodeOneLongWord_SmolLM2)->Arg(1 << 10)->Arg(4 << 10)->Arg(16 << 10)->Unit(benchmark::kMicrosecond);

void BM_Decode_SmolLM2(benchmark::State& state) {
  const Tokenizer* t = SmolLM2();
  std::string text = LeanText(4 << 10);
  if (t == nullptr || text.empty()) {
    state.SkipWithError("default model or Lean data missing");
    return;
  }
  std::vector<int32_t> ids = t->Encode(text, true);
  for (auto _ : state) {
    std::string s = t->Decode(ids);
    benchmark::DoNotOptimize(s.data());
  }
  state.counters["tokens"] = static_cast<double>(ids.size());
}
BENCHMARK(BM_Decode_SmolLM2)->Unit(benchmark::kMicrosecond);

void BM_Load_SmolLM2(benchmark::State& state) {
  for (auto _ : state) {
    auto f = GgufFile::Open(kModel);
    if (!f.ok()) {
      state.SkipWithError(f.status().ToString().c_str());
      return;
    }
    auto t = Tokenizer::FromGguf(*f);
    benchmark::DoNotOptimize(t.ok());
  }
}
BENCHMARK(BM_Load_SmolLM2)->Unit(benchmark::kMillisecond);

void BM_Load_Tekken(benchmark::State& state) {
  for (auto _ : state) {
    auto t = Tokenizer::FromTekkenJson(kTekken);
    if (!t.ok()) {
      state.SkipWithError(t.status().ToString().c_str());
      return;
    }
  }
}
BENCHMARK(BM_Load_Tekken)->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace
}  // namespace lr::inference

BENCHMARK_MAIN();
