// Device code shared by the .cu files of the backend (kernels.cu, matvec.cu, moe.cu, mla.cu): warp and block
// reductions, the raw loads of weight bytes, the decoding of a weight sub-block into registers (Dequant8, Dequant32:
// the layout of kernels.h), and the host side's type dispatch and argument checks. Included only by .cu files (it needs
// the CUDA headers).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include "base/status.h"
#include "cuda/kernels.h"
#include "cuda/warp.cuh"

namespace lr::cuda {

inline cudaStream_t S(Stream s) { return static_cast<cudaStream_t>(s); }

// Programmatic dependent launch (sm_90; no-ops before it, and for kernels launched without LaunchEarly's attribute).
// WaitForPreviousKernel returns when the kernel before this one in the stream has finished and its writes are
// visible: an early-launched kernel reads nothing that kernel writes, and writes nothing, before it. LetNextKernelStart
// lets the next kernel's blocks start once every block of this one has called it (they wait themselves).
__device__ __forceinline__ void WaitForPreviousKernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void LetNextKernelStart() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Whether LaunchEarly launches early: the device has programmatic dependent launch (sm_90 and later), and
// LEANROTOR_CUDA_EARLY_LAUNCH is not "0" (for measuring what it gains).
inline bool EarlyLaunch() {
  static const bool early = [] {
    int device = 0, major = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess)
      return false;
    const char* env = std::getenv("LEANROTOR_CUDA_EARLY_LAUNCH");
    return major >= 9 && (env == nullptr || std::string(env) != "0");
  }();
  return early;
}

// kernel<<<blocks, threads, 0, stream>>>(args...), with programmatic stream serialization where EarlyLaunch(): its
// blocks may start once every block of the previous kernel in the stream has called LetNextKernelStart (the kernel
// waits for that one's end with WaitForPreviousKernel before it reads what that one writes). The decode step's
// kernels all launch so: the launch latency between them is hidden, and the products load their first weights
// while the kernel before finishes.
// LaunchEarlyShared: the same with `shared` bytes of dynamic shared memory.
template <typename... Params, typename... Args>
void LaunchEarlyShared(void (*kernel)(Params...), dim3 blocks, dim3 threads, size_t shared, Stream stream,
                       Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = blocks;
  config.blockDim = threads;
  config.dynamicSmemBytes = shared;
  config.stream = S(stream);
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = EarlyLaunch() ? 1 : 0;
  cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}
template <typename... Params, typename... Args>
void LaunchEarly(void (*kernel)(Params...), dim3 blocks, dim3 threads, Stream stream, Args&&... args) {
  LaunchEarlyShared(kernel, blocks, threads, 0, stream, std::forward<Args>(args)...);
}

// Quantizes value i of an array into out, as ops::QuantizeRowQ8 (bit for bit): called by the 32 lanes of a warp
// together, lane l with value 32 b + l of block b.
__device__ __forceinline__ void QuantizeWarp(float v, int64_t i, Q8Activations out) {
  const float d = WarpMax(fabsf(v)) / 127.0f;
  const float id = d > 0 ? 1.0f / d : 0.0f;
  const int q = __float2int_rn(v * id);
  out.q[i] = static_cast<int8_t>(q);
  const int sum = __reduce_add_sync(kFull, q);
  if (i % 32 == 0) reinterpret_cast<float2*>(out.ds)[i / 32] = make_float2(d, d * static_cast<float>(sum));
}

// The sum of v over a block of THREADS threads (a multiple of 32), returned to every thread. Every thread calls it.
template <int THREADS>
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float part[THREADS / 32];
  v = WarpSum(v);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0;
#pragma unroll
  for (int i = 0; i < THREADS / 32; ++i) total += part[i];
  return total;
}

__device__ __forceinline__ float Bf16Bits(uint32_t bits16) { return __uint_as_float(bits16 << 16); }

__device__ __forceinline__ uint32_t Load32(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }
// 4 bytes at a 2-byte aligned address.
__device__ __forceinline__ uint32_t Load32Unaligned2(const uint8_t* p) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
  return static_cast<uint32_t>(h[0]) | (static_cast<uint32_t>(h[1]) << 16);
}
__device__ __forceinline__ int Byte(uint32_t w, int i) { return (w >> (8 * i)) & 0xFF; }

