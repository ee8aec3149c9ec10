// AVX2 + FMA + F16C build of the row kernels (compile flags set in inference/CMakeLists.txt).
#define LR_SIMD_NS avx2
#include "ops/kernels_x86.h"
