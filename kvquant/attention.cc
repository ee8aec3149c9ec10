// Attend / AttendSharedKV / AttendParallel: argument checks, query rotation, chunked streaming softmax and the merge
// of per-thread partial results. The per-row work is in the kernels (kernels_impl.inc).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kvquant/kernels.h"

namespace lr::kvquant {
namespace {

constexpr int kChunkRows = 64;  // rows scored before their softmax weights are applied to V

// A contiguous run of rows from one span.
struct Piece {
  const uint8_t* k;
  const uint8_t* v;
  int n_rows;
};

// Streaming-softmax state of one query: running max m, running sum l of exp(s - m), and Σ exp(s - m)·v in acc.
struct Partial {
  std::vector<float> m, l, acc;
  Partial(int n_q, int v_dim) : m(n_q, -INFINITY), l(n_q, 0.0f), acc(static_cast<size_t>(n_q) * v_dim, 0.0f) {}
};

void Process(const Kernels& kn, const RowCodec& k, const RowCodec& v, int v_dim, const float* qr, int n_q,
             std::span<const Piece> pieces, Partial& st) {
  float scores[kChunkRows * 64];
  std::vector<float> big;
  float* s = scores;
  if (n_q > 64) {
    big.resize(static_cast<size_t>(kChunkRows) * n_q);
    s = big.data();
  }
  for (const Piece& pc : pieces) {
    for (int t0 = 0; t0 < pc.n_rows; t0 += kChunkRows) {
      const int n = std::min(kChunkRows, pc.n_rows - t0);
      kn.score(k, pc.k + t0 * k.row_bytes(), k.row_bytes(), n, qr, n_q, s);
      for (int i = 0; i < n_q; ++i) {
        float* si = s + i * n;
        float mx = st.m[i];
        for (int t = 0; t < n; ++t) mx = std::max(mx, si[t]);
        const float factor = std::exp(st.m[i] - mx);  // 0 on the first chunk (m = -inf)
        st.m[i] = mx;
        st.l[i] = st.l[i] * factor + kn.exp_sum(si, n, mx);
        if (factor != 1.0f)
          for (int j = 0; j < v_dim; ++j) st.acc[i * v_dim + j] *= factor;
      }
      kn.accumulate(v, pc.v + t0 * v.row_bytes(), v.row_bytes(), n, v_dim, s, n_q, st.acc.data());
    }
  }
}

}  // namespace

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kGeneric: return "generic";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

const Kernels* GetKernels(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return &generic::Get();
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? &avx2::Get() : nullptr;
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")
                 ? &avx512::Get()
                 : nullptr;
  }
  return nullptr;
}

Isa BestIsa() {
  static const Isa best = GetKernels(Isa::kAvx512) ? Isa::kAvx512 : GetKernels(Isa::kAvx2) ? Isa::kAvx2 : Isa::kGeneric;
  return best;
}