__device__ __forceinline__ void ScaleMinK4(int j, const uint8_t* s, int* scale, int* min) {
  if (j < 4) {
    *scale = s[j] & 63;
    *min = s[j + 4] & 63;
  } else {
    *scale = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *min = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Decodes quarter q (0..3) of sub-block sb (values 32 sb .. 32 sb + 31) of row `row` of w, in registers: v[0..3] =
// values 4q .. 4q + 3 and v[4..7] = values 16 + 4q .. 16 + 4q + 3 of the sub-block. This split follows the 4-bit
// formats, where byte j holds values j and j + 16: a quarter is 4 bytes of quants. Four lanes decode a sub-block,
// so that consecutive lanes read consecutive activations (MatVec).
template <WeightType T>
__device__ __forceinline__ void Dequant8(const DeviceMatrix& w, int64_t row, int sb, int q, float* v) {
  const uint8_t* r = w.q + static_cast<size_t>(row) * w.row_bytes;
  if constexpr (T == WeightType::kF32) {
    const float4* p = reinterpret_cast<const float4*>(r) + 8 * sb + q;
    const float4 a = p[0], b = p[4];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else if constexpr (T == WeightType::kF16 || T == WeightType::kBF16) {
    const uint2* p = reinterpret_cast<const uint2*>(r + 64 * sb) + q;
    const uint2 a = p[0], b = p[4];
    const uint32_t u[4] = {a.x, a.y, b.x, b.y};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if constexpr (T == WeightType::kF16) {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&u[j]));
        v[2 * j] = f.x;
        v[2 * j + 1] = f.y;
      } else {
        v[2 * j] = Bf16Bits(u[j] & 0xffff);
        v[2 * j + 1] = Bf16Bits(u[j] >> 16);
      }
    }
  } else if constexpr (T == WeightType::kQ4_0 || T == WeightType::kQ4_1) {
    const uint32_t b = Load32(r + 16 * sb + 4 * q);
    const size_t blk = static_cast<size_t>(row) * (w.cols / 32) + sb;
    float d, m;
    if constexpr (T == WeightType::kQ4_0) {
      d = Half(w.scales + 2 * blk);
      m = -8.0f * d;
    } else {
      const float2 dm = __half22float2(*reinterpret_cast<const __half2*>(w.scales + 4 * blk));
      d = dm.x;
      m = dm.y;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = d * (Byte(b, j) & 0xF) + m;
      v[j + 4] = d * (Byte(b, j) >> 4) + m;
    }
  } else if constexpr (T == WeightType::kQ8_0) {
    const size_t blk = static_cast<size_t>(row) * (w.cols / 32) + sb;
    const float d = Half(w.scales + 2 * blk);
    const uint32_t lo = Load32(r + 32 * sb + 4 * q), hi = Load32(r + 32 * sb + 16 + 4 * q);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      v[j] = d * static_cast<int8_t>(Byte(lo, j));
      v[j + 4] = d * static_cast<int8_t>(Byte(hi, j));
    }
  } else if constexpr (T == WeightType::kQ4_K || T == WeightType::kQ5_K) {
    constexpr int kBytes = T == WeightType::kQ4_K ? 144 : 176;
    constexpr int kQs = T == WeightType::kQ4_K ? 16 : 48;
    const uint8_t* b = r + kBytes * (sb / 8);
    const int j = sb % 8;
    const float2 dd = __half22float2(*reinterpret_cast<const __half2*>(b));
    const uint32_t s0 = Load32(b + 4), s1 = Load32(b + 8), s2 = Load32(b + 12);
    const uint8_t s[12] = {
        static_cast<uint8_t>(Byte(s0, 0)), static_cast<uint8_t>(Byte(s0, 1)), static_cast<uint8_t>(Byte(s0, 2)),
        static_cast<uint8_t>(Byte(s0, 3)), static_cast<uint8_t>(Byte(s1, 0)), static_cast<uint8_t>(Byte(s1, 1)),
        static_cast<uint8_t>(Byte(s1, 2)), static_cast<uint8_t>(Byte(s1, 3)), static_cast<uint8_t>(Byte(s2, 0)),
        static_cast<uint8_t>(Byte(s2, 1)), static_cast<uint8_t>(Byte(s2, 2)), static_cast<uint8_t>(Byte(s2, 3))};
    int sc, mn;
    ScaleMinK4(j, s, &sc, &mn);
    const float d = dd.x * sc, m = dd.y * mn;
    const int shift = (j % 2) * 4;
    const uint8_t* qs = b + kQs + 32 * (j / 2);
    const uint32_t lo = Load32(qs + 4 * q), hi = Load32(qs + 16 + 4 * q);
    uint32_t hlo = 0, hhi = 0;
    if constexpr (T == WeightType::kQ5_K) {
      hlo = Load32(b + 16 + 4 * q);
      hhi = Load32(b + 32 + 4 * q);
    }
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      int a = (Byte(lo, l) >> shift) & 0xF, c = (Byte(hi, l) >> shift) & 0xF;
      if constexpr (T == WeightType::kQ5_K) {
        a |= ((Byte(hlo, l) >> j) & 1) << 4;
        c |= ((Byte(hhi, l) >> j) & 1) << 4;
      }
      v[l] = d * a - m;
      v[l + 4] = d * c - m;
    }
  } else if constexpr (T == WeightType::kQ6_K) {
    const uint8_t* b = r + 210 * (sb / 8);
    const int j = sb % 8, half = j / 4, k = j % 4;
    const uint8_t* ql = b + 64 * half + 32 * (k % 2);
    const uint8_t* qh = b + 128 + 32 * half;
    const uint32_t l0 = Load32Unaligned2(ql + 4 * q), l1 = Load32Unaligned2(ql + 16 + 4 * q);
    const uint32_t h0 = Load32Unaligned2(qh + 4 * q), h1 = Load32Unaligned2(qh + 16 + 4 * q);
    const float d = Half(b + 208);
    const uint16_t sc2 = *reinterpret_cast<const uint16_t*>(b + 192 + 8 * half + 2 * k);
    const float d0 = d * static_cast<int8_t>(sc2 & 0xff), d1 = d * static_cast<int8_t>(sc2 >> 8);
    const int lshift = 4 * (k / 2), hshift = 2 * k;
#pragma unroll
    for (int l = 0; l < 4; ++l) {
      v[l] = d0 * ((((Byte(l0, l) >> lshift) & 0xF) | (((Byte(h0, l) >> hshift) & 3) << 4)) - 32);
      v[l + 4] = d1 * ((((Byte(l1, l) >> lshift) & 0xF) | (((Byte(h1, l) >> hshift) & 3) << 4)) - 32);
    }
  }
}

