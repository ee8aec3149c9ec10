// Weight kernels: decoding GGUF weight rows and multiplying weight matrices by activations.
//
// Every supported weight type (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K) has a plain scalar DequantizeRow:
// the reference the fast paths are tested against. MatMul is the fast path. For the quantized types it quantizes the
// activations once per call to BlockQ8 (32 int8 values and one scale) and multiplies with int8 dot products, as ggml
// does; the float types multiply f32 activations directly. The SIMD level (AVX2, or AVX-512 VNNI: q4_1 and q8_0 on
// 512-bit vectors, the other types on 256-bit ones) is picked at run time from the CPU; a CPU without AVX2 gets the
// scalar path (dequantize a row, then dot). Q4_0, Q4_1 and Q8_0 matrices repacked to 16 interleaved rows (Repack16,
// done by the model at load) run kernels without reductions across vector lanes: the row kernels' reductions cost
// more instructions per weight than a decode step can hide behind its memory reads (docs/RESULTS.md).
//
// Threads: MatMul splits the output rows over the OpenMP threads (omp_set_num_threads decides how many). A call with
// several tokens reads each weight row once for all of them (prefill is matrix-matrix work). MatMulMany runs several
// products with one input in one parallel region. The team functions (MatMulManyTeam, MatMulManyQuantizedTeam) run
// inside a parallel region the caller opened, so that a forward step can run a whole block (norm, products, attention)
// in one region with barriers between its ops instead of one fork and join per op.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "base/cpu.h"
#include "ops/tensor_type.h"

namespace lr::ops {

// 32 activations quantized to int8: value[i] ~= d * q[i]. sum[h] is the sum of q[16h .. 16h+15] and s = d * (sum[0] +
// sum[1]) the block's value sum; the kernels use them for the offset terms of the weight formats (q4_0's -8, q4_1's
// min, the K-quants' mins, q6_K's -32) without converting integers per weight row.
struct BlockQ8 {
  float d;
  float s;
  int16_t sum[2];
  int8_t q[32];
};
static_assert(sizeof(BlockQ8) == 44);

// x[0..n) -> n/32 blocks, round to nearest with d = max|x| / 127. n is a multiple of 32. Every SIMD level gives the
// scalar level's result bit for bit (the scalar level is the reference).
void QuantizeRowQ8(const float* x, int64_t n, BlockQ8* out);

// The scalar reference: decodes the first `n` values of a row stored as `type` (n a multiple of its block size).
void DequantizeRow(const TensorTypeInfo& type, const uint8_t* row, float* out, int64_t n);

// How a WeightMatrix's bytes are arranged.
//   kRows: as GGUF stores it, row after row, each row its blocks in order.
//   kRows16: 16 rows interleaved (Repack16), for Q4_0, Q4_1 and Q8_0 with rows a multiple of 16. A group is 16
//     consecutive rows x one 32-value block; groups are stored row group by row group, blocks in order within one. A
//     Q4_1 group (320 bytes) holds the 16 rows' d (f16), then their m (f16), then for L = 0..3 and row j = 0..15
//     bytes [4L, 4L + 4) of row j's nibbles; a Q4_0 group (288 bytes) the same without the m; a Q8_0 group (544
//     bytes) the 16 d, then for L = 0..7 and row j = 0..15 row j's int8 weights [4L, 4L + 4) plus 128 (as unsigned
//     bytes). So one 64-byte load holds 4 weights of each of
//     the 16 rows, one per 32-bit lane: the kernels multiply 16 rows with one broadcast activation word and store
//     16 outputs at once, with no reduction across lanes. Same bytes per weight as GGUF's layout.
enum class WeightLayout { kRows, kRows16 };

// A 2-D weight: `rows` rows of `cols` values (cols is ggml's ne0), `row_bytes` bytes of them per row.
struct WeightMatrix {
  TensorTypeInfo type;
  const uint8_t* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_bytes = 0;
  WeightLayout layout = WeightLayout::kRows;

