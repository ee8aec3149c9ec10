#include "kvquant/attention_reference.h"

#include <cassert>
#include <cmath>
#include <vector>

namespace lr::kvquant {

void AttendF32(const float* k, const float* v, int n_rows, int k_dim, int v_dim, const float* q, int n_q, float scale,
               float* out) {
  assert(n_rows > 0 && n_q > 0);
  std::vector<double> s(n_rows);
  for (int i = 0; i < n_q; ++i) {
    const float* qi = q + static_cast<size_t>(i) * k_dim;
    double mx = -INFINITY;
    for (int t = 0; t < n_rows; ++t) {
      double dot = 0;
      for (int j = 0; j < k_dim; ++j) dot += static_cast<double>(qi[j]) * k[static_cast<size_t>(t) * k_dim + j];
      s[t] = scale * dot;
      mx = std::fmax(mx, s[t]);
    }
    double sum = 0;
    for (int t = 0; t < n_rows; ++t) sum += (s[t] = std::exp(s[t] - mx));
    for (int j = 0; j < v_dim; ++j) {
      double o = 0;
      for (int t = 0; t < n_rows; ++t) o += s[t] * v[static_cast<size_t>(t) * v_dim + j];
      out[static_cast<size_t>(i) * v_dim + j] = static_cast<float>(o / sum);
    }
  }
}

void AttendReference(std::span<const CodedSpans> parts, int shared_v_dim, const float* q, int n_q, float scale,
                     float* out) {
  assert(!parts.empty());
  const bool shared = shared_v_dim > 0;
  const int k_dim = parts[0].k->dim();
  const int v_dim = shared ? shared_v_dim : parts[0].v->dim();
  std::vector<float> kr, vr, row(k_dim), vrow(v_dim);
  int n = 0;
  for (const CodedSpans& part : parts) {
    const RowCodec& k = *part.k;
    assert(k.dim() == k_dim && (shared || part.v->dim() == v_dim));
    for (const RowSpan& sp : part.spans) {
      for (int t = 0; t < sp.n_rows; ++t, ++n) {
        k.DecodeRow(sp.k + t * k.row_bytes(), row.data(), sp.pos + t);
        kr.insert(kr.end(), row.begin(), row.end());
        if (shared) {
          vr.insert(vr.end(), row.begin(), row.begin() + v_dim);
        } else {
          part.v->DecodeRow(sp.v + t * part.v->row_bytes(), vrow.data(), sp.pos + t);
          vr.insert(vr.end(), vrow.begin(), vrow.end());
        }
      }
    }
  }
  AttendF32(kr.data(), vr.data(), n, k_dim, v_dim, q, n_q, scale, out);
}

}  // namespace lr::kvquant
