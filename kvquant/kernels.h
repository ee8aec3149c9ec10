// Attention kernels over compressed rows, one build per instruction set, chosen at run time.
//
// The same source (kernels_impl.inc) is compiled three times: for baseline x86-64 (Isa::kBaseline), AVX2+FMA+F16C and
// AVX-512 (base/cpu.h). Attend uses the best one this CPU runs; tests run every supported one against the scalar
// reference (attention_reference.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "base/cpu.h"
#include "base/status.h"
#include "kvquant/kvquant.h"

namespace lr::kvquant {

struct Kernels {
  // scores[i * n_rows + t] = q_i · ŷ_t, ŷ_t the rotated-domain reconstruction of row t (rows[t * stride]), for
  // i < n_q and t < n_rows; q holds n_q rows of k.dim() floats (already rotated and scaled).
  void (*score)(const RowCodec& k, const uint8_t* rows, size_t stride, int n_rows, const float* q, int n_q,
                float* scores);
  // acc[i * n + j] += Σ_t p[i * n_rows + t] · ŷ_t[j] for j < n (n = v.dim(), or the leading values of a shared
  // row, on a block boundary).
  void (*accumulate)(const RowCodec& v, const uint8_t* rows, size_t stride, int n_rows, int n, const float* p, int n_q,
                     float* acc);
  // *max := the larger of *max and every s[t]; then s[t] = exp(s[t] - *max) for t < n, and returns their sum (one
  // chunk of an online softmax). Relative error below 1e-6 per value.
  float (*exp_sum)(float* s, int n, float* max);
  // s[i * n + t] += Σ_j c[i * n_rows + j] · rows[j * stride + t] for i < n_q, t < n and j < n_rows: a few table
  // rows added into every query's scores with that query's coefficients (the rotating center's correction,
  // attention.cc).
  void (*add_rows)(const float* c, int n_q, const float* rows, int n_rows, int stride, int n, float* s);
};

// The kernels for `isa`, or nullptr when this CPU cannot run them.
const Kernels* GetKernels(Isa isa);

// Attention for one KV head group with the chosen kernels, over the parts in order (as AttendMixed). In each part K
// is its k's rows; V is its v's rows, or when shared_v_dim > 0 the leading shared_v_dim values of K's rows. Spans as
// in Attend; out is n_q × (v dim). n_threads > 1 splits the concatenated rows into that many pieces (AttendParallel).
Status AttendWith(const Kernels& kernels, std::span<const CodedSpans> parts, int shared_v_dim, const float* q, int n_q,
                  float scale, float* out, int n_threads);

namespace baseline {
const Kernels& Get();
}
namespace avx2 {
const Kernels& Get();
}
namespace avx512 {
const Kernels& Get();
}

}  // namespace lr::kvquant