Status AttendWith(const Kernels& kn, const RowCodec& k, const RowCodec& v, int shared_v_dim, const float* q,
                  int n_q, std::span<const RowSpan> spans, float scale, float* out, int n_threads) {
  if (n_q < 1) return InvalidArgument("attention: n_q is " + std::to_string(n_q) + "; expected at least 1 query");
  const bool shared = shared_v_dim > 0;
  const int v_dim = shared ? shared_v_dim : v.dim();
  int total = 0;
  std::vector<Piece> pieces;
  for (size_t i = 0; i < spans.size(); ++i) {
    const RowSpan& sp = spans[i];
    if (sp.n_rows < 0 || (sp.n_rows > 0 && (sp.k == nullptr || (!shared && sp.v == nullptr))))
      return InvalidArgument("attention: span " + std::to_string(i) + " has n_rows " + std::to_string(sp.n_rows) +
                             " or a null row pointer; expected n_rows >= 0 and rows for K" +
                             (shared ? "" : " and V"));
    if (sp.n_rows == 0) continue;
    pieces.push_back({sp.k, shared ? sp.k : sp.v, sp.n_rows});
    total += sp.n_rows;
  }
  if (total == 0)
    return InvalidArgument("attention: the range is empty (" + std::to_string(spans.size()) +
                           " spans, 0 rows); expected at least one row");

  // Rotate the queries into K's stored domain once, with the softmax scale folded in.
  const int kdim = k.dim();
  std::vector<float> qr(static_cast<size_t>(n_q) * kdim);
  for (int i = 0; i < n_q; ++i) {
    k.rotation().Apply(q + i * kdim, &qr[i * kdim]);
    for (int j = 0; j < kdim; ++j) qr[i * kdim + j] *= scale;
  }

  n_threads = std::max(1, std::min(n_threads, total));
  std::vector<Partial> parts(n_threads, Partial(n_q, v_dim));
  if (n_threads == 1) {
    Process(kn, k, v, v_dim, qr.data(), n_q, pieces, parts[0]);
  } else {
    // Thread p takes rows [p * per, (p + 1) * per) of the concatenated range.
    const int per = (total + n_threads - 1) / n_threads;
    std::vector<std::vector<Piece>> split(n_threads);
    int pos = 0;
    for (const Piece& pc : pieces) {
      for (int t = 0; t < pc.n_rows;) {
        const int p = pos / per;
        const int take = std::min(pc.n_rows - t, (p + 1) * per - pos);
        split[p].push_back({pc.k + t * k.row_bytes(), pc.v + t * (shared ? k.row_bytes() : v.row_bytes()), take});
        t += take;
        pos += take;
      }
    }
#pragma omp parallel for num_threads(n_threads) schedule(static, 1)
    for (int p = 0; p < n_threads; ++p) Process(kn, k, v, v_dim, qr.data(), n_q, split[p], parts[p]);
    // Merge: rescale every partial to the common max and add.
    for (int p = 1; p < n_threads; ++p) {
      for (int i = 0; i < n_q; ++i) {
        const float m = std::max(parts[0].m[i], parts[p].m[i]);
        if (m == -INFINITY) continue;
        const float f0 = std::exp(parts[0].m[i] - m), fp = std::exp(parts[p].m[i] - m);
        parts[0].l[i] = parts[0].l[i] * f0 + parts[p].l[i] * fp;
        for (int j = 0; j < v_dim; ++j)
          parts[0].acc[i * v_dim + j] = parts[0].acc[i * v_dim + j] * f0 + parts[p].acc[i * v_dim + j] * fp;
        parts[0].m[i] = m;
      }
    }
  }

  // Rotate back and add V's center (the leading v_dim values of the shared rows' center): Σ p_j = 1.
  const Rotation& vrot = shared ? k.rotation() : v.rotation();
  const std::span<const float> center = shared ? k.center() : v.center();
  for (int i = 0; i < n_q; ++i) {
    const float inv = 1.0f / parts[0].l[i];
    float* o = out + i * v_dim;
    for (int j = 0; j < v_dim; ++j) o[j] = parts[0].acc[i * v_dim + j] * inv;
    vrot.Invert(o, o, v_dim);
    if (!center.empty())
      for (int j = 0; j < v_dim; ++j) o[j] += center[j];
  }
  return Status::Ok();
}

Status Attend(const RowCodec& k, const RowCodec& v, const float* q, int n_q, std::span<const RowSpan> spans,
              float scale, float* out) {
  return AttendWith(*GetKernels(BestIsa()), k, v, 0, q, n_q, spans, scale, out, 1);
}

Status AttendParallel(const RowCodec& k, const RowCodec& v, const float* q, int n_q, std::span<const RowSpan> spans,
                      float scale, float* out, int n_threads) {
  return AttendWith(*GetKernels(BestIsa()), k, v, 0, q, n_q, spans, scale, out, n_threads);
}

Status AttendSharedKV(const RowCodec& kv, int v_dim, const float* q, int n_q, std::span<const RowSpan> spans,
                      float scale, float* out) {
  bool on_block = kv.is_f16() || v_dim == kv.dim();
  for (const BlockLayout& b : kv.blocks()) on_block = on_block || b.begin == v_dim;
  if (v_dim < 1 || v_dim > kv.dim() || !on_block || !kv.rotation().IsBoundary(v_dim))
    return InvalidArgument("attention with shared K/V rows: v_dim " + std::to_string(v_dim) + " with format " +
                           std::string(kv.format().name) + " and row dim " + std::to_string(kv.dim()) +
                           "; expected 1..dim ending on a block boundary and a rotation segment boundary");
  return AttendWith(*GetKernels(BestIsa()), kv, kv, v_dim, q, n_q, spans, scale, out, 1);
}

}  // namespace lr::kvquant
