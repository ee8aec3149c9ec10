// Weight tensor types as GGUF stores them (ggml's type ids) and their block layout.
//
// A tensor's rows are sequences of blocks; a block holds `block_elems` values in `block_bytes` bytes. The loader uses
// this table to validate sizes; the kernels (ops/kernels.h) decode and multiply the blocks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace lr::ops {

enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ8_0 = 8,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct TensorTypeInfo {
  TensorType type;
  std::string_view name;  // as ggml names it: "f32", "q4_K", ...
  int block_elems;        // values per block
  int block_bytes;        // bytes per block
};

// The layout of a supported type, or nullopt for an id this build does not handle (the loader reports it by name
// of the tensor, with the numeric id).
std::optional<TensorTypeInfo> LookupTensorType(uint32_t ggml_type_id);

// Bytes of a row of `n` values; n must be a multiple of the type's block_elems (callers check with RowIsWhole).
inline size_t RowBytes(const TensorTypeInfo& t, int64_t n) {
  return static_cast<size_t>(n / t.block_elems) * static_cast<size_t>(t.block_bytes);
}
inline bool RowIsWhole(const TensorTypeInfo& t, int64_t n) { return n % t.block_elems == 0; }

}  // namespace lr::ops
