// Device code shared by the KV codec (kv_codec.cu) and attention on the codes (kv_attention.cu): kvquant's rotations
// applied to rows in shared memory by a whole block, the page layout's row addresses, and a block's code layout.
// The rotations repeat kvquant/rotation.cc's operations in the same order, so that a file compiled without
// contracted multiply-adds (kv_codec.cu) reproduces the CPU's rows bit for bit.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kv_codec.h"
#include "kvquant/rotation.h"

namespace lr::cuda::kvdev {

constexpr int kHadamard = static_cast<int>(kvquant::RotationKind::kHadamard);
constexpr int kGivens = static_cast<int>(kvquant::RotationKind::kGivens);
constexpr int kQuaternion = static_cast<int>(kvquant::RotationKind::kQuaternion);

struct Quat {
  float a, b, c, d;
};
__device__ __forceinline__ Quat QMul(const Quat& p, const Quat& q) {
  return {p.a * q.a - p.b * q.b - p.c * q.c - p.d * q.d, p.a * q.b + p.b * q.a + p.c * q.d - p.d * q.c,
          p.a * q.c - p.b * q.d + p.c * q.a + p.d * q.b, p.a * q.d + p.b * q.c - p.c * q.b + p.d * q.a};
}
__device__ __forceinline__ Quat QConj(const Quat& q) { return {q.a, -q.b, -q.c, -q.d}; }

// Rotates n_rows rows of `dim` floats at y (shared memory, row r at y + r * stride) by the rotation with parameters
// p (one (layer, head)'s): forward (y = R y) or inverse (y = R^T y). Called by every thread of the block; ends with
// __syncthreads().
__device__ inline void RotateRows(float* y, int n_rows, int stride, int dim, int kind, const float* p, bool inverse) {
  const int nt = blockDim.x, t = threadIdx.x;
  if (kind == kHadamard) {
    // Segments of decreasing powers of two (kvquant::Rotation): y = H diag(s) x / sqrt(n), inverse diag(s) H y /
    // sqrt(n).
    for (int start = 0, rest = dim; rest > 0;) {
      int len = 1;
      while (len * 2 <= rest) len *= 2;
      if (!inverse) {
        for (int idx = t; idx < n_rows * len; idx += nt) {
          const int r = idx / len, i = start + idx % len;
          y[r * stride + i] = y[r * stride + i] * p[i];
        }
      }
      __syncthreads();
      for (int h = 1; h < len; h *= 2) {
        for (int idx = t; idx < n_rows * (len / 2); idx += nt) {
          const int r = idx / (len / 2), k = idx % (len / 2);
          const int j = start + (k / h) * 2 * h + k % h;
          float* row = y + r * stride;
          const float a = row[j], b = row[j + h];
          row[j] = a + b;
          row[j + h] = a - b;
        }
        __syncthreads();
      }
      const float norm = 1.0f / sqrtf(static_cast<float>(len));
      for (int idx = t; idx < n_rows * len; idx += nt) {
        const int r = idx / len, i = start + idx % len;
        if (inverse) {
          y[r * stride + i] *= norm * p[i];
        } else {
          y[r * stride + i] *= norm;
        }
      }
      __syncthreads();
      start += len;
      rest -= len;
    }
  } else if (kind == kGivens) {
    for (int idx = t; idx < n_rows * (dim / 2); idx += nt) {
      const int r = idx / (dim / 2), i = 2 * (idx % (dim / 2));
      float* row = y + r * stride;
      const float c = p[i], s = p[i + 1], a = row[i], b = row[i + 1];
      if (inverse) {
        row[i] = c * a + s * b;
        row[i + 1] = -s * a + c * b;
      } else {
        row[i] = c * a - s * b;
        row[i + 1] = s * a + c * b;
      }
    }
    __syncthreads();
  } else if (kind == kQuaternion) {
    for (int idx = t; idx < n_rows * (dim / 4); idx += nt) {
      const int r = idx / (dim / 4), i = 4 * (idx % (dim / 4));
      float* row = y + r * stride;
      const float* q = p + 2 * i;
      const Quat l{q[0], q[1], q[2], q[3]}, rr{q[4], q[5], q[6], q[7]}, v{row[i], row[i + 1], row[i + 2], row[i + 3]};
      const Quat w = inverse ? QMul(QMul(QConj(l), v), rr) : QMul(QMul(l, v), QConj(rr));
      row[i] = w.a, row[i + 1] = w.b, row[i + 2] = w.c, row[i + 3] = w.d;
    }
    __syncthreads();
  } else {
    __syncthreads();
  }
}

// The rows of (layer, head) in a page: 32 key rows, or 32 value rows.
__device__ __forceinline__ size_t RowsOffset(const KvPages& pg, bool values, int layer, int head) {
  const size_t lh = static_cast<size_t>(layer) * pg.n_head_kv + head;
  if (!values) return lh * kPageTokens * pg.k_row_bytes;
  return static_cast<size_t>(pg.n_layer) * pg.n_head_kv * kPageTokens * pg.k_row_bytes +
         lh * kPageTokens * pg.v_row_bytes;
}

// Block b's element count and its runs' code counts (the short last block's rule of kvquant: one run of the block's
// length, or hx3's size / 2 - 16 four-bit codes and the rest three-bit).
struct BlockRuns {
  int size, c0, c1;
};
__device__ __forceinline__ BlockRuns RunsOf(const DeviceRowFormat& f, int b) {
  const int size = min(f.block_elems, f.dim - b * f.block_elems);
  if (size == f.block_elems) return {size, f.count[0], f.count[1]};
  if (f.n_runs == 1) return {size, size, 0};
  return {size, size / 2 - 16, size - (size / 2 - 16)};
}

}  // namespace lr::cuda::kvdev
