// Device helpers of every .cu file: warp reductions and the f16 load of cache and weight bytes.
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

namespace lr::cuda {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// The f16 value at p (2-byte aligned).
__device__ __forceinline__ float Half(const uint8_t* p) { return __half2float(*reinterpret_cast<const __half*>(p)); }

}  // namespace lr::cuda
