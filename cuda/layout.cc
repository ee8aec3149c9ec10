// Host side of the device weight layout (kernels.h): sizes and the split of Q4_0 / Q4_1 / Q8_0 blocks.
#include <cstring>

#include "cuda/kernels.h"

namespace lr::cuda {

bool IsSplit(WeightType t) { return t == WeightType::kQ4_0 || t == WeightType::kQ4_1 || t == WeightType::kQ8_0; }

bool IsSupported(uint32_t id) {
  switch (static_cast<WeightType>(id)) {
    case WeightType::kF32:
    case WeightType::kF16:
    case WeightType::kBF16:
    case WeightType::kQ4_0:
    case WeightType::kQ4_1:
    case WeightType::kQ8_0:
    case WeightType::kQ4_K:
    case WeightType::kQ5_K:
    case WeightType::kQ6_K: return true;
  }
  return false;
}

size_t GgufRowBytes(WeightType t, int64_t cols) {
  const size_t n = static_cast<size_t>(cols);
  switch (t) {
    case WeightType::kF32: return 4 * n;
    case WeightType::kF16:
    case WeightType::kBF16: return 2 * n;
    case WeightType::kQ4_0: return n / 32 * 18;
    case WeightType::kQ4_1: return n / 32 * 20;
    case WeightType::kQ8_0: return n / 32 * 34;
    case WeightType::kQ4_K: return n / 256 * 144;
    case WeightType::kQ5_K: return n / 256 * 176;
    case WeightType::kQ6_K: return n / 256 * 210;
  }
  return 0;
}

size_t QuantRowBytes(WeightType t, int64_t cols) {
  const size_t blocks = static_cast<size_t>(cols) / 32;
  switch (t) {
    case WeightType::kQ4_0:
    case WeightType::kQ4_1: return blocks * 16;
    case WeightType::kQ8_0: return blocks * 32;
    default: return GgufRowBytes(t, cols);
  }
}

size_t ScaleBytesPerBlock(WeightType t) {
  switch (t) {
    case WeightType::kQ4_0:
    case WeightType::kQ8_0: return 2;
    case WeightType::kQ4_1: return 4;
    default: return 0;
  }
}

void SplitBlocks(WeightType t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* q, uint8_t* scales) {
  if (!IsSplit(t)) {
    std::memcpy(q, src, GgufRowBytes(t, cols) * static_cast<size_t>(rows));
    return;
  }
  const size_t blocks = static_cast<size_t>(rows) * static_cast<size_t>(cols / 32);
  const size_t block_bytes = GgufRowBytes(t, 32);
  const size_t header = ScaleBytesPerBlock(t);
  const size_t quants = block_bytes - header;
  for (size_t b = 0; b < blocks; ++b) {
    std::memcpy(scales + b * header, src + b * block_bytes, header);
    std::memcpy(q + b * quants, src + b * block_bytes + header, quants);
  }
}

}  // namespace lr::cuda
