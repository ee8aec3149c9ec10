#include "inference/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

namespace lr::inference {
namespace {

constexpr uint32_t kMaxDims = 4;
constexpr size_t kDefaultAlignment = 32;

// Size of one scalar of `t`, or 0 for string/array/unknown ids.
size_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kBool: return 1;
    case GgufType::kU16:
    case GgufType::kI16: return 2;
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kF32: return 4;
    case GgufType::kU64:
    case GgufType::kI64:
    case GgufType::kF64: return 8;
    case GgufType::kString:
    case GgufType::kArray: return 0;
  }
  return 0;
}

bool IsInteger(GgufType t) {
  switch (t) {
    case GgufType::kU8:
    case GgufType::kI8:
    case GgufType::kU16:
    case GgufType::kI16:
    case GgufType::kU32:
    case GgufType::kI32:
    case GgufType::kU64:
    case GgufType::kI64: return true;
    default: return false;
  }
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Bounds-checked little-endian reads over the image. Every failure names what was being read.
class Reader {
 public:
  Reader(const uint8_t* base, size_t size, const std::string& path) : base_(base), size_(size), path_(path) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }

  Status Skip(uint64_t n, const std::string& what) {
    if (n > remaining())
      return Corrupt(path_ + ": " + what + " needs " + std::to_string(n) + " bytes at offset " + std::to_string(pos_) +
                     ", but the file has " + std::to_string(remaining()) + " left");
    pos_ += static_cast<size_t>(n);
    return Status::Ok();
  }

  template <typename T>
  Result<T> Read(const std::string& what) {
    size_t at = pos_;
    LR_RETURN_IF_ERROR(Skip(sizeof(T), what));
    return Load<T>(base_ + at);
  }

  // A string: u64 length then bytes. Returns the bytes.
  Result<std::string_view> ReadString(const std::string& what) {
    LR_ASSIGN_OR_RETURN(uint64_t len, Read<uint64_t>(what + " (string length)"));
    size_t at = pos_;
    LR_RETURN_IF_ERROR(Skip(len, what + " (string of " + std::to_string(len) + " bytes)"));
    return std::string_view(reinterpret_cast<const char*>(base_ + at), static_cast<size_t>(len));
  }

 private:
  const uint8_t* base_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

std::string Quote(std::string_view s) {
  std::string q(1, '\'');
  q.append(s);
  q.push_back('\'');
  return q;
}

}  // namespace

std::string GgufTypeName(uint32_t type) {
  static constexpr const char* kNames[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                           "bool", "string", "array", "u64", "i64", "f64"};
  if (type < std::size(kNames)) return kNames[type];
  return "type " + std::to_string(type);
}

Result<GgufFile> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return NotFound("no such GGUF file: " + path);
    return IoError("cannot open " + path + ": " + std::strerror(errno));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status s = IoError("cannot stat " + path + ": " + std::strerror(errno));
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgument(path + " is not a regular file");
  }
  GgufFile f;
  f.path_ = path;
  f.size_ = static_cast<size_t>(st.st_size);
  if (f.size_ > 0) {
    void* m = ::mmap(nullptr, f.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      Status s = IoError("cannot map " + path + ": " + std::strerror(errno));
      ::close(fd);
      return s;
    }
    f.map_ = m;
    f.base_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  LR_RETURN_IF_ERROR(f.Parse());
  return f;
}

Result<GgufFile> GgufFile::FromBytes(std::vector<uint8_t> bytes, std::string name) {
  GgufFile f;
  f.path_ = std::move(name);
  f.owned_ = std::move(bytes);
  f.base_ = f.owned_.data();
  f.size_ = f.owned_.size();
  LR_RETURN_IF_ERROR(f.Parse());
  return f;
}

GgufFile::GgufFile(GgufFile&& o) noexcept { *this = std::move(o); }

GgufFile& GgufFile::operator=(GgufFile&& o) noexcept {
  if (this == &o) return *this;
  if (map_ != nullptr) ::munmap(map_, size_);
  path_ = std::move(o.path_);
  base_ = o.base_;
  size_ = o.size_;
  map_ = o.map_;
  owned_ = std::move(o.owned_);  // the heap buffer moves with its address, so base_ and tensor data stay valid
  version_ = o.version_;
  alignment_ = o.alignment_;
  key_order_ = std::move(o.key_order_);
  values_ = std::move(o.values_);
  tensors_ = std::move(o.tensors_);
  tensor_index_ = std::move(o.tensor_index_);
  o.base_ = nullptr;
  o.size_ = 0;
  o.map_ = nullptr;
  return *this;
}

GgufFile::~GgufFile() {
  if (map_ != nullptr) ::munmap(map_, size_);
}

