// Attend / AttendSharedKV / AttendParallel: argument checks, query rotation, chunked streaming softmax and the merge
// of per-thread partial results. The per-row work is in the kernels (kernels_impl.inc).
#include <omp.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <string>
#include <vector>

#include "kvquant/kernels.h"

namespace lr::kvquant {
namespace {

constexpr int kChunkRows = 64;  // rows scored before their softmax weights are applied to V
static_assert(kChunkRows <= RowCodec::kRotatingTableRows, "AddRotatingCenter turns chunks with the codec's table");

// A contiguous run of rows from one span, the first at position pos.
struct Piece {
  const uint8_t* k;
  const uint8_t* v;
  int n_rows;
  int pos;
};

// The angles pos·theta of a key codec's rotating-center pairs at the first row of the chunk being scored, as
// (cos, sin) in double. Chunks come in increasing positions; a chunk less than kRotatingTableRows past the last one
// turns the last angles by the codec's table (no sin/cos), and every kMaxTurns turns, or after a jump, they are
// computed afresh, which bounds the drift of the float table's rounding to about 1e-6.
struct ChunkAngles {
  static constexpr int kMaxTurns = 16;
  int pos = -1;
  int turns = 0;
  double cos[RowCodec::kMaxRotatingPairs], sin[RowCodec::kMaxRotatingPairs];

