#include "ops/kernels.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/half.h"
#include "ops/kernels_simd.h"

namespace lr::ops {
namespace {

// q4_0 / q4_1 nibble order: byte j holds value j (low nibble) and value j + 16 (high nibble).
void DequantQ4_0(const uint8_t* blk, float* y) {
  const float d = LoadHalf(blk);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * ((blk[2 + j] & 0xF) - 8);
    y[j + 16] = d * ((blk[2 + j] >> 4) - 8);
  }
}

void DequantQ4_1(const uint8_t* blk, float* y) {
  const float d = LoadHalf(blk);
  const float m = LoadHalf(blk + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = d * (blk[4 + j] & 0xF) + m;
    y[j + 16] = d * (blk[4 + j] >> 4) + m;
  }
}

void DequantQ8_0(const uint8_t* blk, float* y) {
  const float d = LoadHalf(blk);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<int8_t>(blk[2 + j]);
}

// Scale and min of sub-block j (0..7) from the 12-byte packing of q4_K / q5_K: bytes 0-3 hold the low 6 bits of
// scales 0-3 (top 2 bits: high bits of scales 4-7), bytes 4-7 the same for the mins, bytes 8-11 the low 4 bits of
// scales 4-7 (low nibble) and mins 4-7 (high nibble).
void ScaleMinK4(int j, const uint8_t* s, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// q4_K: d, dmin (f16), scales[12], qs[128]. Each 32 bytes of qs hold sub-block 2i (low nibbles) and 2i+1 (high).
void DequantQ4_K(const uint8_t* blk, float* y) {
  const float d = LoadHalf(blk);
  const float dmin = LoadHalf(blk + 2);
  const uint8_t* scales = blk + 4;
  const uint8_t* qs = blk + 16;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    ScaleMinK4(j, scales, &sc, &m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; ++l) y[32 * j + l] = d * sc * ((q[l] >> shift) & 0xF) - dmin * m;
  }
}

// q5_K: d, dmin, scales[12], qh[32], qs[128]: q4_K plus a fifth bit, bit j of qh[l] for value l of sub-block j.
void DequantQ5_K(const uint8_t* blk, float* y) {
  const float d = LoadHalf(blk);
  const float dmin = LoadHalf(blk + 2);
  const uint8_t* scales = blk + 4;
  const uint8_t* qh = blk + 16;
  const uint8_t* qs = blk + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    ScaleMinK4(j, scales, &sc, &m);
    const uint8_t* q = qs + 32 * (j / 2);
    const int shift = (j % 2) * 4;
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
      y[32 * j + l] = d * sc * v - dmin * m;
    }
  }
}

// q6_K: ql[128], qh[64], int8 scales[16], d (f16). Per half of 128 values: value 32k + l (k = 0..3, l = 0..31)
// takes its low 4 bits from ql[l + 32 (k % 2)] (low nibble for k < 2, high for k >= 2) and its high 2 bits from
// bits 2k..2k+1 of qh[l]; one int8 scale per 16 values; value = d * scale * (q - 32).
void DequantQ6_K(const uint8_t* blk, float* y) {
  const float d = LoadHalf(blk + 208);
  for (int half = 0; half < 2; ++half) {
    const uint8_t* ql = blk + 64 * half;
    const uint8_t* qh = blk + 128 + 32 * half;
    const int8_t* sc = reinterpret_cast<const int8_t*>(blk + 192 + 8 * half);
    float* out = y + 128 * half;
    for (int k = 0; k < 4; ++k) {
      for (int l = 0; l < 32; ++l) {
        const int low = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
        const int high = (qh[l] >> (2 * k)) & 3;
        const int pos = 32 * k + l;
        out[pos] = d * sc[pos / 16] * ((low | (high << 4)) - 32);
      }
    }
  }
}

std::atomic<Isa>& ActiveIsaSlot() {
  static std::atomic<Isa> level{BestIsa()};
  return level;
}

