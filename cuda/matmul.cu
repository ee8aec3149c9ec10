// MatMul and MatMulTiled of kernels.h: the product of a weight matrix and many tokens on the tensor cores.
//
// MatMulTiled decodes the weight rows once per call into an f16 scratch (DequantizeHalves: every type through the
// same decoders as the matvec) and converts the activations to f16, then runs one f16 GEMM whatever the weight type:
// C[t][r] = sum_k X[t][k] W[r][k], both operands k-contiguous. A block computes 128 tokens x 128 weight rows with 8
// warps of 64 x 32 (mma.sync m16n8k16, f32 accumulators, fragments through ldmatrix), its operands staged through a
// 3-deep ring of 64-wide k slices filled by cp.async, so that the loads of two slices are in flight while one is
// multiplied (on the H100 faster than 4 slices of 32, and 64 x 32 warp tiles faster than 64 x 64: RESULTS). The
// epilogue writes (or adds to, for residuals) y straight from the accumulators.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/matmul.h"
#include "cuda/mma.cuh"

namespace lr::cuda {
namespace {

constexpr int kBlockTokens = 128, kBlockRows = 128, kSliceK = 64, kStages = 3;
constexpr int kRowChunks = kSliceK / 8;  // 16-byte chunks per row of a slice
// Each warp's share of the block: 64 tokens x 32 rows (2 x 4 warps).
constexpr int kWarpTokens = 64, kWarpRows = 32;
constexpr int kThreads = 32 * (kBlockTokens / kWarpTokens) * (kBlockRows / kWarpRows);
// Halves per shared row: an odd number of 16-byte chunks, so that the 8 rows an ldmatrix reads start in 8 different
// 16-byte bank groups.
constexpr int kPad = kSliceK + 8;
constexpr int kSmemBytes = kStages * (kBlockTokens + kBlockRows) * kPad * 2;
constexpr size_t kScratchAlign = 256;

// y[t * y_stride + r] (+)= sum_k x[t][k] w[r][k] for t < n, r < rows; x: n x k halves, w: rows x k halves, k a
// multiple of 8 (a last partial slice is zero-filled). Block (blockIdx.x, blockIdx.y) = (128 tokens, 128 rows); each
// warp takes kWarpTokens x kWarpRows: tiles of 16 tokens x 8 rows (mma m16n8k16, the tokens as A, the weight rows as
// B).
__global__ void __launch_bounds__(kThreads)
    GemmKernel(const __half* __restrict__ x, const __half* __restrict__ w, int n, int rows, int k,
               float* __restrict__ y, int64_t y_stride, int add) {
  constexpr int kTi = kWarpTokens / 16, kRj = kWarpRows / 8, kWarpsR = kBlockRows / kWarpRows;
  constexpr int kChunks = kBlockTokens * kSliceK / 8 / kThreads;  // 16-byte copies per thread and operand
  static_assert(kBlockTokens == kBlockRows && kChunks * kThreads * 8 == kBlockTokens * kSliceK && kRj % 2 == 0);
  extern __shared__ __align__(16) uint8_t smem[];
  __half* sx = reinterpret_cast<__half*>(smem);     // kStages x kBlockTokens x kPad
  __half* sw = sx + kStages * kBlockTokens * kPad;  // kStages x kBlockRows x kPad
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int tok0 = blockIdx.x * kBlockTokens, row0 = blockIdx.y * kBlockRows;
  const int wt = warp / kWarpsR, wr = warp % kWarpsR;
  const int slices = (k + kSliceK - 1) / kSliceK;

  // Slice s into ring stage `stage`: the 16-byte chunks of each operand (row c / kRowChunks, chunk c % kRowChunks)
  // spread over the threads; rows beyond n (tokens) or `rows`, and columns beyond k, are zero-filled.
  auto load = [&](int stage, int s) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int c = tid + i * kThreads, r = c / kRowChunks, part = c % kRowChunks;
      const int64_t col = static_cast<int64_t>(s) * kSliceK + part * 8;
      const bool tv = tok0 + r < n && col < k, rv = row0 + r < rows && col < k;
      CopyAsync16(SharedAddress(sx + (stage * kBlockTokens + r) * kPad + part * 8),
                  x + (tv ? static_cast<int64_t>(tok0 + r) * k + col : 0), tv);
      CopyAsync16(SharedAddress(sw + (stage * kBlockRows + r) * kPad + part * 8),
                  w + (rv ? static_cast<int64_t>(row0 + r) * k + col : 0), rv);
    }
  };

