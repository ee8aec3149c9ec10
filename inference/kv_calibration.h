// Per-channel centers of a model's KV rows, which the compressed KV cache subtracts before encoding.
//
// Small models have key and value channels with large constant offsets. A rotating format (tq*, hx3, planar*, iso*)
// spreads such an offset over the whole block, so every code pays for it in scale. Storing k - mu_K and v - mu_V
// instead is exact for attention: q·(k - mu_K) = q·k - q·mu_K shifts every score of one query by the same constant,
// which the softmax ignores, and Σ_j p_j (v_j - mu_V) + mu_V = Σ_j p_j v_j because Σ_j p_j = 1 (kvquant::Attend adds
// mu_V to its output once). So any center is correct; a good one (the channel means) leaves small, zero-mean rows.
//
// The centers are a fixed function of the model: the mean key and value rows per (layer, KV head) over one prefill of
// a calibration text compiled into the binary (Lean 4 code and English, 567 tokens for SmolLM2) on an f16 cache,
// the first position left out (attention-sink tokens have atypical rows). Rows are what RowCodec::EncodeRow receives: after
// RoPE, before any rotation of the format. Prefix sharing and rebuilt caches rely on the determinism.
// Cost: that one prefill when a model is opened with a compressed format (see LocalModel::Open).
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "inference/kv_cache.h"

namespace lr::inference {

class Model;
class Tokenizer;

struct KvCenters {
  KvShape shape;
  std::vector<float> k;  // n_layer × n_head_kv × k_dim, [layer][head][channel]
  std::vector<float> v;  // n_layer × n_head_kv × v_dim; empty when v_dim is 0 (MLA)

  std::span<const float> K(int layer, int head) const {
    return {&k[(static_cast<size_t>(layer) * shape.n_head_kv + head) * shape.k_dim], static_cast<size_t>(shape.k_dim)};
  }
  std::span<const float> V(int layer, int head) const {
    return {&v[(static_cast<size_t>(layer) * shape.n_head_kv + head) * shape.v_dim], static_cast<size_t>(shape.v_dim)};
  }
};

// The calibration text.
std::string_view KvCalibrationText();

// Runs the calibration text through `model` (BOS first when the tokenizer asks for it) on a temporary f16 cache and
// averages its rows. Errors are the forward pass's.
Result<std::shared_ptr<const KvCenters>> ComputeKvCenters(Model& model, const Tokenizer& tokenizer);

}  // namespace lr::inference