// The scalar path: each row decoded once, then dotted with every token.
void MatMulRowsScalar(const WeightMatrix& w, const float* x, int n_tokens, int64_t r0, int64_t r1, float* y,
                      int64_t y_stride, bool add) {
  std::vector<float> row(static_cast<size_t>(w.cols));
  std::vector<uint8_t> row_bytes(w.layout == WeightLayout::kRows ? 0 : w.row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* src = w.layout == WeightLayout::kRows ? w.row(r) : row_bytes.data();
    if (w.layout != WeightLayout::kRows) CopyRowBytes(w, r, row_bytes.data());
    DequantizeRow(w.type, src, row.data(), w.cols);
    for (int t = 0; t < n_tokens; ++t) {
      const float* xt = x + t * w.cols;
      float sum = 0;
      for (int64_t c = 0; c < w.cols; ++c) sum += row[c] * xt[c];
      y[t * y_stride + r] = add ? y[t * y_stride + r] + sum : sum;
    }
  }
}

void QuantizeRowQ8Scalar(const float* x, int64_t n, BlockQ8* out) {
  for (int64_t b = 0; b < n / 32; ++b) {
    const float* v = x + 32 * b;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float d = amax / 127.0f;
    const float id = d > 0 ? 1.0f / d : 0.0f;
    BlockQ8& o = out[b];
    o.d = d;
    int sum[2] = {0, 0};
    for (int i = 0; i < 32; ++i) {
      const int q = static_cast<int>(std::nearbyint(v[i] * id));
      o.q[i] = static_cast<int8_t>(q);
      sum[i / 16] += q;
    }
    o.sum[0] = static_cast<int16_t>(sum[0]);
    o.sum[1] = static_cast<int16_t>(sum[1]);
    o.s = d * static_cast<float>(sum[0] + sum[1]);
  }
}

// kRows16 (kernels.h): calls move(i, at, n, x) for each piece of row j's block (j = 0..15): bytes [i, i + n) of the
// block sit at offset `at` of its group, XORed with x (Q8_0's weights are stored + 128). The f16 fields that lead a
// block (Q4_1: d and m; Q4_0, Q8_0: d) go to 16-value arrays, the rest to 4-byte words, 16 rows per 64 bytes.
template <typename Move>
void ForEachRows16Piece(const TensorTypeInfo& type, int j, Move&& move) {
  const int header = type.type == TensorType::kQ4_1 ? 4 : 2;
  const uint32_t bias = type.type == TensorType::kQ8_0 ? 0x80808080u : 0;
  for (int i = 0; i < header; i += 2) move(i, 16 * i + 2 * j, 2, 0u);
  for (int k = 0; header + 4 * k < static_cast<int>(type.block_bytes); ++k)
    move(header + 4 * k, 16 * header + 64 * k + 4 * j, 4, bias);
}

// dst = src XOR x for n (2 or 4) bytes.
void MovePiece(uint8_t* dst, const uint8_t* src, int n, uint32_t x) {
  uint32_t v = 0;
  std::memcpy(&v, src, n);
  v ^= x;
  std::memcpy(dst, &v, n);
}

bool IsFloatType(TensorType t) { return t == TensorType::kF32 || t == TensorType::kF16 || t == TensorType::kBF16; }

}  // namespace

void QuantizeRowQ8(const float* x, int64_t n, BlockQ8* out) {
  assert(n % 32 == 0);
  switch (ActiveIsa()) {
    case Isa::kAvx512: avx512::QuantizeRowQ8(x, n, out); break;
    case Isa::kAvx2: avx2::QuantizeRowQ8(x, n, out); break;
    case Isa::kBaseline: QuantizeRowQ8Scalar(x, n, out); break;
  }
}

void GemmF32(int m, int n, int k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc) {
  switch (ActiveIsa()) {
    case Isa::kAvx512: return avx512::GemmF32(m, n, k, a, lda, b, ldb, c, ldc);
    case Isa::kAvx2: return avx2::GemmF32(m, n, k, a, lda, b, ldb, c, ldc);
    case Isa::kBaseline: break;
  }
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float sum = 0.0f;
      for (int p = 0; p < k; ++p) sum += a[i * lda + p] * b[p * ldb + j];
      c[i * ldc + j] = sum;
    }
  }
}

