// The kernels of kernels_impl.inc built for avx512 (compile flags in kvquant/CMakeLists.txt).
#include <immintrin.h>

// GCC 12's AVX-512 headers build results from _mm512_undefined_*(), which -Wmaybe-uninitialized and
// -Wuninitialized report at -O3.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <cmath>
#include <cstdint>
#include <cstring>

#include "base/half.h"
#include "kvquant/kernels.h"

namespace lr::kvquant::avx512 {
#include "kvquant/kernels_impl.inc"
}  // namespace lr::kvquant::avx512