  void MoveTo(const RowCodec& k, int to) {
    constexpr int kRows = RowCodec::kRotatingTableRows;
    const std::span<const RotatingCenter> pairs = k.rotating_center();
    const int n_pairs = static_cast<int>(pairs.size());
    const int step = to - pos;
    if (pos >= 0 && step >= 0 && step < kRows && turns < kMaxTurns) {
      for (int p = 0; p < n_pairs; ++p) {
        const double c = k.rotating_table()[(2 * p) * kRows + step], s = k.rotating_table()[(2 * p + 1) * kRows + step];
        const double x = cos[p], y = sin[p];
        cos[p] = x * c - y * s;
        sin[p] = y * c + x * s;
      }
      ++turns;
    } else {
      for (int p = 0; p < n_pairs; ++p) {
        const double x = static_cast<double>(to) * pairs[p].theta;
        cos[p] = std::cos(x);
        sin[p] = std::sin(x);
      }
      turns = 0;
    }
    pos = to;
  }
};

// Adds to the scores s[i * n + t] of n <= kRotatingTableRows rows at positions pos.. what the key codec's rotating
// center took off them: scale·q_i·u(pos + t). center_coefs: per query and pair, a = scale·(q_a c_a + q_b c_b) and
// b = scale·(q_b c_a - q_a c_b), so that the term is Σ_pairs a cos(x + y) + b sin(x + y) with x = pos·theta and
// y = t·theta, i.e. (a cos x + b sin x) cos y + (b cos x - a sin x) sin y: x from the chunk angles, y from the
// codec's table, whose rows the kernel adds with those coefficients.
void AddRotatingCenter(const Kernels& kernels, const RowCodec& k, const float* center_coefs, int n_q, int pos, int n,
                       ChunkAngles& angles, float* s) {
  constexpr int kRows = RowCodec::kRotatingTableRows;
  const int n_pairs = static_cast<int>(k.rotating_center().size());
  angles.MoveTo(k, pos);
  thread_local std::vector<float> c;
  c.resize(static_cast<size_t>(n_q) * 2 * n_pairs);
  for (int i = 0; i < n_q; ++i) {
    const float* center_coefs_i = center_coefs + static_cast<size_t>(i) * n_pairs * 2;
    float* c_i = &c[static_cast<size_t>(i) * n_pairs * 2];
    for (int p = 0; p < n_pairs; ++p) {
      const double a = center_coefs_i[2 * p], b = center_coefs_i[2 * p + 1], cx = angles.cos[p], sx = angles.sin[p];
      c_i[2 * p] = static_cast<float>(a * cx + b * sx);
      c_i[2 * p + 1] = static_cast<float>(b * cx - a * sx);
    }
  }
  kernels.add_rows(c.data(), n_q, k.rotating_table().data(), 2 * n_pairs, kRows, n, s);
}

// In the runner, pieces are a page's rows of one (layer, head): a few hundred bytes to 4 KiB each, pages apart, too
// short for the hardware prefetchers to ramp up on. So the first kPrefetchBytes of the K and V rows of the piece
// kPrefetchAhead ahead are requested while this one is scored (longer runs are left to the hardware).
constexpr size_t kPrefetchAhead = 2;
constexpr size_t kPrefetchBytes = 4096;

void Prefetch(const Piece& pc, const RowCodec& k, const RowCodec& v) {
  const size_t k_bytes = std::min(kPrefetchBytes, pc.n_rows * k.row_bytes());
  for (size_t b = 0; b < k_bytes; b += 64) __builtin_prefetch(pc.k + b);
  if (pc.v == pc.k) return;  // shared K/V rows
  const size_t v_bytes = std::min(kPrefetchBytes, pc.n_rows * v.row_bytes());
  for (size_t b = 0; b < v_bytes; b += 64) __builtin_prefetch(pc.v + b);
}

void Process(const Kernels& kernels, const RowCodec& k, const RowCodec& v, int v_dim, const float* q_rotated,
             const float* center_coefs, int n_q, std::span<const Piece> pieces, AttentionState& st) {
  float scores[kChunkRows * 64];
  std::vector<float> big;
  float* s = scores;
  if (n_q > 64) {
    big.resize(static_cast<size_t>(kChunkRows) * n_q);
    s = big.data();
  }
  ChunkAngles angles;
  for (size_t pi = 0; pi < pieces.size(); ++pi) {
    const Piece& pc = pieces[pi];
    if (pi + kPrefetchAhead < pieces.size()) Prefetch(pieces[pi + kPrefetchAhead], k, v);
    for (int t0 = 0; t0 < pc.n_rows; t0 += kChunkRows) {
      const int n = std::min(kChunkRows, pc.n_rows - t0);
      kernels.score(k, pc.k + t0 * k.row_bytes(), k.row_bytes(), n, q_rotated, n_q, s);
      if (!k.rotating_center().empty()) AddRotatingCenter(kernels, k, center_coefs, n_q, pc.pos + t0, n, angles, s);
      for (int i = 0; i < n_q; ++i) {
        float mx = st.m[i];
        const float sum = kernels.exp_sum(s + i * n, n, &mx);
        const float factor = std::exp(st.m[i] - mx);  // 0 on the first chunk (m = -inf)
        st.m[i] = mx;
        st.l[i] = st.l[i] * factor + sum;
        if (factor != 1.0f)
          for (int j = 0; j < v_dim; ++j) st.acc[i * v_dim + j] *= factor;
      }
      kernels.accumulate(v, pc.v + t0 * v.row_bytes(), v.row_bytes(), n, v_dim, s, n_q, st.acc.data());
    }
  }
}

// all := the merge of all and st (the same queries over disjoint rows): both rescaled to the larger max and added.
void MergeState(AttentionState& all, const AttentionState& st, int n_q, int v_dim) {
  for (int i = 0; i < n_q; ++i) {
    const float m = std::max(all.m[i], st.m[i]);
    if (m == -INFINITY) continue;
    const float f0 = std::exp(all.m[i] - m), fj = std::exp(st.m[i] - m);
    all.l[i] = all.l[i] * f0 + st.l[i] * fj;
    for (int c = 0; c < v_dim; ++c) all.acc[i * v_dim + c] = all.acc[i * v_dim + c] * f0 + st.acc[i * v_dim + c] * fj;
    all.m[i] = m;
  }
}

void Normalize(const AttentionState& st, int n_q, int v_dim, float* out) {
  for (int i = 0; i < n_q; ++i) {
    const float inv = 1.0f / st.l[i];
    for (int c = 0; c < v_dim; ++c) out[i * v_dim + c] = st.acc[i * v_dim + c] * inv;
  }
}

}  // namespace

void AttentionState::Reset(int n_q, int v_dim) {
  m.assign(n_q, -INFINITY);
  l.assign(n_q, 0.0f);
  acc.assign(static_cast<size_t>(n_q) * v_dim, 0.0f);
}

const Kernels* GetKernels(Isa isa) {
  switch (isa) {
    case Isa::kBaseline: return &baseline::Get();
    case Isa::kAvx2: return IsaSupported(isa) ? &avx2::Get() : nullptr;
    case Isa::kAvx512: return IsaSupported(isa) ? &avx512::Get() : nullptr;
  }
  return nullptr;
}

namespace {

// AttendWith without the final normalization: the merged state of the queries over all the parts' rows.
Status AttendStateWith(const Kernels& kernels, std::span<const CodedSpans> parts, int shared_v_dim, const float* q,
                       int n_q, float scale, int n_threads, AttentionState* state) {
  if (n_q < 1) return InvalidArgument("attention: n_q is " + std::to_string(n_q) + "; expected at least 1 query");
  if (parts.empty()) return InvalidArgument("attention: no parts; expected at least one range of rows");
  const bool shared = shared_v_dim > 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    const CodedSpans& part = parts[p];
    if (part.k == nullptr || (!shared && part.v == nullptr) || part.k->dim() != parts[0].k->dim() ||
        (!shared && part.v->dim() != parts[0].v->dim()))
      return InvalidArgument("attention: part " + std::to_string(p) +
                             " has a null codec or row dims unlike part 0's; expected codecs of equal K and V dims");
  }
  const int k_dim = parts[0].k->dim();
  const int v_dim = shared ? shared_v_dim : parts[0].v->dim();
  // A job: rows of one part scored by one thread.
  struct Job {
    int part;
    std::vector<Piece> pieces;
  };
  std::vector<Job> jobs;
  int total = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    Job job{static_cast<int>(p), {}};
    for (size_t i = 0; i < parts[p].spans.size(); ++i) {
      const RowSpan& sp = parts[p].spans[i];
      if (sp.n_rows < 0 || (sp.n_rows > 0 && (sp.k == nullptr || (!shared && sp.v == nullptr))))
        return InvalidArgument("attention: span " + std::to_string(i) + " has n_rows " + std::to_string(sp.n_rows) +
                               " or a null row pointer; expected n_rows >= 0 and rows for K" +
                               (shared ? "" : " and V"));
      if (sp.n_rows == 0) continue;
      job.pieces.push_back({sp.k, shared ? sp.k : sp.v, sp.n_rows, sp.pos});
      total += sp.n_rows;
    }
    if (!job.pieces.empty()) jobs.push_back(std::move(job));
  }
  if (total == 0)
    return InvalidArgument("attention: the range is empty (" + std::to_string(parts.size()) +
                           " parts, 0 rows); expected at least one row");