void DequantizeRow(const TensorTypeInfo& type, const uint8_t* row, float* out, int64_t n) {
  assert(RowIsWhole(type, n));
  const int64_t blocks = n / type.block_elems;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* blk = row + b * type.block_bytes;
    float* y = out + b * type.block_elems;
    switch (type.type) {
      case TensorType::kF32: std::memcpy(y, blk, 4); break;
      case TensorType::kF16: *y = LoadHalf(blk); break;
      case TensorType::kBF16: *y = LoadBF16(blk); break;
      case TensorType::kQ4_0: DequantQ4_0(blk, y); break;
      case TensorType::kQ4_1: DequantQ4_1(blk, y); break;
      case TensorType::kQ8_0: DequantQ8_0(blk, y); break;
      case TensorType::kQ4_K: DequantQ4_K(blk, y); break;
      case TensorType::kQ5_K: DequantQ5_K(blk, y); break;
      case TensorType::kQ6_K: DequantQ6_K(blk, y); break;
    }
  }
}

void CopyRowBytes(const WeightMatrix& w, int64_t r, uint8_t* out) {
  if (w.layout == WeightLayout::kRows) {
    std::memcpy(out, w.row(r), w.row_bytes);
    return;
  }
  const size_t bb = w.type.block_bytes;
  const uint8_t* group = w.data + static_cast<size_t>(r / 16) * 16 * w.row_bytes;
  for (int64_t b = 0; b < w.cols / 32; ++b, group += 16 * bb, out += bb) {
    ForEachRows16Piece(w.type, static_cast<int>(r % 16),
                       [&](int i, int at, int n, uint32_t x) { MovePiece(out + i, group + at, n, x); });
  }
}

bool Repack16Applies(const WeightMatrix& w) {
  return w.layout == WeightLayout::kRows && w.rows > 0 && w.rows % 16 == 0 &&
         (w.type.type == TensorType::kQ4_0 || w.type.type == TensorType::kQ4_1 || w.type.type == TensorType::kQ8_0);
}

OwnedWeightMatrix Repack16(const WeightMatrix& w) {
  assert(Repack16Applies(w));
  constexpr size_t kAlign = 64;
  OwnedWeightMatrix m;
  m.bytes.resize(w.row_bytes * static_cast<size_t>(w.rows) + kAlign - 1);
  const size_t skip = (kAlign - reinterpret_cast<uintptr_t>(m.bytes.data()) % kAlign) % kAlign;
  uint8_t* dst = m.bytes.data() + skip;
  const size_t bb = w.type.block_bytes;
  // Gigabytes for a large MoE model: the rows split over the threads.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < w.rows; ++r) {
    const uint8_t* src = w.row(r);
    uint8_t* group = dst + static_cast<size_t>(r / 16) * 16 * w.row_bytes;
    for (int64_t b = 0; b < w.cols / 32; ++b, group += 16 * bb, src += bb) {
      ForEachRows16Piece(w.type, static_cast<int>(r % 16),
                         [&](int i, int at, int n, uint32_t x) { MovePiece(group + at, src + i, n, x); });
    }
  }
  m.view = w;
  m.view.data = dst;
  m.view.layout = WeightLayout::kRows16;
  return m;
}

Isa ActiveIsa() { return ActiveIsaSlot().load(std::memory_order_relaxed); }

void SetActiveIsa(Isa isa) { ActiveIsaSlot().store(std::min(isa, BestIsa()), std::memory_order_relaxed); }

void MatMul(const WeightMatrix& w, const float* x, int n_tokens, float* y, int64_t y_stride) {
  const MatMulOut out{&w, y, y_stride};
  MatMulMany({&out, 1}, x, n_tokens);
}

void MatMulMany(std::span<const MatMulOut> outs, const float* x, int n_tokens) {
  thread_local std::vector<BlockQ8> xq;
  xq.resize(static_cast<size_t>(n_tokens * (outs[0].w->cols / 32)));
  BlockQ8* xq_data = xq.data();  // the calling thread's buffer, shared with the team
#pragma omp parallel
  MatMulManyTeam(outs, x, n_tokens, xq_data);
}

namespace {

// QuantizeRowQ8 of x[0..n), the blocks split over the team.
void QuantizeRowQ8Team(const float* x, int64_t n, BlockQ8* out) {
  assert(n % 32 == 0);
#pragma omp for schedule(static)
  for (int64_t b = 0; b < n / 32; ++b) QuantizeRowQ8(x + 32 * b, 32, out + b);
}

}  // namespace

void MatMulManyTeam(std::span<const MatMulOut> outs, const float* x, int n_tokens, BlockQ8* xq) {
  // Activations are quantized once, shared by all threads and all quantized matrices.
  if (UsesQ8(outs)) QuantizeRowQ8Team(x, n_tokens * outs[0].w->cols, xq);
  MatMulManyQuantizedTeam(outs, x, xq, n_tokens);
}

