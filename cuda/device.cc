#include "cuda/device.h"

#include <cuda_runtime.h>

namespace lr::cuda {

Status CheckCuda(int error, const char* what) {
  const cudaError_t e = static_cast<cudaError_t>(error);
  if (e == cudaSuccess) return Status::Ok();
  const std::string text =
      std::string(what) + ": CUDA error " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")";
  if (e == cudaErrorMemoryAllocation) return ResourceExhausted(text);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInitializationError)
    return Unavailable(text);
  return Internal(text);
}

Status CheckLaunch(const char* what) { return CheckCuda(cudaGetLastError(), what); }

Status Synchronize(const char* what) { return CheckCuda(cudaDeviceSynchronize(), what); }

Result<DeviceInfo> QueryDevice() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clears the sticky state a failed query leaves
    return Unavailable(std::string("no CUDA device: ") + cudaGetErrorString(e));
  }
  if (count == 0) return Unavailable("no CUDA device: the driver reports none");
  cudaDeviceProp p;
  LR_RETURN_IF_ERROR(CheckCuda(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties"));
  DeviceInfo info;
  info.name = p.name;
  info.major = p.major;
  info.minor = p.minor;
  info.multiprocessors = p.multiProcessorCount;
  LR_RETURN_IF_ERROR(CheckCuda(cudaMemGetInfo(&info.free_bytes, &info.total_bytes), "cudaMemGetInfo"));
  return info;
}

Result<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes, const char* what) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  const cudaError_t e = cudaMalloc(&b.ptr_, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    b.ptr_ = nullptr;
    return CheckCuda(
        e, (std::string("allocating ") + std::to_string(bytes) + " bytes of device memory for " + what).c_str());
  }
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() { Reset(); }

void DeviceBuffer::Reset() {
  if (ptr_ != nullptr) cudaFree(ptr_);
  ptr_ = nullptr;
  bytes_ = 0;
}

Status DeviceBuffer::Upload(const void* src, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_) return InvalidArgument("device upload past the end of its buffer");
  return CheckCuda(cudaMemcpy(static_cast<uint8_t*>(ptr_) + offset, src, bytes, cudaMemcpyHostToDevice), "upload");
}

Status DeviceBuffer::Download(void* dst, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_) return InvalidArgument("device download past the end of its buffer");
  return CheckCuda(cudaMemcpy(dst, static_cast<const uint8_t*>(ptr_) + offset, bytes, cudaMemcpyDeviceToHost),
                   "download");
}

Status DeviceBuffer::Fill(uint8_t value) { return CheckCuda(cudaMemset(ptr_, value, bytes_), "cudaMemset"); }

}  // namespace lr::cuda