  float acc[kTi][kRj][4];
#pragma unroll
  for (int i = 0; i < kTi; ++i)
#pragma unroll
    for (int j = 0; j < kRj; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < slices) load(s, s);
    CommitCopies();  // one group per slice, empty ones included, so that the wait below counts slices
  }
  // ldmatrix rows: the A (tokens) fragment of 16 x 16 takes lanes 0-15 for k 0-7, 16-31 for k 8-15; the B (rows)
  // x4 load takes two 8-row fragments, lanes 0-7 / 8-15 (k 0-7 / 8-15) for the first, 16-31 for the second.
  const int a_row = wt * kWarpTokens + (lane % 16), a_col = (lane / 16) * 8;
  const int b_row = wr * kWarpRows + (lane % 8) + (lane / 16) * 8, b_col = ((lane / 8) % 2) * 8;
  for (int s = 0; s < slices; ++s) {
    WaitCopies<kStages - 2>();  // slice s has landed (this thread's copies) ...
    __syncthreads();            // ... everyone's, and every warp is done with the stage refilled below
    if (s + kStages - 1 < slices) load((s + kStages - 1) % kStages, s + kStages - 1);
    CommitCopies();
    const __half* a = sx + (s % kStages) * kBlockTokens * kPad;
    const __half* b = sw + (s % kStages) * kBlockRows * kPad;
#pragma unroll
    for (int kk = 0; kk < kSliceK; kk += 16) {
      uint32_t af[kTi][4], bf[kRj][2];
#pragma unroll
      for (int i = 0; i < kTi; ++i) LoadMatrixX4(SharedAddress(a + (a_row + 16 * i) * kPad + kk + a_col), af[i]);
#pragma unroll
      for (int j = 0; j < kRj / 2; ++j) {
        uint32_t r[4];
        LoadMatrixX4(SharedAddress(b + (b_row + 16 * j) * kPad + kk + b_col), r);
        bf[2 * j][0] = r[0];
        bf[2 * j][1] = r[1];
        bf[2 * j + 1][0] = r[2];
        bf[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kTi; ++i)
#pragma unroll
        for (int j = 0; j < kRj; ++j) Mma16816(acc[i][j], af[i], bf[j]);
    }
  }
  WaitCopies<0>();  // no copy outlives the block (the last groups are empty)

  // Accumulator e of tile (i, j): token 16 i + lane / 4 (+ 8 for e >= 2), row 8 j + 2 (lane % 4) + e % 2.
#pragma unroll
  for (int i = 0; i < kTi; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int t = tok0 + wt * kWarpTokens + 16 * i + lane / 4 + 8 * h;
      if (t >= n) continue;
      float* yt = y + static_cast<int64_t>(t) * y_stride;
#pragma unroll
      for (int j = 0; j < kRj; ++j) {
        const int r = row0 + wr * kWarpRows + 8 * j + 2 * (lane % 4);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (r + e < rows) {
            const float v = acc[i][j][2 * h + e];
            yt[r + e] = add ? yt[r + e] + v : v;
          }
        }
      }
    }
  }
}

// out[i] = f16(x[i]) for i < 4 * count4.
__global__ void ToHalvesKernel(const float4* __restrict__ x, int64_t count4, __half2* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count4) return;
  const float4 v = x[i];
  out[2 * i] = __floats2half2_rn(v.x, v.y);
  out[2 * i + 1] = __floats2half2_rn(v.z, v.w);
}

size_t AlignScratch(size_t bytes) { return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign; }

unsigned Blocks(int64_t count, int per_block) { return static_cast<unsigned>((count + per_block - 1) / per_block); }

Status CheckShape(const DeviceMatrix& w) {
  if (w.rows <= 0 || w.cols <= 0 || w.cols % 32 != 0 || w.rows > INT32_MAX)
    return InvalidArgument("tensor-core product: a matrix of " + std::to_string(w.rows) + " x " +
                           std::to_string(w.cols) + " (expected columns a positive multiple of 32)");
  return Status::Ok();
}