bool UsesQ8(std::span<const MatMulOut> outs) {
  if (ActiveIsa() == Isa::kBaseline) return false;
  for (const MatMulOut& o : outs)
    if (!IsFloatType(o.w->type.type)) return true;
  return false;
}

void MatMulManyQuantizedTeam(std::span<const MatMulOut> outs, const float* x, const BlockQ8* xq, int n_tokens) {
  const Isa level = ActiveIsa();
  // Rows in chunks of 16 (whole cache lines of output; one row group of a kRows16 matrix); chunk c belongs to the
  // first product whose chunks end after c.
  constexpr int64_t kChunk = 16;
  constexpr size_t kMaxOuts = 4;
  assert(!outs.empty() && outs.size() <= kMaxOuts);
  int64_t chunk_end[kMaxOuts];
  int64_t n_chunks = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const WeightMatrix& w = *outs[i].w;
    assert(w.cols == outs[0].w->cols && RowIsWhole(w.type, w.cols) && outs[i].y_stride >= w.rows);
    n_chunks += (w.rows + kChunk - 1) / kChunk;
    chunk_end[i] = n_chunks;
  }
  // Spread evenly over the threads.
#pragma omp for schedule(static)
  for (int64_t c = 0; c < n_chunks; ++c) {
    size_t i = 0;
    while (c >= chunk_end[i]) ++i;
    const MatMulOut& o = outs[i];
    const WeightMatrix& w = *o.w;
    const int64_t r0 = (c - (i == 0 ? 0 : chunk_end[i - 1])) * kChunk;
    const int64_t r1 = std::min(w.rows, r0 + kChunk);
    assert(w.layout == WeightLayout::kRows || r1 - r0 == 16);  // a chunk is one row group of a kRows16 matrix
    switch (level) {
      case Isa::kAvx512: avx512::MatMulRows(w, xq, x, n_tokens, r0, r1, o.y, o.y_stride, o.add); break;
      case Isa::kAvx2: avx2::MatMulRows(w, xq, x, n_tokens, r0, r1, o.y, o.y_stride, o.add); break;
      case Isa::kBaseline: MatMulRowsScalar(w, x, n_tokens, r0, r1, o.y, o.y_stride, o.add); break;
    }
  }
}

void MatMulTasksTeam(std::span<const MatMulTask> tasks) {
  constexpr int64_t kChunk = 16;
  // A chunk of task i costs its tokens plus kWeightCost token-equivalents for reading and unpacking its weights.
  constexpr int64_t kWeightCost = 2;
  int64_t total = 0;
  for (const MatMulTask& t : tasks) total += (t.w.rows + kChunk - 1) / kChunk * (t.n_tokens + kWeightCost);
  const int threads = omp_get_num_threads(), me = omp_get_thread_num();
  const int64_t lo = total * me / threads, hi = total * (me + 1) / threads;
  const Isa level = ActiveIsa();
  int64_t start = 0;  // cost before task i
  for (const MatMulTask& t : tasks) {
    const int64_t cost = t.n_tokens + kWeightCost, chunks = (t.w.rows + kChunk - 1) / kChunk;
    // This thread's chunks of the task: those whose cost offset falls in [lo, hi).
    const int64_t c0 = std::clamp((lo - start + cost - 1) / cost, int64_t{0}, chunks);
    const int64_t c1 = std::clamp((hi - start + cost - 1) / cost, int64_t{0}, chunks);
    start += chunks * cost;
    if (c0 >= c1 || t.n_tokens == 0) continue;
    const int64_t r0 = c0 * kChunk, r1 = std::min(t.w.rows, c1 * kChunk);
    switch (level) {
      case Isa::kAvx512: avx512::MatMulRows(t.w, t.xq, t.x, t.n_tokens, r0, r1, t.y, t.y_stride, false); break;
      case Isa::kAvx2: avx2::MatMulRows(t.w, t.xq, t.x, t.n_tokens, r0, r1, t.y, t.y_stride, false); break;
      case Isa::kBaseline: MatMulRowsScalar(t.w, t.x, t.n_tokens, r0, r1, t.y, t.y_stride, false); break;
    }
  }
#pragma omp barrier
}

}  // namespace lr::ops
