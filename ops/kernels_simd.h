// The SIMD row kernels behind MatMul (ops/kernels.h), one copy per instruction set.
//
// kernels_x86.h holds the code once; kernels_avx2.cc and kernels_avx512.cc compile it with different target flags
// into the namespaces declared here, and kernels.cc picks one at run time. Internal to the kernels.
#pragma once

#include <cstdint>

#include "ops/kernels.h"

namespace lr::ops {

// MatMulRows computes y[t * y_stride + r] (add: adds to it) for rows [r0, r1) and tokens [0, n_tokens). `xq` holds
// each token's activations as BlockQ8 (w.cols / 32 blocks per token, used by the quantized types); `x` the same
// activations as f32 (used by F32, F16 and BF16); for a kRows16 matrix r0 and r1 are multiples of 16. QuantizeRowQ8 is
// kernels.h's, vectorized; GemmF32 is kernels.h's, vectorized.
#define LR_DECLARE_MATMUL_ROWS                                                                                    \
  void MatMulRows(const WeightMatrix& w, const BlockQ8* xq, const float* x, int n_tokens, int64_t r0, int64_t r1, \
                  float* y, int64_t y_stride, bool add);                                                          \
  void QuantizeRowQ8(const float* x, int64_t n, BlockQ8* out);                                                    \
  void GemmF32(int m, int n, int k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);
namespace avx2 {
LR_DECLARE_MATMUL_ROWS
}
namespace avx512 {
LR_DECLARE_MATMUL_ROWS
}
#undef LR_DECLARE_MATMUL_ROWS

}  // namespace lr::ops
