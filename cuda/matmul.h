// The products of a prefill step with each matrix's decode run beside the product before it.
//
// The tensor-core product multiplies f16 copies of a matrix's rows (kernels.h: MatMulTiled). Decoding a matrix is
// memory-bound, the product compute-bound: PrefillProducts decodes the step's next matrix (DequantizeHalves) on a
// second stream into one of two f16 buffers while the tensor cores multiply with the other, so that the decode uses
// bandwidth the product leaves unused (what it gains against the contention it adds: docs/RESULTS.md). Events order
// the buffers: a decode waits until the product that used its buffer two products before is done, a product until
// its matrix is decoded.
//
// A step names its products' matrices in order (Begin), then calls MatMul once per matrix in that order, on the
// stream given to Begin. Needs no CUDA headers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "base/status.h"
#include "cuda/device.h"
#include "cuda/kernels.h"

namespace lr::cuda {

class PrefillProducts {
 public:
  // Buffers for matrices of up to max_weights values and up to n_tokens x max_cols activations.
  static Result<std::unique_ptr<PrefillProducts>> Create(int64_t max_weights, int64_t max_cols, int n_tokens);
  ~PrefillProducts();
  PrefillProducts(const PrefillProducts&) = delete;
  PrefillProducts& operator=(const PrefillProducts&) = delete;

  // Starts a step whose products take order[0..count) in that order (the matrices outlive the step) on `stream`;
  // queues the first decode behind the work queued on `stream` so far.
  Status Begin(const DeviceMatrix* const* order, int count, Stream stream);
  // The step's next product: y[t * y_stride + r] (+ with add)= sum_c W[r][c] x[t * cols + c], t < n; w must be the
  // next matrix of the order (the same weights: a copy of its DeviceMatrix will do). Queues the decode of the one after
  // it first.
  Status MatMul(const DeviceMatrix& w, const float* x, int n, float* y, int64_t y_stride, bool add);
  // All the buffers as MatMulTiled's scratch (for products outside the order, once the step's ordered products are
  // queued: every decode is then ordered before them).
  Scratch scratch() const;

 private:
  PrefillProducts() = default;
  uint16_t* weights(int i) const;
  // Queues the decode of order_[i] into buffer i % 2 on the decode stream.
  Status Decode(size_t i);

  DeviceBuffer buffer_;  // the activations' f16 copy (x_bytes_), then two weight buffers of w_bytes_
  size_t x_bytes_ = 0, w_bytes_ = 0;
  int n_tokens_ = 0;
  int64_t max_cols_ = 0;
  void* decode_stream_ = nullptr;  // cudaStream_t
  void* ready_[2] = {};            // cudaEvent_t: buffer i decoded
  void* free_[2] = {};             // cudaEvent_t: buffer i's product done
  std::vector<const DeviceMatrix*> order_;
  size_t next_ = 0;
  Stream stream_ = nullptr;
};

}  // namespace lr::cuda