  // Row r's blocks (layout kRows only; CopyRowBytes reads a row of any layout).
  const uint8_t* row(int64_t r) const {
    assert(layout == WeightLayout::kRows);
    return data + static_cast<size_t>(r) * row_bytes;
  }
};

// Row r of w in GGUF's block layout, whatever w's layout: row_bytes bytes at out.
void CopyRowBytes(const WeightMatrix& w, int64_t r, uint8_t* out);

// A weight matrix in a buffer of its own; view.data points into bytes (which may start up to 63 bytes before it:
// the view is 64-byte aligned, so that every Q4_1 group fills whole cache lines).
struct OwnedWeightMatrix {
  std::vector<uint8_t> bytes;
  WeightMatrix view;
};

// Whether Repack16 takes w: Q4_0, Q4_1 or Q8_0 in layout kRows with rows a positive multiple of 16.
bool Repack16Applies(const WeightMatrix& w);
// A copy of w (Repack16Applies(w)) in layout kRows16: allocates and copies rows * row_bytes bytes. The kernels then
// read the copy, so the source pages (a mapped GGUF file) are not touched by products.
OwnedWeightMatrix Repack16(const WeightMatrix& w);

// y[t * y_stride + r] = sum_c W[r][c] * x[t * w.cols + c], for every row r and token t < n_tokens.
// x holds n_tokens rows of w.cols floats; y_stride >= w.rows; w.cols is a whole number of blocks (the GGUF
// loader checks every tensor's rows).
void MatMul(const WeightMatrix& w, const float* x, int n_tokens, float* y, int64_t y_stride);

// One product of MatMulMany: y[t * y_stride + r] = sum_c w[r][c] * x[t * cols + c], or with `add` y[...] += that sum
// (a residual connection without a pass of its own).
struct MatMulOut {
  const WeightMatrix* w;
  float* y;
  int64_t y_stride;
  bool add = false;
};
// Several matrices with the same cols applied to the same activations (q, k and v; gate and up) in one parallel
// region: the activations are quantized once per type family and the threads split the rows of all products
// together, so a decode step pays one fork and join instead of one per matrix. Same results as MatMul on each.
void MatMulMany(std::span<const MatMulOut> outs, const float* x, int n_tokens);

// Team functions: every thread of an OpenMP parallel region calls them with the same arguments; they split the work
// over the team and return when all of it is done (they end with a barrier). Called outside a parallel region, the
// calling thread does all the work.
//
// MatMulMany inside a team. xq: room for n_tokens * cols / 32 blocks, shared by the team, where the activations are
// quantized first when UsesQ8(outs). Same results as MatMulMany.
void MatMulManyTeam(std::span<const MatMulOut> outs, const float* x, int n_tokens, BlockQ8* xq);
// Whether the products read quantized activations (some weights are quantized and the SIMD level is not scalar).
bool UsesQ8(std::span<const MatMulOut> outs);
// MatMulManyTeam on activations the caller has already quantized into xq when UsesQ8(outs) (with the step that made
// them, one barrier fewer).
void MatMulManyQuantizedTeam(std::span<const MatMulOut> outs, const float* x, const BlockQ8* xq, int n_tokens);

// One product of a grouped matrix multiply: w times its own n_tokens input rows, x (n_tokens rows of w.cols floats)
// and xq (the same rows quantized, when UsesQ8 of w; else unused), into y[t * y_stride + r].
struct MatMulTask {
  WeightMatrix w;
  const float* x;
  const BlockQ8* xq;
  int n_tokens;
  float* y;
  int64_t y_stride;
};
// Runs every task, a team function: the 16-row chunks of all tasks are split over the team in contiguous runs of
// equal estimated cost (rows times tokens plus the weight read), so that a task of few tokens (an expert that few
// tokens chose) is not a thread's whole share, and a task is split between threads when the split falls in it.
void MatMulTasksTeam(std::span<const MatMulTask> tasks);

// C = A·B on f32 row-major matrices, on the calling thread: c[i * ldc + j] = Σ_p a[i * lda + p] · b[p * ldb + j] for
// i < m, j < n, p < k (c overwritten; k = 0 writes zeros). For products of two activations, where no weight format is
// involved (MLA prefill: the queries times the latent rows, the probabilities times them). Each output is summed in
// the order p = 0, 1, ... at every level (the SIMD levels with fused multiply-adds), so levels differ by rounding only.
void GemmF32(int m, int n, int k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);

// The instruction set the products use (base/cpu.h): BestIsa() unless lowered with SetActiveIsa (tests and
// benchmarks compare levels; Isa::kBaseline is the scalar path).
Isa ActiveIsa();
// Uses `isa` from now on, clamped to BestIsa(). Not thread-safe against running MatMuls.
void SetActiveIsa(Isa isa);

}  // namespace lr::ops
