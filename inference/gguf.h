// GGUF files (ggml's model container, versions 2 and 3): metadata key/values and weight tensors.
//
// Layout: "GGUF", version u32, tensor_count u64, kv_count u64, then kv_count entries (key string, value type u32,
// value), then tensor_count tensor infos (name string, n_dims u32, dims u64[n_dims], ggml type u32, offset u64), then
// padding up to `general.alignment` (default 32) and the data section. Strings are u64 length + bytes; all numbers
// are little-endian.
//
// Open() maps the file read-only and validates everything before any of it is used: every count, length and offset
// against the bytes that remain, value and element types, tensor ranks (1..4), dims (positive, product without
// overflow), the row length against the type's block size, unknown or unsupported ggml types, duplicate keys and
// tensor names, the alignment (a power of two), each tensor's offset (aligned, inside the file, not overlapping
// another tensor). A truncated or damaged file gives kCorrupt naming the key or tensor; a valid file with something
// this build cannot use (version 1, a nested array, a weight type without kernels) gives kUnsupported.
//
// Tensor data pointers point into the mapping and stay valid for the life of the GgufFile (moves included).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "ops/tensor_type.h"

namespace lr::inference {

// GGUF metadata value types (the u32 stored before each value).
enum class GgufType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// "u32", "string", ...; "type N" for an id outside the enum.
std::string GgufTypeName(uint32_t type);

class GgufFile {
 public:
  // Maps and validates `path`. kNotFound when the file does not exist, kIo when it cannot be read.
  static Result<GgufFile> Open(const std::string& path);
  // Validates a GGUF image held in memory (tests, the fuzzer). `name` stands in for the path in messages.
  static Result<GgufFile> FromBytes(std::vector<uint8_t> bytes, std::string name);

  GgufFile(GgufFile&& other) noexcept;
  GgufFile& operator=(GgufFile&& other) noexcept;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;
  ~GgufFile();  // unmaps

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }

  // Metadata. A missing key is kNotFound naming it; a value of another type, or one that does not fit the requested
  // type, is kCorrupt naming the key, the type found and the type expected.
  bool Has(std::string_view key) const;
  Result<uint32_t> GetU32(std::string_view key) const;  // any integer type whose value fits
  Result<uint64_t> GetU64(std::string_view key) const;  // any integer type, values 0 to 2^63-1
  Result<float> GetF32(std::string_view key) const;     // f32 or f64
  Result<bool> GetBool(std::string_view key) const;
  Result<std::string> GetString(std::string_view key) const;
  Result<std::vector<std::string>> GetStringArray(std::string_view key) const;
  Result<std::vector<float>> GetF32Array(std::string_view key) const;    // array of f32 or f64
  Result<std::vector<int32_t>> GetI32Array(std::string_view key) const;  // array of any integer type whose items fit
  std::vector<std::string> Keys() const;                                 // in file order

  // Tensors. shape[0] is the innermost (contiguous) dimension, as ggml's ne[0].
  struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    ops::TensorTypeInfo type;
    const uint8_t* data;
    size_t bytes;
  };
  const std::vector<Tensor>& tensors() const { return tensors_; }
  Result<const Tensor*> FindTensor(std::string_view name) const;  // kNotFound naming the tensor

 private:
  // Where one metadata value lies in the image; getters decode it on demand.
  struct Value {
    GgufType type;
    GgufType elem_type;  // arrays only
    uint64_t count;      // arrays only
    size_t offset;       // of the scalar, the string's length field, or the first array item
  };

  GgufFile() = default;
  Status Parse();
  Result<Value> Find(std::string_view key) const;
  Status TypeError(std::string_view key, const Value& v, std::string_view expected) const;
  // The integer item at `offset` of integer type `type` if it lies in [min, max]; kCorrupt naming `key` otherwise.
  Result<int64_t> IntegerAt(std::string_view key, GgufType type, size_t offset, int64_t min, int64_t max) const;
  std::string_view StringAt(size_t offset) const;  // offset of an already validated string's length field

  std::string path_;
  const uint8_t* base_ = nullptr;  // the image
  size_t size_ = 0;
  void* map_ = nullptr;         // set when the image is an mmap of path_
  std::vector<uint8_t> owned_;  // set when the image came from FromBytes
  uint32_t version_ = 0;
  size_t alignment_ = 32;
  std::vector<std::string> key_order_;
  std::map<std::string, Value, std::less<>> values_;
  std::vector<Tensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace lr::inference