Status GgufFile::Parse() {
  Reader r(base_, size_, path_);
  LR_ASSIGN_OR_RETURN(uint32_t magic, r.Read<uint32_t>("magic"));
  if (std::memcmp(&magic, "GGUF", 4) != 0)
    return Corrupt(path_ + ": not a GGUF file (the first 4 bytes are not 'GGUF')");
  LR_ASSIGN_OR_RETURN(version_, r.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3)
    return Unsupported(path_ + ": GGUF version " + std::to_string(version_) + " (this build reads versions 2 and 3)");
  LR_ASSIGN_OR_RETURN(uint64_t tensor_count, r.Read<uint64_t>("tensor_count"));
  LR_ASSIGN_OR_RETURN(uint64_t kv_count, r.Read<uint64_t>("kv_count"));
  // Each entry takes at least 12 bytes (key length + type; name length + n_dims), so a count beyond that is damage,
  // caught here before anything is reserved for it.
  if (kv_count > r.remaining() / 12)
    return Corrupt(path_ + ": kv_count " + std::to_string(kv_count) + " is more than the file can hold");
  if (tensor_count > r.remaining() / 12)
    return Corrupt(path_ + ": tensor_count " + std::to_string(tensor_count) + " is more than the file can hold");

  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string entry = "metadata entry " + std::to_string(i);
    LR_ASSIGN_OR_RETURN(std::string_view key_view, r.ReadString(entry + " key"));
    std::string key(key_view);
    std::string what = "key " + Quote(key);
    if (values_.count(key) != 0) return Corrupt(path_ + ": duplicate " + what);
    LR_ASSIGN_OR_RETURN(uint32_t type_id, r.Read<uint32_t>(what + " value type"));
    if (type_id > static_cast<uint32_t>(GgufType::kF64))
      return Corrupt(path_ + ": " + what + " has unknown value type " + std::to_string(type_id));
    Value v{static_cast<GgufType>(type_id), GgufType::kU8, 0, r.pos()};
    if (v.type == GgufType::kString) {
      LR_RETURN_IF_ERROR(r.ReadString(what + " value").status());
    } else if (v.type == GgufType::kArray) {
      LR_ASSIGN_OR_RETURN(uint32_t elem_id, r.Read<uint32_t>(what + " array item type"));
      if (elem_id > static_cast<uint32_t>(GgufType::kF64))
        return Corrupt(path_ + ": " + what + " is an array of unknown item type " + std::to_string(elem_id));
      v.elem_type = static_cast<GgufType>(elem_id);
      if (v.elem_type == GgufType::kArray)
        return Unsupported(path_ + ": " + what + " is an array of arrays (not supported)");
      LR_ASSIGN_OR_RETURN(v.count, r.Read<uint64_t>(what + " array length"));
      v.offset = r.pos();
      if (v.elem_type == GgufType::kString) {
        if (v.count > r.remaining() / 8)
          return Corrupt(path_ + ": " + what + " claims " + std::to_string(v.count) +
                         " strings, more than the file can hold");
        for (uint64_t j = 0; j < v.count; ++j)
          LR_RETURN_IF_ERROR(r.ReadString(what + " item " + std::to_string(j)).status());
      } else {
        size_t item = ScalarSize(v.elem_type);
        if (v.count > r.remaining() / item)
          return Corrupt(path_ + ": " + what + " claims " + std::to_string(v.count) + " items of " +
                         GgufTypeName(elem_id) + ", more than the file can hold");
        LR_RETURN_IF_ERROR(r.Skip(v.count * item, what + " array items"));
      }
    } else {
      LR_RETURN_IF_ERROR(r.Skip(ScalarSize(v.type), what + " value"));
    }
    values_.emplace(key, v);
    key_order_.push_back(std::move(key));
  }

  if (Has("general.alignment")) {
    LR_ASSIGN_OR_RETURN(uint32_t a, GetU32("general.alignment"));
    if (a == 0 || (a & (a - 1)) != 0)
      return Corrupt(path_ + ": general.alignment is " + std::to_string(a) + ", expected a power of two");
    alignment_ = a;
  } else {
    alignment_ = kDefaultAlignment;
  }

  // Tensor infos. Offsets are checked once the data section's start is known.
  struct Info {
    uint64_t offset;
  };
  std::vector<Info> infos;
  tensors_.reserve(static_cast<size_t>(tensor_count));
  for (uint64_t i = 0; i < tensor_count; ++i) {
    LR_ASSIGN_OR_RETURN(std::string_view name_view, r.ReadString("tensor info " + std::to_string(i) + " name"));
    Tensor t{std::string(name_view), {}, {}, nullptr, 0};
    std::string what = "tensor " + Quote(t.name);
    if (tensor_index_.count(t.name) != 0) return Corrupt(path_ + ": duplicate " + what);
    LR_ASSIGN_OR_RETURN(uint32_t n_dims, r.Read<uint32_t>(what + " n_dims"));
    if (n_dims == 0 || n_dims > kMaxDims)
      return Corrupt(path_ + ": " + what + " has " + std::to_string(n_dims) + " dimensions, expected 1 to 4");
    int64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      LR_ASSIGN_OR_RETURN(uint64_t dim, r.Read<uint64_t>(what + " dim " + std::to_string(d)));
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max() / elements))
        return Corrupt(path_ + ": " + what + " dim " + std::to_string(d) + " is " + std::to_string(dim) +
                       ", expected a positive size whose product with the others fits in 63 bits");
      elements *= static_cast<int64_t>(dim);
      t.shape.push_back(static_cast<int64_t>(dim));
    }
    LR_ASSIGN_OR_RETURN(uint32_t type_id, r.Read<uint32_t>(what + " type"));
    std::optional<ops::TensorTypeInfo> type = ops::LookupTensorType(type_id);
    if (!type)
      return Unsupported(path_ + ": " + what + " has ggml type " + std::to_string(type_id) +
                         ", which this build does not support");
    t.type = *type;
    if (!ops::RowIsWhole(t.type, t.shape[0]))
      return Corrupt(path_ + ": " + what + " row length " + std::to_string(t.shape[0]) + " is not a multiple of " +
                     std::string(t.type.name) + "'s block of " + std::to_string(t.type.block_elems));
    uint64_t row_bytes = ops::RowBytes(t.type, t.shape[0]);
    uint64_t rows = static_cast<uint64_t>(elements / t.shape[0]);
    if (rows != 0 && row_bytes > std::numeric_limits<uint64_t>::max() / rows)
      return Corrupt(path_ + ": " + what + " is too large");
    t.bytes = static_cast<size_t>(row_bytes * rows);
    LR_ASSIGN_OR_RETURN(uint64_t offset, r.Read<uint64_t>(what + " offset"));
    if (offset % alignment_ != 0)
      return Corrupt(path_ + ": " + what + " offset " + std::to_string(offset) +
                     " is not a multiple of the alignment " + std::to_string(alignment_));
    infos.push_back({offset});
    tensor_index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }

  size_t data_start = r.pos() + (alignment_ - r.pos() % alignment_) % alignment_;
  if (!tensors_.empty() && data_start > size_)
    return Corrupt(path_ + ": the data section starts at " + std::to_string(data_start) +
                   ", past the end of the file (" + std::to_string(size_) + " bytes)");
  size_t data_size = tensors_.empty() ? 0 : size_ - data_start;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    Tensor& t = tensors_[i];
    if (infos[i].offset > data_size || t.bytes > data_size - infos[i].offset)
      return Corrupt(path_ + ": tensor " + Quote(t.name) + " (" + std::to_string(t.bytes) + " bytes at data offset " +
                     std::to_string(infos[i].offset) + ") runs past the end of the file (data section holds " +
                     std::to_string(data_size) + " bytes)");
    t.data = base_ + data_start + infos[i].offset;
  }
  std::vector<size_t> order(tensors_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return infos[a].offset < infos[b].offset; });
  for (size_t i = 1; i < order.size(); ++i) {
    const size_t prev = order[i - 1], cur = order[i];
    if (infos[prev].offset + tensors_[prev].bytes > infos[cur].offset)
      return Corrupt(path_ + ": tensors " + Quote(tensors_[prev].name) + " and " + Quote(tensors_[cur].name) +
                     " overlap in the data section");
  }
  return Status::Ok();
}

