// AVX-512 VNNI build of the row kernels: 256-bit vectors with vpdpbusd (flags set in inference/CMakeLists.txt).
#define LR_SIMD_NS avx512
#include "inference/kernels_x86.h"