  // Per part: the queries divided by its key weights and rotated into its K domain with the softmax scale folded
  // in, the shift scale·q·mu_K that its key center took off every score, and the coefficients of what its rotating
  // center took off (AddRotatingCenter).
  std::vector<std::vector<float>> q_rotated(parts.size());
  std::vector<std::vector<float>> shift(parts.size());
  std::vector<std::vector<float>> center_coefs(parts.size());
  for (size_t p = 0; p < parts.size(); ++p) {
    const RowCodec& k = *parts[p].k;
    q_rotated[p].resize(static_cast<size_t>(n_q) * k_dim);
    shift[p].assign(n_q, 0.0f);
    const std::span<const RotatingCenter> pairs = k.rotating_center();
    for (int i = 0; i < n_q; ++i) {
      for (const RotatingCenter& c : pairs) {
        const float qa = q[i * k_dim + c.a], qb = q[i * k_dim + c.b];
        center_coefs[p].push_back(scale * (qa * c.ca + qb * c.cb));
        center_coefs[p].push_back(scale * (qb * c.ca - qa * c.cb));
      }
      if (k.weights().empty()) {
        k.rotation().Apply(q + i * k_dim, &q_rotated[p][i * k_dim]);
      } else {  // q / w, then rotated
        for (int j = 0; j < k_dim; ++j) q_rotated[p][i * k_dim + j] = q[i * k_dim + j] / k.weights()[j];
        k.rotation().Apply(&q_rotated[p][i * k_dim], &q_rotated[p][i * k_dim]);
      }
      for (int j = 0; j < k_dim; ++j) q_rotated[p][i * k_dim + j] *= scale;
      if (!k.center().empty()) {
        double dot = 0;
        for (int j = 0; j < k_dim; ++j) dot += static_cast<double>(q[i * k_dim + j]) * k.center()[j];
        shift[p][i] = static_cast<float>(scale * dot);
      }
    }
  }

