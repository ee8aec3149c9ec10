// Per-channel centers and weights of a model's KV rows, relative to which the compressed KV cache stores them.
//
// Centers. Small models have key and value channels with large constant offsets. A rotating format (tq*, hx3,
// planar*, iso*) spreads such an offset over the whole block, so every code pays for it in scale. Storing k - mu_K
// and v - mu_V instead is exact for attention: q·(k - mu_K) = q·k - q·mu_K shifts every score of one query by the
// same constant, which the softmax ignores, and Σ_j p_j (v_j - mu_V) + mu_V = Σ_j p_j v_j because Σ_j p_j = 1
// (kvquant::Attend adds mu_V to its output once). So any center is correct; a good one (the channel means) leaves
// small, zero-mean rows.
//
// Rotating centers (kvquant.h). Keys are stored after RoPE, which turns each channel pair by an angle that grows with
// the position: a pair with a constant offset c before RoPE carries R(pos)·c after it. A fixed center cannot remove
// that, and the mean of such a pair over a context depends on the context's length (docs/RESULTS.md, centering at
// context 2048). So for the key pairs whose offset before RoPE is large (at least 1% of the rows' spread, the 8
// largest at most), the rows are stored less R(pos)·c, with c the mean of the calibration rows turned back by their
// angles; attention adds q·R(pos)·c back per row. The fixed center is then the mean of what remains.
//
// Weights (kvquant.h, "Channel weights"). Rows are stored as (x - mu) * w and attention undoes w exactly, so the
// weights only decide where a format's rounding error lands. A rotating format spreads it evenly over the stored
// channels; the error that matters is the key error along the queries and the value error along the output
// projection. So a key channel is weighted by how much query energy meets how little key energy,
// w_c = (E[q_c²] / E[(k_c - mu_c)²])^a, and a value channel by the energy of its columns of attn_output (summed over
// the query heads that read it) over its own, w_c = (Σ W_o[:, c]² / E[(v_c - mu_c)²])^b; each head's weights are
// scaled to a geometric mean of 1. The error-optimal exponent for isotropic rounding is 1/4; measured on Lean text
// (the few-shot proofs of ../shared/data, -c 512, 4 windows) lower ones are better: a = 0.15, b = 0.2
// (docs/RESULTS.md). Models whose value rows are part of the key row (MLA) get no weights.
//
// Both are a fixed function of the model, measured on one prefill of a calibration text (inference/data/
// kv_calibration.txt, compiled into the binary; a longer, more varied text measures better: docs/RESULTS.md) on an
// f16 cache, the first position left out of the row statistics (attention-sink tokens have atypical rows).
// Rows are what RowCodec::EncodeRow receives: after RoPE, before any rotation of the format; queries are what
// KvCache::Attend receives. Prefix sharing and rebuilt caches rely on the determinism. Cost: that one prefill when a
// model is opened with a compressed format (see LocalModel::Open), seconds on a small model and minutes on a large
// one on a CPU; so it is stored once computed.
//
// Stored calibrations (CachedKvCalibration). A calibration depends on the model file and on this computation only
// (the prefill runs on an f16 cache whatever formats the caller uses, so one file serves every KV format). It is
// stored in a cache directory as kvcal-v<kKvCalibrationVersion>-<model fingerprint>-<text hash>.bin, written
// atomically, and loaded by later opens of the same model. The model fingerprint hashes the file's size, its first
// 4 MiB (the GGUF header, metadata and tensor table) and 64 KiB at 64 evenly spaced places of the rest, so a changed
// model file gets a new calibration without the file being read whole. A stored file that cannot be read, is
// damaged, or does not fit the model is an error naming it (kCorrupt; delete the file to compute it again).
#pragma once

#include <atomic>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "inference/kv_shape.h"
#include "kvquant/kvquant.h"

namespace lr::inference {

class Model;
class Tokenizer;

struct KvCalibration {
  KvShape shape;
  // [layer][head][channel]: n_layer × n_head_kv × k_dim (keys) or v_dim (values; empty when v_dim is 0, MLA).
  std::vector<float> k_center, v_center;
  // Same layout; empty: no weights.
  std::vector<float> k_weights, v_weights;
  // [layer * n_head_kv + head]: the key rows' rotating center (empty: none), or empty for all.
  std::vector<std::vector<kvquant::RotatingCenter>> k_rotating_center;

  std::span<const float> KCenter(int layer, int head) const { return Slice(k_center, shape.k_dim, layer, head); }
  std::span<const float> VCenter(int layer, int head) const { return Slice(v_center, shape.v_dim, layer, head); }
  // Empty spans when there are no weights.
  std::span<const float> KWeights(int layer, int head) const { return Slice(k_weights, shape.k_dim, layer, head); }
  std::span<const float> VWeights(int layer, int head) const { return Slice(v_weights, shape.v_dim, layer, head); }
  std::span<const kvquant::RotatingCenter> KRotatingCenter(int layer, int head) const {
    if (k_rotating_center.empty()) return {};
    return k_rotating_center[static_cast<size_t>(layer) * shape.n_head_kv + head];
  }

 private:
  std::span<const float> Slice(const std::vector<float>& v, int dim, int layer, int head) const {
    if (v.empty()) return {};
    return {&v[(static_cast<size_t>(layer) * shape.n_head_kv + head) * dim], static_cast<size_t>(dim)};
  }
};

// The calibration text: Lean 4 statements and tactic proofs, checker messages and English about them, and English of
// other kinds (rules, mathematics, a story), since rows and queries differ between kinds of text.
std::string_view KvCalibrationText();

// Runs the calibration text through `model` (BOS first when the tokenizer asks for it) on a temporary f16 cache and
// measures its rows and queries. Errors are the forward pass's, kCorrupt naming an attn_output tensor that is not
// n_embd rows of n_head * v_dim, or kCancelled soon after `cancel` (may be null) is set: the prefill runs in chunks
// and checks it between them.
Result<std::shared_ptr<const KvCalibration>> ComputeKvCalibration(Model& model, const Tokenizer& tokenizer,
                                                                  const std::atomic<bool>* cancel = nullptr);

// Raise when the computation (or what a stored file holds) changes: stored calibrations of other versions are then
// not used.
inline constexpr int kKvCalibrationVersion = 1;

// Where calibrations are stored by default: $LEANROTOR_CACHE_DIR, else $XDG_CACHE_HOME/leanrotor, else
// $HOME/.cache/leanrotor; empty when none of these is set.
std::string DefaultCacheDir();

// The stored file of the model at `gguf_path` in `cache_dir` (see above). kIo when the model file cannot be read.
Result<std::string> KvCalibrationPath(const std::string& cache_dir, const std::string& gguf_path);

// Writes `calibration` to `path` atomically (base/file.h), creating its directory.
Status SaveKvCalibration(const KvCalibration& calibration, const std::string& path);
// Reads a stored calibration; kCorrupt naming `path` when it is damaged or its shape is not `shape`.
Result<std::shared_ptr<const KvCalibration>> LoadKvCalibration(const std::string& path, const KvShape& shape);

// The calibration of `model` (the GGUF file at model.gguf().path()): loaded from `cache_dir` when stored there, else
// computed (cancellable, as ComputeKvCalibration) and stored. `loaded` (may be null) says which. An empty cache_dir
// computes without storing.
Result<std::shared_ptr<const KvCalibration>> CachedKvCalibration(Model& model, const Tokenizer& tokenizer,
                                                                 const std::string& cache_dir,
                                                                 const std::atomic<bool>* cancel, bool* loaded);

}  // namespace lr::inference
