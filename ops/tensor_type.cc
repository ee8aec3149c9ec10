#include "ops/tensor_type.h"

namespace lr::ops {

std::optional<TensorTypeInfo> LookupTensorType(uint32_t id) {
  static constexpr TensorTypeInfo kTypes[] = {
      {TensorType::kF32, "f32", 1, 4},
      {TensorType::kF16, "f16", 1, 2},
      {TensorType::kQ4_0, "q4_0", 32, 2 + 16},
      {TensorType::kQ4_1, "q4_1", 32, 2 + 2 + 16},
      {TensorType::kQ8_0, "q8_0", 32, 2 + 32},
      {TensorType::kQ4_K, "q4_K", 256, 2 + 2 + 12 + 128},
      {TensorType::kQ5_K, "q5_K", 256, 2 + 2 + 12 + 32 + 128},
      {TensorType::kQ6_K, "q6_K", 256, 128 + 64 + 16 + 2},
      {TensorType::kBF16, "bf16", 1, 2},
  };
  for (const auto& t : kTypes)
    if (static_cast<uint32_t>(t.type) == id) return t;
  return std::nullopt;
}

}  // namespace lr::ops
