// Test helper: builds GGUF images byte by byte, so that each test states exactly what its file holds.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "inference/gguf.h"

namespace lr::inference::test_util {

class GgufWriter {
 public:
  GgufWriter& U8(uint8_t v) { return Raw(&v, 1); }
  GgufWriter& U32(uint32_t v) { return Raw(&v, 4); }
  GgufWriter& I32(int32_t v) { return Raw(&v, 4); }
  GgufWriter& U64(uint64_t v) { return Raw(&v, 8); }
  GgufWriter& F32(float v) { return Raw(&v, 4); }
  GgufWriter& Str(std::string_view s) {
    U64(s.size());
    return Raw(s.data(), s.size());
  }
  GgufWriter& Header(uint64_t tensors, uint64_t kvs, uint32_t version = 3) {
    Raw("GGUF", 4);
    U32(version);
    U64(tensors);
    return U64(kvs);
  }
  GgufWriter& Key(std::string_view k, GgufType t) {
    Str(k);
    return U32(static_cast<uint32_t>(t));
  }
  // Whole metadata entries.
  GgufWriter& KeyString(std::string_view k, std::string_view v) { return Key(k, GgufType::kString).Str(v); }
  GgufWriter& KeyU32(std::string_view k, uint32_t v) { return Key(k, GgufType::kU32).U32(v); }
  GgufWriter& KeyBool(std::string_view k, bool v) { return Key(k, GgufType::kBool).U8(v ? 1 : 0); }
  GgufWriter& KeyStrings(std::string_view k, const std::vector<std::string>& v) {
    Key(k, GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kString)).U64(v.size());
    for (const auto& s : v) Str(s);
    return *this;
  }
  GgufWriter& KeyF32s(std::string_view k, const std::vector<float>& v) {
    Key(k, GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kF32)).U64(v.size());
    for (float x : v) F32(x);
    return *this;
  }
  GgufWriter& KeyI32s(std::string_view k, const std::vector<int32_t>& v) {
    Key(k, GgufType::kArray).U32(static_cast<uint32_t>(GgufType::kI32)).U64(v.size());
    for (int32_t x : v) I32(x);
    return *this;
  }
  GgufWriter& TensorInfo(std::string_view name, std::vector<uint64_t> dims, ops::TensorType type, uint64_t offset) {
    Str(name);
    U32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) U64(d);
    U32(static_cast<uint32_t>(type));
    return U64(offset);
  }
  GgufWriter& PadTo(size_t alignment) {
    while (bytes.size() % alignment != 0) U8(0);
    return *this;
  }
  GgufWriter& Raw(const void* p, size_t n) {
    const uint8_t* b = static_cast<const uint8_t*>(p);
    bytes.insert(bytes.end(), b, b + n);
    return *this;
  }
  std::vector<uint8_t> bytes;
};

}  // namespace lr::inference::test_util
