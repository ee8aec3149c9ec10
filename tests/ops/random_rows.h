// Test helpers shared by the weight-kernel tests of the CPU (tests/ops) and the GPU (tests/cuda): an f16 store and
// random GGUF rows of any weight type.
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "base/half.h"
#include "ops/tensor_type.h"

namespace lr::ops::testing {

inline void PutHalf(uint8_t* p, float v) {
  const uint16_t h = FloatToHalf(v);
  std::memcpy(p, &h, 2);
}

// Random bytes for every block, with the f16 scale fields set to moderate values (random bits there would be
// NaNs and huge numbers that say nothing about the kernels).
inline std::vector<uint8_t> RandomRows(const TensorTypeInfo& t, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  std::normal_distribution<float> value(0.0f, 1.0f);
  const size_t row_bytes = RowBytes(t, cols);
  std::vector<uint8_t> data(row_bytes * rows);
  for (auto& b : data) b = static_cast<uint8_t>(byte(rng));
  const int64_t blocks = rows * (cols / t.block_elems);
  for (int64_t i = 0; i < blocks; ++i) {
    uint8_t* blk = data.data() + i * t.block_bytes;
    switch (t.type) {
      case TensorType::kF32: {
        const float v = value(rng);
        std::memcpy(blk, &v, 4);
        break;
      }
      case TensorType::kF16: PutHalf(blk, value(rng)); break;
      case TensorType::kBF16: {
        const float v = value(rng);
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        const uint16_t top = static_cast<uint16_t>(bits >> 16);
        std::memcpy(blk, &top, 2);
        break;
      }
      case TensorType::kQ4_0:
      case TensorType::kQ8_0: PutHalf(blk, scale(rng)); break;
      case TensorType::kQ4_1:
      case TensorType::kQ4_K:
      case TensorType::kQ5_K:
        PutHalf(blk, scale(rng));
        PutHalf(blk + 2, scale(rng));
        break;
      case TensorType::kQ6_K: PutHalf(blk + 208, scale(rng)); break;
    }
  }
  return data;
}

}  // namespace lr::ops::testing
