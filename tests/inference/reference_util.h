// Helpers shared by the reference tests (reference_test.cc: tiny random-weight models; reference_model_test.cc: the
// real default model): reading the fixtures of tests/fixtures/models/ (made by scripts/make_model_fixtures.py, see
// the README there) and running token sequences through the runner.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "inference/kv_cache.h"
#include "inference/model.h"

namespace lr::inference::testing {

inline std::string FixturePath(const std::string& file) {
  return std::string(LR_SOURCE_DIR) + "/tests/fixtures/models/" + file;
}

// The parsed JSON file, or an empty object with a test failure naming the file.
inline nlohmann::json ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    ADD_FAILURE() << "cannot read " << path;
    return nlohmann::json::object();
  }
  return nlohmann::json::parse(in);
}

// A raw little-endian float32 file (the fixtures' logits) of exactly `count` values.
inline std::vector<float> ReadF32File(const std::string& path, size_t count) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() != count * sizeof(float)) {
    ADD_FAILURE() << path << ": " << bytes.size() << " bytes, expected " << count * sizeof(float);
    return {};
  }
  std::vector<float> out(count);
  std::memcpy(out.data(), bytes.data(), bytes.size());
  return out;
}

// Appends `tokens` to sequence `seq` in Forward() calls of `chunk` tokens (the last may be shorter) and returns the
// logits of every token (n_vocab each, in order).
inline Result<std::vector<float>> RunInChunks(ForwardPass& model, KvCache& cache, int seq,
                                              std::span<const int32_t> tokens, size_t chunk) {
  std::vector<float> all, step;
  std::vector<BatchToken> batch;
  for (size_t i = 0; i < tokens.size(); ++i) {
    batch.push_back({seq, tokens[i], true});
    if (batch.size() < chunk && i + 1 < tokens.size()) continue;
    LR_RETURN_IF_ERROR(model.Forward(cache, batch, &step));
    all.insert(all.end(), step.begin(), step.end());
    batch.clear();
  }
  return all;
}

// RunInChunks with `one_at_a_time` each token its own Forward() call (the decode path), else all in one batch
// (prefill).
inline Result<std::vector<float>> RunSequence(ForwardPass& model, KvCache& cache, int seq,
                                              std::span<const int32_t> tokens, bool one_at_a_time) {
  return RunInChunks(model, cache, seq, tokens, one_at_a_time ? 1 : tokens.size());
}

// max over the row of |got - want|, divided by max |want|: the per-position relative error the fixtures are held to.
inline double RowRelError(const float* got, const float* want, int n) {
  double diff = 0, scale = 0;
  for (int i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
  }
  return diff / scale;
}

inline int ArgMax(const float* x, int n) { return static_cast<int>(std::max_element(x, x + n) - x); }

}  // namespace lr::inference::testing