  n_threads = std::max(1, std::min(n_threads, total));
  if (n_threads > 1) {
    // Thread t takes rows [t * per, (t + 1) * per) of the concatenated range: one job per (thread, part) it touches.
    const int per = (total + n_threads - 1) / n_threads;
    std::vector<Job> split;
    int pos = 0;
    for (const Job& job : jobs) {
      const CodedSpans& part = parts[job.part];
      const size_t k_bytes = part.k->row_bytes(), v_bytes = shared ? k_bytes : part.v->row_bytes();
      for (const Piece& pc : job.pieces) {
        for (int t = 0; t < pc.n_rows;) {
          const int take = std::min(pc.n_rows - t, (pos / per + 1) * per - pos);
          if (split.empty() || split.back().part != job.part || pos % per == 0) split.push_back({job.part, {}});
          split.back().pieces.push_back({pc.k + t * k_bytes, pc.v + t * v_bytes, take, pc.pos + t});
          t += take;
          pos += take;
        }
      }
    }
    jobs = std::move(split);
  }
  std::vector<AttentionState> partial(jobs.size());
  for (AttentionState& st : partial) st.Reset(n_q, v_dim);
  auto run = [&](size_t j) {
    const CodedSpans& part = parts[jobs[j].part];
    const RowCodec& v = shared ? *part.k : *part.v;
    AttentionState& st = partial[j];
    Process(kernels, *part.k, v, v_dim, q_rotated[jobs[j].part].data(), center_coefs[jobs[j].part].data(), n_q,
            jobs[j].pieces, st);
    // Into the common domain: V rotated back and divided by its weights, V's center (the leading v_dim values of
    // shared rows' center) added with weight l (Σ p = 1 within the part), the key center's shift given back to the
    // running max.
    const std::span<const float> center = v.center();
    for (int i = 0; i < n_q; ++i) {
      float* acc = &st.acc[static_cast<size_t>(i) * v_dim];
      v.rotation().Invert(acc, acc, v_dim);
      for (size_t c = 0; c < v.weights().size() && c < static_cast<size_t>(v_dim); ++c) acc[c] /= v.weights()[c];
      if (!center.empty())
        for (int c = 0; c < v_dim; ++c) acc[c] += st.l[i] * center[c];
      st.m[i] += shift[jobs[j].part][i];
    }
  };
  if (n_threads == 1) {
    for (size_t j = 0; j < jobs.size(); ++j) run(j);
  } else {
#pragma omp parallel for num_threads(n_threads) schedule(static, 1)
    for (size_t j = 0; j < jobs.size(); ++j) run(j);
  }
  // Merge: rescale every partial to the common max and add.
  for (size_t j = 1; j < jobs.size(); ++j) MergeState(partial[0], partial[j], n_q, v_dim);
  *state = std::move(partial[0]);
  return Status::Ok();
}

}  // namespace

Status AttendWith(const Kernels& kernels, std::span<const CodedSpans> parts, int shared_v_dim, const float* q, int n_q,
                  float scale, float* out, int n_threads) {
  AttentionState st;
  LR_RETURN_IF_ERROR(AttendStateWith(kernels, parts, shared_v_dim, q, n_q, scale, n_threads, &st));
  Normalize(st, n_q, shared_v_dim > 0 ? shared_v_dim : parts[0].v->dim(), out);
  return Status::Ok();
}

Status Attend(const RowCodec& k, const RowCodec& v, const float* q, int n_q, std::span<const RowSpan> spans,
              float scale, float* out) {
  const CodedSpans part{&k, &v, spans};
  return AttendWith(*GetKernels(BestIsa()), {&part, 1}, 0, q, n_q, scale, out, 1);
}