bool GgufFile::Has(std::string_view key) const { return values_.find(key) != values_.end(); }

std::vector<std::string> GgufFile::Keys() const { return key_order_; }

Result<GgufFile::Value> GgufFile::Find(std::string_view key) const {
  auto it = values_.find(key);
  if (it == values_.end()) return NotFound(path_ + ": no metadata key " + Quote(key));
  return it->second;
}

Status GgufFile::TypeError(std::string_view key, const Value& v, std::string_view expected) const {
  std::string found = GgufTypeName(static_cast<uint32_t>(v.type));
  if (v.type == GgufType::kArray) found = "array of " + GgufTypeName(static_cast<uint32_t>(v.elem_type));
  return Corrupt(path_ + ": key " + Quote(key) + " is " + found + ", expected " + std::string(expected));
}

Result<int64_t> GgufFile::IntegerAt(std::string_view key, GgufType type, size_t offset, int64_t min,
                                    int64_t max) const {
  const uint8_t* p = base_ + offset;
  bool negative = false;
  uint64_t magnitude = 0;
  switch (type) {
    case GgufType::kU8: magnitude = Load<uint8_t>(p); break;
    case GgufType::kU16: magnitude = Load<uint16_t>(p); break;
    case GgufType::kU32: magnitude = Load<uint32_t>(p); break;
    case GgufType::kU64: magnitude = Load<uint64_t>(p); break;
    case GgufType::kI8:
    case GgufType::kI16:
    case GgufType::kI32:
    case GgufType::kI64: {
      int64_t s = type == GgufType::kI8    ? Load<int8_t>(p)
                  : type == GgufType::kI16 ? Load<int16_t>(p)
                  : type == GgufType::kI32 ? Load<int32_t>(p)
                                           : Load<int64_t>(p);
      negative = s < 0;
      magnitude = negative ? 0 - static_cast<uint64_t>(s) : static_cast<uint64_t>(s);
      break;
    }
    default: assert(false && "IntegerAt on a non-integer type");
  }
  bool fits =
      negative ? (min < 0 && magnitude <= 0 - static_cast<uint64_t>(min)) : magnitude <= static_cast<uint64_t>(max);
  if (!fits)
    return Corrupt(path_ + ": key " + Quote(key) + " holds " + (negative ? "-" : "") + std::to_string(magnitude) +
                   ", outside the expected range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  return negative ? static_cast<int64_t>(0 - magnitude) : static_cast<int64_t>(magnitude);
}

std::string_view GgufFile::StringAt(size_t offset) const {
  uint64_t len = Load<uint64_t>(base_ + offset);
  return std::string_view(reinterpret_cast<const char*>(base_ + offset + 8), static_cast<size_t>(len));
}

Result<uint32_t> GgufFile::GetU32(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (!IsInteger(v.type)) return TypeError(key, v, "an integer (u32)");
  LR_ASSIGN_OR_RETURN(int64_t x, IntegerAt(key, v.type, v.offset, 0, std::numeric_limits<uint32_t>::max()));
  return static_cast<uint32_t>(x);
}

Result<uint64_t> GgufFile::GetU64(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (!IsInteger(v.type)) return TypeError(key, v, "an integer (u64)");
  LR_ASSIGN_OR_RETURN(int64_t x, IntegerAt(key, v.type, v.offset, 0, std::numeric_limits<int64_t>::max()));
  return static_cast<uint64_t>(x);
}

Result<float> GgufFile::GetF32(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (v.type == GgufType::kF32) return Load<float>(base_ + v.offset);
  if (v.type == GgufType::kF64) return static_cast<float>(Load<double>(base_ + v.offset));
  return TypeError(key, v, "f32");
}

Result<bool> GgufFile::GetBool(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (v.type != GgufType::kBool) return TypeError(key, v, "bool");
  uint8_t b = base_[v.offset];
  if (b > 1)
    return Corrupt(path_ + ": key " + Quote(key) + " holds bool byte " + std::to_string(b) + ", expected 0 or 1");
  return b == 1;
}

Result<std::string> GgufFile::GetString(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (v.type != GgufType::kString) return TypeError(key, v, "string");
  return std::string(StringAt(v.offset));
}

Result<std::vector<std::string>> GgufFile::GetStringArray(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (v.type != GgufType::kArray || v.elem_type != GgufType::kString) return TypeError(key, v, "array of string");
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(v.count));
  size_t at = v.offset;
  for (uint64_t i = 0; i < v.count; ++i) {
    std::string_view s = StringAt(at);
    out.emplace_back(s);
    at += 8 + s.size();
  }
  return out;
}