// The whole sub-block sb, v[0..31] in order (four quarters).
template <WeightType T>
__device__ __forceinline__ void Dequant32(const DeviceMatrix& w, int64_t row, int sb, float* v) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    float e[8];
    Dequant8<T>(w, row, sb, q, e);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      v[4 * q + i] = e[i];
      v[16 + 4 * q + i] = e[4 + i];
    }
  }
}

// Calls f(std::integral_constant<WeightType, T>()) for the run-time type t.
template <WeightType T>
using TypeTag = std::integral_constant<WeightType, T>;
template <typename F>
Status DispatchType(WeightType t, F&& f) {
  switch (t) {
    case WeightType::kF32: f(TypeTag<WeightType::kF32>()); break;
    case WeightType::kF16: f(TypeTag<WeightType::kF16>()); break;
    case WeightType::kBF16: f(TypeTag<WeightType::kBF16>()); break;
    case WeightType::kQ4_0: f(TypeTag<WeightType::kQ4_0>()); break;
    case WeightType::kQ4_1: f(TypeTag<WeightType::kQ4_1>()); break;
    case WeightType::kQ8_0: f(TypeTag<WeightType::kQ8_0>()); break;
    case WeightType::kQ4_K: f(TypeTag<WeightType::kQ4_K>()); break;
    case WeightType::kQ5_K: f(TypeTag<WeightType::kQ5_K>()); break;
    case WeightType::kQ6_K: f(TypeTag<WeightType::kQ6_K>()); break;
    default: return Unsupported("CUDA kernels: weight type " + std::to_string(static_cast<uint32_t>(t)));
  }
  return Status::Ok();
}

inline Status CheckMatrix(const DeviceMatrix& w) {
  const int64_t block =
      w.type == WeightType::kQ4_K || w.type == WeightType::kQ5_K || w.type == WeightType::kQ6_K ? 256 : 32;
  if (w.cols <= 0 || w.cols % block != 0 || w.rows <= 0)
    return InvalidArgument("CUDA matrix of " + std::to_string(w.rows) + " x " + std::to_string(w.cols) +
                           ": columns must be a positive multiple of " + std::to_string(block));
  return Status::Ok();
}

inline unsigned Blocks(int64_t count, int threads) { return static_cast<unsigned>((count + threads - 1) / threads); }

}  // namespace lr::cuda
