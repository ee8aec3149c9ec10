// AVX-512 VNNI build of the row kernels: 512-bit q4_1 and q8_0, the other types on 256-bit vectors with vpdpbusd
// (flags set in inference/CMakeLists.txt).
#define LR_SIMD_NS avx512
#include "ops/kernels_x86.h"
