// Measuring a format: reconstruction and attention error on a set of K/V rows (`leanrotor kv-eval`).
//
// Data sets are (queries, K rows, V rows) of one head:
//   gaussian: K and V entries i.i.d. N(0,1).
//   outlier:  entries Student-t with 5 degrees of freedom (scaled to unit variance); in K, 4 fixed channels (chosen
//             from the seed) carry a large per-channel offset (10) plus 3·N(0,1), as in LLM keys.
//   rows:     captured from a model, read from a rows file (ReadRowsFile).
// Queries of the synthetic sets are 0.5·k_j + 0.5·N(0,1) for a random row j, so the softmax is neither uniform nor
// one-hot; a rows file without queries gets the same from its K rows.
//
// Rows file (little-endian): the 8 bytes "LRKVROWS", u32 version (1), u32 dim, u32 n_q, u32 n_rows, then float32
// Q (n_q × dim), K (n_rows × dim), V (n_rows × dim). n_q may be 0.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace lr::kvquant {

struct EvalData {
  std::string name;
  int dim = 0;
  int n_q = 0;
  int n_rows = 0;
  std::vector<float> q, k, v;  // n_q × dim, n_rows × dim, n_rows × dim
};

EvalData GaussianData(int dim, int n_rows, int n_q, uint64_t seed);
// Sets data.q to n_q queries 0.5·k_j + 0.5·N(0,1), j random (for rows captured without their queries).
void SynthesizeQueries(EvalData& data, int n_q, uint64_t seed);
EvalData OutlierData(int dim, int n_rows, int n_q, uint64_t seed);
// kIo if unreadable, kCorrupt (naming the file and field) if the header or size is wrong.
Result<EvalData> ReadRowsFile(const std::string& path, uint64_t seed);
// Writes a rows file atomically (for the runner's capture and for tests).
Status WriteRowsFile(const std::string& path, const EvalData& data);

struct EvalResult {
  std::string format;
  double bits_per_element = 0;  // 8 · row bytes / dim for this data's dim (scales included)
  std::string data;
  double mse = 0;       // Σ‖x - x̂‖² / Σ‖x‖² over all K and V rows (= per-coordinate MSE for N(0,1) data)
  double cosine = 0;    // mean cosine similarity of x and x̂ over all K and V rows
  double ip_error = 0;  // sqrt(Σ(q·k̂ - q·k)²) / sqrt(Σ(q·k)²) over all query/key pairs
  double attn_rel_error = 0;  // sqrt(Σ‖ô - o‖²) / sqrt(Σ‖o‖²), o exact attention (scale 1/√dim), ô via Attend
};

// Encodes the data's K and V with `format` (K as layer 0 head 0, V as layer 0 head 1, from `seed`), attends through
// Attend() over pages of 256 rows and compares with exact f32 results. kInvalidArgument for a bad format or dim.
Result<EvalResult> EvaluateFormat(std::string_view format, const EvalData& data, uint64_t seed);

}  // namespace lr::kvquant