// n x cols activations to f16 at xh.
Status ToHalves(const float* x, int n, int64_t cols, __half* xh, cudaStream_t s) {
  const int64_t count4 = static_cast<int64_t>(n) * cols / 4;
  ToHalvesKernel<<<Blocks(count4, 256), 256, 0, s>>>(reinterpret_cast<const float4*>(x), count4,
                                                     reinterpret_cast<__half2*>(xh));
  return CheckLaunch("tensor-core product: activations to f16");
}

// y[t * y_stride + r] (+)= sum_k xh[t][k] wh[r][k], t < n, r < rows.
Status Gemm(const __half* xh, const uint16_t* wh, int n, int rows, int64_t cols, float* y, int64_t y_stride, bool add,
            cudaStream_t s) {
  LR_RETURN_IF_ERROR(CheckCuda(
      cudaFuncSetAttribute(GemmKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes), "GemmKernel smem"));
  // Token tiles vary fastest: the blocks that read one weight tile run together (one read from memory).
  const dim3 grid(Blocks(n, kBlockTokens), Blocks(rows, kBlockRows));
  GemmKernel<<<grid, kThreads, kSmemBytes, s>>>(xh, reinterpret_cast<const __half*>(wh), n, rows,
                                                static_cast<int>(cols), y, y_stride, add ? 1 : 0);
  return CheckLaunch("GemmKernel");
}

}  // namespace

size_t MatMulScratchBytes(int64_t rows, int64_t cols, int n_tokens) {
  return AlignScratch(static_cast<size_t>(n_tokens) * cols * 2) + static_cast<size_t>(rows) * cols * 2;
}

Status MatMulTiled(const DeviceMatrix& w, const float* x, int n, float* y, int64_t y_stride, bool add,
                   const Scratch& scratch, Stream stream) {
  if (n <= 0) return Status::Ok();
  LR_RETURN_IF_ERROR(CheckShape(w));
  const size_t x_bytes = AlignScratch(static_cast<size_t>(n) * w.cols * 2);
  const size_t row_bytes = static_cast<size_t>(w.cols) * 2;
  const size_t least = MatMulScratchBytes(std::min<int64_t>(w.rows, kBlockRows), w.cols, n);
  if (scratch.p == nullptr || scratch.bytes < least)
    return InvalidArgument("MatMulTiled: " + std::to_string(scratch.bytes) + " bytes of scratch for " +
                           std::to_string(n) + " tokens of a " + std::to_string(w.rows) + " x " +
                           std::to_string(w.cols) + " matrix; it needs at least " + std::to_string(least));
  // The rows that fit the scratch at once: all, or a multiple of the block's rows.
  int64_t band = static_cast<int64_t>((scratch.bytes - x_bytes) / row_bytes);
  if (band < w.rows) {
    band -= band % kBlockRows;
  } else {
    band = w.rows;
  }
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  __half* xh = static_cast<__half*>(scratch.p);
  uint16_t* wh = reinterpret_cast<uint16_t*>(static_cast<uint8_t*>(scratch.p) + x_bytes);
  LR_RETURN_IF_ERROR(ToHalves(x, n, w.cols, xh, s));
  for (int64_t r0 = 0; r0 < w.rows; r0 += band) {
    const int rows = static_cast<int>(std::min(band, w.rows - r0));
    LR_RETURN_IF_ERROR(DequantizeHalves(w, r0, rows, wh, stream));
    LR_RETURN_IF_ERROR(Gemm(xh, wh, n, rows, w.cols, y + r0, y_stride, add, s));
  }
  return Status::Ok();
}

