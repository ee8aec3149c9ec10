// The instruction sets the CPU kernels are built for, and which of them this CPU runs: one enum and one detection
// for every module with SIMD kernels (ops/ and kvquant/).
//
// Each kernel source is compiled once per level (baseline x86-64; AVX2 with FMA and F16C; AVX-512 F/BW/VL/DQ with
// VNNI and the AVX2 set) and the level is chosen at run time. A CPU with AVX-512 but without one of those extensions
// (e.g. without VNNI) runs the AVX2 build everywhere.
#pragma once

namespace lr {

enum class Isa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// "baseline", "avx2", "avx512".
const char* IsaName(Isa isa);
// Whether this CPU runs code built for `isa`.
bool IsaSupported(Isa isa);
// The highest level this CPU runs.
Isa BestIsa();

}  // namespace lr
