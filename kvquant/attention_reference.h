// The plain scalar reference for attention on compressed rows: every row fully decoded (rotated back, center
// added) with RowCodec::DecodeRow, scores and softmax in double, two passes. Slow and simple; the kernels are tested
// against it.
#pragma once

#include <span>

#include "kvquant/kvquant.h"

namespace lr::kvquant {

// Same contract as AttendWith (kvquant/kernels.h) for valid input: shared_v_dim > 0 means V is the leading
// shared_v_dim values of K's rows. Asserts on invalid input.
void AttendReference(std::span<const CodedSpans> parts, int shared_v_dim, const float* q, int n_q, float scale,
                     float* out);

// Exact attention over uncompressed rows: K and V are n_rows × dim float rows. The target the formats are measured
// against (kv-eval, tests).
void AttendF32(const float* k, const float* v, int n_rows, int k_dim, int v_dim, const float* q, int n_q, float scale,
               float* out);

}  // namespace lr::kvquant
