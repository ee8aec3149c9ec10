// Packing of code runs (layouts in kvquant/kvquant.h): n codes of `bits` bits (2, 3, 4 or 8; n a multiple of 16)
// to n * bits / 8 bytes and back. Plain scalar code, the reference for the kernels' in-register unpacking.
#pragma once

#include <cstdint>

namespace lr::kvquant {

void PackCodes(int bits, int n, const uint8_t* codes, uint8_t* dst);
void UnpackCodes(int bits, int n, const uint8_t* src, uint8_t* codes);

}  // namespace lr::kvquant
