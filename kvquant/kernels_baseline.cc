// The kernels of kernels_impl.inc built for baseline x86-64 (compile flags in kvquant/CMakeLists.txt).
#include <immintrin.h>

// GCC 12's AVX-512 headers build results from _mm512_undefined_*(), which -Wmaybe-uninitialized reports at -O3.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "base/half.h"
#include "kvquant/codes.h"
#include "kvquant/kernels.h"

namespace lr::kvquant::baseline {
#include "kvquant/kernels_impl.inc"
}  // namespace lr::kvquant::baseline
