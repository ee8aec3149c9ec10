#include "kvquant/eval.h"

#include <cmath>
#include <cstring>
#include <random>

#include "base/file.h"
#include "kvquant/attention_reference.h"
#include "kvquant/kvquant.h"

namespace lr::kvquant {
namespace {

constexpr char kMagic[8] = {'L', 'R', 'K', 'V', 'R', 'O', 'W', 'S'};
constexpr int kPageRows = 256;

void AddQueries(EvalData& d, int n_q, std::mt19937_64& rng) {
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> pick(0, d.n_rows - 1);
  d.n_q = n_q;
  d.q.resize(static_cast<size_t>(n_q) * d.dim);
  for (int i = 0; i < n_q; ++i) {
    const float* kj = &d.k[static_cast<size_t>(pick(rng)) * d.dim];
    for (int c = 0; c < d.dim; ++c) d.q[i * d.dim + c] = 0.5f * kj[c] + 0.5f * normal(rng);
  }
}

}  // namespace

void SynthesizeQueries(EvalData& data, int n_q, uint64_t seed) {
  std::mt19937_64 rng(seed);
  AddQueries(data, n_q, rng);
}

EvalData GaussianData(int dim, int n_rows, int n_q, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  EvalData d{"gaussian", dim, 0, n_rows, {}, {}, {}};
  d.k.resize(static_cast<size_t>(n_rows) * dim);
  d.v.resize(d.k.size());
  for (float& x : d.k) x = normal(rng);
  for (float& x : d.v) x = normal(rng);
  AddQueries(d, n_q, rng);
  return d;
}

EvalData OutlierData(int dim, int n_rows, int n_q, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::student_t_distribution<float> t5(5.0f);
  std::normal_distribution<float> normal;
  const float unit = std::sqrt(3.0f / 5.0f);  // Var(t_5) = 5/3
  EvalData d{"outlier", dim, 0, n_rows, {}, {}, {}};
  d.k.resize(static_cast<size_t>(n_rows) * dim);
  d.v.resize(d.k.size());
  for (float& x : d.k) x = unit * t5(rng);
  for (float& x : d.v) x = unit * t5(rng);
  std::uniform_int_distribution<int> channel(0, dim - 1);
  for (int o = 0; o < 4; ++o) {
    const int c = channel(rng);
    for (int t = 0; t < n_rows; ++t) d.k[static_cast<size_t>(t) * dim + c] = 10.0f + 3.0f * normal(rng);
  }
  AddQueries(d, n_q, rng);
  return d;
}

Result<EvalData> ReadRowsFile(const std::string& path, uint64_t seed) {
  LR_ASSIGN_OR_RETURN(std::string bytes, ReadFile(path));
  auto u32 = [&](size_t at) {
    uint32_t x;
    std::memcpy(&x, bytes.data() + at, 4);
    return x;
  };
  if (bytes.size() < 24 || std::memcmp(bytes.data(), kMagic, 8) != 0)
    return Corrupt(path + ": not a K/V rows file; expected the magic \"LRKVROWS\" and a 24-byte header");
  if (u32(8) != 1) return Corrupt(path + ": version " + std::to_string(u32(8)) + "; expected 1");
  const uint64_t dim = u32(12), n_q = u32(16), n_rows = u32(20);
  if (dim == 0 || dim > 4096 || n_rows == 0 || n_rows > (1u << 24) || n_q > (1u << 16))
    return Corrupt(path + ": header dim " + std::to_string(dim) + ", n_q " + std::to_string(n_q) + ", n_rows " +
                   std::to_string(n_rows) + "; expected dim 1..4096, n_rows 1..2^24, n_q 0..65536");
  const uint64_t want = 24 + 4 * dim * (n_q + 2 * n_rows);
  if (bytes.size() != want)
    return Corrupt(path + ": " + std::to_string(bytes.size()) + " bytes; the header (dim " + std::to_string(dim) +
                   ", n_q " + std::to_string(n_q) + ", n_rows " + std::to_string(n_rows) + ") needs " +
                   std::to_string(want));
  EvalData d{"rows", static_cast<int>(dim), static_cast<int>(n_q), static_cast<int>(n_rows), {}, {}, {}};
  const float* f = reinterpret_cast<const float*>(bytes.data() + 24);
  d.q.assign(f, f + n_q * dim);
  d.k.assign(f + n_q * dim, f + (n_q + n_rows) * dim);
  d.v.assign(f + (n_q + n_rows) * dim, f + (n_q + 2 * n_rows) * dim);
  for (float x : d.k)
    if (!std::isfinite(x)) return Corrupt(path + ": a K value is not finite");
  for (float x : d.v)
    if (!std::isfinite(x)) return Corrupt(path + ": a V value is not finite");
  if (n_q == 0) SynthesizeQueries(d, 16, seed);
  return d;
}

Status WriteRowsFile(const std::string& path, const EvalData& d) {
  std::string bytes(kMagic, 8);
  const uint32_t header[4] = {1, static_cast<uint32_t>(d.dim), static_cast<uint32_t>(d.n_q),
                              static_cast<uint32_t>(d.n_rows)};
  bytes.append(reinterpret_cast<const char*>(header), sizeof(header));
  for (const std::vector<float>* part : {&d.q, &d.k, &d.v})
    bytes.append(reinterpret_cast<const char*>(part->data()), part->size() * sizeof(float));
  return WriteFileAtomic(path, bytes);
}

Result<EvalResult> EvaluateFormat(std::string_view format, const EvalData& d, uint64_t seed) {
  LR_ASSIGN_OR_RETURN(RowCodec kc, RowCodec::Create(format, d.dim, seed, 0, 0));
  LR_ASSIGN_OR_RETURN(RowCodec vc, RowCodec::Create(format, d.dim, seed, 0, 1));
  const size_t dim = d.dim;
  std::vector<uint8_t> kb(kc.row_bytes() * d.n_rows), vb(vc.row_bytes() * d.n_rows);
  std::vector<float> kh(d.k.size()), vh(d.v.size());
  double err = 0, norm = 0, cos_sum = 0;
  auto measure = [&](const float* x, const float* xh) {
    double e = 0, n = 0, nh = 0, dot = 0;
    for (size_t c = 0; c < dim; ++c) {
      e += (x[c] - xh[c]) * static_cast<double>(x[c] - xh[c]);
      n += static_cast<double>(x[c]) * x[c];
      nh += static_cast<double>(xh[c]) * xh[c];
      dot += static_cast<double>(x[c]) * xh[c];
    }
    err += e, norm += n;
    cos_sum += (n > 0 && nh > 0) ? dot / std::sqrt(n * nh) : (n == nh ? 1.0 : 0.0);
  };
  for (int t = 0; t < d.n_rows; ++t) {
    kc.EncodeRow(&d.k[t * dim], &kb[t * kc.row_bytes()]);
    kc.DecodeRow(&kb[t * kc.row_bytes()], &kh[t * dim]);
    vc.EncodeRow(&d.v[t * dim], &vb[t * vc.row_bytes()]);
    vc.DecodeRow(&vb[t * vc.row_bytes()], &vh[t * dim]);
    measure(&d.k[t * dim], &kh[t * dim]);
    measure(&d.v[t * dim], &vh[t * dim]);
  }
  EvalResult r;
  r.format = std::string(format);
  r.bits_per_element = 8.0 * kc.row_bytes() / d.dim;
  r.data = d.name;
  r.mse = norm > 0 ? err / norm : 0;
  r.cosine = cos_sum / (2.0 * d.n_rows);

  double ip_err = 0, ip_norm = 0;
  for (int i = 0; i < d.n_q; ++i) {
    for (int t = 0; t < d.n_rows; ++t) {
      double exact = 0, approx = 0;
      for (size_t c = 0; c < dim; ++c) {
        exact += static_cast<double>(d.q[i * dim + c]) * d.k[t * dim + c];
        approx += static_cast<double>(d.q[i * dim + c]) * kh[t * dim + c];
      }
      ip_err += (approx - exact) * (approx - exact);
      ip_norm += exact * exact;
    }
  }
  r.ip_error = ip_norm > 0 ? std::sqrt(ip_err / ip_norm) : 0;

  const float scale = 1.0f / std::sqrt(static_cast<float>(d.dim));
  std::vector<RowSpan> spans;
  for (int t = 0; t < d.n_rows; t += kPageRows)
    spans.push_back({&kb[t * kc.row_bytes()], &vb[t * vc.row_bytes()], std::min(kPageRows, d.n_rows - t)});
  std::vector<float> exact(static_cast<size_t>(d.n_q) * dim), approx(exact.size());
  AttendF32(d.k.data(), d.v.data(), d.n_rows, d.dim, d.dim, d.q.data(), d.n_q, scale, exact.data());
  LR_RETURN_IF_ERROR(Attend(kc, vc, d.q.data(), d.n_q, spans, scale, approx.data()));
  double ae = 0, an = 0;
  for (size_t j = 0; j < exact.size(); ++j) {
    ae += (approx[j] - exact[j]) * static_cast<double>(approx[j] - exact[j]);
    an += static_cast<double>(exact[j]) * exact[j];
  }
  r.attn_rel_error = an > 0 ? std::sqrt(ae / an) : 0;
  return r;
}

}  // namespace lr::kvquant
