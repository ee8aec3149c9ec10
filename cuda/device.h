// The CUDA device: presence, memory, and device buffers whose errors come back as Status.
//
// Everything CUDA returns is checked where it is called; a failure becomes a Status naming the operation and CUDA's
// error text (kUnavailable when there is no usable device, kResourceExhausted when memory runs out, kInternal for the
// rest). This header needs no CUDA headers, so that code compiled without nvcc (the tests, the CLI) can use it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "base/status.h"

namespace lr::cuda {

struct DeviceInfo {
  std::string name;  // e.g. "NVIDIA H100 80GB HBM3"
  int major = 0, minor = 0;
  int multiprocessors = 0;
  size_t total_bytes = 0;
  size_t free_bytes = 0;  // when asked
};

// Device 0's properties, or kUnavailable saying why there is none (no driver, no device, or a driver older than
// the runtime this binary was built with).
Result<DeviceInfo> QueryDevice();

// The status of a CUDA runtime error code (0: ok), with `what` naming the operation.
Status CheckCuda(int error, const char* what);
// The last launch's error (cudaGetLastError), with `what` naming the kernel.
Status CheckLaunch(const char* what);
// Waits for the device to finish everything queued; the first asynchronous error, if any.
Status Synchronize(const char* what);

// Device memory of a fixed size, freed with the buffer.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static Result<DeviceBuffer> Allocate(size_t bytes, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Reset();
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

  // Synchronous copies (the null stream); `offset` and sizes in bytes, within the buffer.
  Status Upload(const void* src, size_t bytes, size_t offset = 0);
  Status Download(void* dst, size_t bytes, size_t offset = 0) const;
  // Every byte set to `value` (tests poison outputs with it).
  Status Fill(uint8_t value);

 private:
  void Reset();
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace lr::cuda