Status AttendMixed(std::span<const CodedSpans> parts, const float* q, int n_q, float scale, float* out) {
  return AttendWith(*GetKernels(BestIsa()), parts, 0, q, n_q, scale, out, 1);
}

Status AttendMixedState(std::span<const CodedSpans> parts, const float* q, int n_q, float scale,
                        AttentionState* state) {
  return AttendStateWith(*GetKernels(BestIsa()), parts, 0, q, n_q, scale, 1, state);
}

void FinishAttention(std::span<AttentionState> states, int n_q, int v_dim, float* out) {
  assert(!states.empty());
  for (size_t j = 1; j < states.size(); ++j) MergeState(states[0], states[j], n_q, v_dim);
  Normalize(states[0], n_q, v_dim, out);
}

void SliceAttentionState(const AttentionState& block, int first, int n_q, int v_dim, AttentionState* out) {
  const size_t f = static_cast<size_t>(first), e = f + n_q;
  out->m.assign(block.m.begin() + f, block.m.begin() + e);
  out->l.assign(block.l.begin() + f, block.l.begin() + e);
  out->acc.assign(block.acc.begin() + f * v_dim, block.acc.begin() + e * v_dim);
}

Status AttendSharedPrefix(std::span<const CodedSpans> shared, std::span<const std::span<const CodedSpans>> own,
                          const float* q, int n_q, float scale, float* out) {
  const Kernels& kernels = *GetKernels(BestIsa());
  const int n_seq = static_cast<int>(own.size());
  if (n_seq < 1) return InvalidArgument("shared-prefix attention: no sequences; expected at least one");
  AttentionState all;
  LR_RETURN_IF_ERROR(AttendStateWith(kernels, shared, 0, q, n_seq * n_q, scale, 1, &all));
  const int k_dim = shared[0].k->dim(), v_dim = shared[0].v->dim();
  AttentionState mine, tail;
  for (int s = 0; s < n_seq; ++s) {
    const size_t first = static_cast<size_t>(s) * n_q;
    SliceAttentionState(all, static_cast<int>(first), n_q, v_dim, &mine);
    if (!own[s].empty()) {
      LR_RETURN_IF_ERROR(AttendStateWith(kernels, own[s], 0, q + first * k_dim, n_q, scale, 1, &tail));
      if (own[s][0].k->dim() != k_dim || own[s][0].v->dim() != v_dim)
        return InvalidArgument("shared-prefix attention: sequence " + std::to_string(s) +
                               "'s own rows have other dims than the shared rows'; expected equal K and V dims");
      MergeState(mine, tail, n_q, v_dim);
    }
    Normalize(mine, n_q, v_dim, out + first * v_dim);
  }
  return Status::Ok();
}

Status AttendParallel(const RowCodec& k, const RowCodec& v, const float* q, int n_q, std::span<const RowSpan> spans,
                      float scale, float* out, int n_threads) {
  const CodedSpans part{&k, &v, spans};
  return AttendWith(*GetKernels(BestIsa()), {&part, 1}, 0, q, n_q, scale, out, n_threads);
}

Status AttendSharedKV(const RowCodec& kv, int v_dim, const float* q, int n_q, std::span<const RowSpan> spans,
                      float scale, float* out) {
  bool on_block = kv.is_f16() || v_dim == kv.dim();
  for (const BlockLayout& b : kv.blocks()) on_block = on_block || b.begin == v_dim;
  if (v_dim < 1 || v_dim > kv.dim() || !on_block || !kv.rotation().IsBoundary(v_dim))
    return InvalidArgument("attention with shared K/V rows: v_dim " + std::to_string(v_dim) + " with format " +
                           std::string(kv.format().name) + " and row dim " + std::to_string(kv.dim()) +
                           "; expected 1..dim ending on a block boundary and a rotation segment boundary");
  const CodedSpans part{&kv, nullptr, spans};
  return AttendWith(*GetKernels(BestIsa()), {&part, 1}, v_dim, q, n_q, scale, out, 1);
}

}  // namespace lr::kvquant