// The buffer: the activations' f16 copy, then the two weight buffers.
Result<std::unique_ptr<PrefillProducts>> PrefillProducts::Create(int64_t max_weights, int64_t max_cols, int n_tokens) {
  std::unique_ptr<PrefillProducts> p(new PrefillProducts());
  p->x_bytes_ = AlignScratch(static_cast<size_t>(n_tokens) * max_cols * 2);
  p->w_bytes_ = AlignScratch(static_cast<size_t>(max_weights) * 2);
  p->n_tokens_ = n_tokens;
  p->max_cols_ = max_cols;
  LR_ASSIGN_OR_RETURN(p->buffer_, DeviceBuffer::Allocate(p->x_bytes_ + 2 * p->w_bytes_, "prefill product buffers"));
  cudaStream_t s;
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  p->decode_stream_ = s;
  for (void** e : {&p->ready_[0], &p->ready_[1], &p->free_[0], &p->free_[1]}) {
    cudaEvent_t ev;
    LR_RETURN_IF_ERROR(CheckCuda(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate"));
    *e = ev;
  }
  return Result<std::unique_ptr<PrefillProducts>>(std::move(p));
}

PrefillProducts::~PrefillProducts() {
  if (decode_stream_ != nullptr) {
    cudaStreamSynchronize(static_cast<cudaStream_t>(decode_stream_));
    cudaStreamDestroy(static_cast<cudaStream_t>(decode_stream_));
  }
  for (void* e : {ready_[0], ready_[1], free_[0], free_[1]})
    if (e != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(e));
}

uint16_t* PrefillProducts::weights(int i) const {
  return reinterpret_cast<uint16_t*>(buffer_.as<uint8_t>() + x_bytes_ + static_cast<size_t>(i) * w_bytes_);
}

Status PrefillProducts::Decode(size_t i) {
  const DeviceMatrix& w = *order_[i];
  const int b = static_cast<int>(i % 2);
  cudaStream_t d = static_cast<cudaStream_t>(decode_stream_);
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamWaitEvent(d, static_cast<cudaEvent_t>(free_[b]), 0), "cudaStreamWaitEvent"));
  LR_RETURN_IF_ERROR(DequantizeHalves(w, 0, w.rows, weights(b), decode_stream_));
  return CheckCuda(cudaEventRecord(static_cast<cudaEvent_t>(ready_[b]), d), "cudaEventRecord");
}

Status PrefillProducts::Begin(const DeviceMatrix* const* order, int count, Stream stream) {
  for (int i = 0; i < count; ++i) {
    LR_RETURN_IF_ERROR(CheckShape(*order[i]));
    if (static_cast<size_t>(order[i]->rows * order[i]->cols) * 2 > w_bytes_ || order[i]->cols > max_cols_)
      return InvalidArgument("PrefillProducts: a " + std::to_string(order[i]->rows) + " x " +
                             std::to_string(order[i]->cols) + " matrix is larger than the buffers");
  }
  order_.assign(order, order + count);
  next_ = 0;
  stream_ = stream;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  for (void* e : free_)  // both buffers are free once the work queued so far is done
    LR_RETURN_IF_ERROR(CheckCuda(cudaEventRecord(static_cast<cudaEvent_t>(e), s), "cudaEventRecord"));
  return order_.empty() ? Status::Ok() : Decode(0);
}

Status PrefillProducts::MatMul(const DeviceMatrix& w, const float* x, int n, float* y, int64_t y_stride, bool add) {
  if (next_ >= order_.size() || order_[next_]->q != w.q || order_[next_]->rows != w.rows ||
      order_[next_]->cols != w.cols)
    return InvalidArgument("PrefillProducts: a product out of the order given to Begin");
  if (n <= 0 || n > n_tokens_)
    return InvalidArgument("PrefillProducts: " + std::to_string(n) + " tokens (buffers for 1.." +
                           std::to_string(n_tokens_) + ")");
  const int b = static_cast<int>(next_ % 2);
  if (next_ + 1 < order_.size()) LR_RETURN_IF_ERROR(Decode(next_ + 1));  // beside this product
  cudaStream_t s = static_cast<cudaStream_t>(stream_);
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamWaitEvent(s, static_cast<cudaEvent_t>(ready_[b]), 0), "cudaStreamWaitEvent"));
  __half* xh = buffer_.as<__half>();
  LR_RETURN_IF_ERROR(ToHalves(x, n, w.cols, xh, s));
  LR_RETURN_IF_ERROR(Gemm(xh, weights(b), n, static_cast<int>(w.rows), w.cols, y, y_stride, add, s));
  LR_RETURN_IF_ERROR(CheckCuda(cudaEventRecord(static_cast<cudaEvent_t>(free_[b]), s), "cudaEventRecord"));
  ++next_;
  return Status::Ok();
}

Scratch PrefillProducts::scratch() const { return Scratch{buffer_.get(), buffer_.bytes()}; }

Status MatMul(const DeviceMatrix& w, const float* x, int n, float* y, int64_t y_stride, bool add,
              const Scratch& scratch, Stream stream) {
  if (n <= kMaxMatVecTokens) return MatVec(w, x, n, y, y_stride, add, stream);
  return MatMulTiled(w, x, n, y, y_stride, add, scratch, stream);
}

}  // namespace lr::cuda
