// The real default model in the tests that run it (label `model`): its path, opening it, and the small helpers
// those tests share. scripts/setup.sh puts the model in models/.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "inference/local_model.h"

namespace lr::inference {

inline const std::string kDefaultModel = std::string(LR_SOURCE_DIR) + "/models/SmolLM2-135M-Instruct.Q4_1.gguf";

// Null (and a test failure) when it cannot be opened.
inline std::unique_ptr<LocalModel> OpenDefaultModel(int n_ctx = 512, int kv_budget_mib = 64) {
  LocalModelOptions o;
  o.path = kDefaultModel;
  o.n_ctx = n_ctx;
  o.kv_budget_mib = kv_budget_mib;
  Result<std::unique_ptr<LocalModel>> lm = LocalModel::Open(o);
  EXPECT_TRUE(lm.ok()) << lm.status().ToString();
  return lm.ok() ? std::move(lm).value() : nullptr;
}

inline std::vector<int32_t> Encode(const LocalModel& lm, const std::string& text) {
  return lm.tokenizer().Encode(text, /*parse_special=*/false);
}

inline SamplingParams Greedy(int max_tokens) {
  SamplingParams p;
  p.temperature = 0.0f;
  p.max_tokens = max_tokens;
  return p;
}

}  // namespace lr::inference