Result<std::vector<float>> GgufFile::GetF32Array(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (v.type != GgufType::kArray || (v.elem_type != GgufType::kF32 && v.elem_type != GgufType::kF64))
    return TypeError(key, v, "array of f32");
  std::vector<float> out(static_cast<size_t>(v.count));
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = v.elem_type == GgufType::kF32 ? Load<float>(base_ + v.offset + 4 * i)
                                           : static_cast<float>(Load<double>(base_ + v.offset + 8 * i));
  return out;
}

Result<std::vector<int32_t>> GgufFile::GetI32Array(std::string_view key) const {
  LR_ASSIGN_OR_RETURN(Value v, Find(key));
  if (v.type != GgufType::kArray || !IsInteger(v.elem_type)) return TypeError(key, v, "array of i32");
  size_t item = ScalarSize(v.elem_type);
  std::vector<int32_t> out(static_cast<size_t>(v.count));
  for (size_t i = 0; i < out.size(); ++i) {
    LR_ASSIGN_OR_RETURN(int64_t x, IntegerAt(key, v.elem_type, v.offset + item * i, std::numeric_limits<int32_t>::min(),
                                             std::numeric_limits<int32_t>::max()));
    out[i] = static_cast<int32_t>(x);
  }
  return out;
}

Result<const GgufFile::Tensor*> GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  if (it == tensor_index_.end()) return NotFound(path_ + ": no tensor " + Quote(name));
  return &tensors_[it->second];
}

}  // namespace lr::inference
