// Helpers of the CUDA tests: fixtures that skip without a device, device buffers from and to host vectors, and
// activations quantized on the CPU as the device's integer products take them, matrices uploaded from GGUF rows.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/device.h"
#include "cuda/kernels.h"
#include "ops/kernels.h"

namespace lr::cuda::testing {

// Fixtures whose tests skip, with QueryDevice's reason (which starts "no CUDA device"), where no device is present.
template <typename Base>
class OnDevice : public Base {
 protected:
  void SetUp() override {
    const Result<DeviceInfo> info = QueryDevice();
    if (!info.ok()) {
      GTEST_SKIP() << info.status().message();
    }
  }
};

template <typename T>
DeviceBuffer ToDevice(const std::vector<T>& v) {
  auto b = DeviceBuffer::Allocate(std::max<size_t>(1, v.size() * sizeof(T)), "test input");
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  if (!v.empty()) {
    EXPECT_TRUE(b->Upload(v.data(), v.size() * sizeof(T)).ok());
  }
  return std::move(b).value();
}

// A poisoned (NaN) output buffer of n floats.
inline DeviceBuffer Poisoned(size_t n) {
  auto b = DeviceBuffer::Allocate(n * sizeof(float), "test output");
  EXPECT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_TRUE(b->Fill(0xFF).ok());
  return std::move(b).value();
}

template <typename T>
std::vector<T> FromDevice(const DeviceBuffer& b, size_t n) {
  std::vector<T> v(n);
  EXPECT_TRUE(Synchronize("test").ok());
  EXPECT_TRUE(b.Download(v.data(), n * sizeof(T)).ok());
  return v;
}

// Activations quantized on the CPU (ops::QuantizeRowQ8, the reference of QuantizeQ8), in the device's split
// layout: q[i] and (d, s) per block.
struct CpuQ8 {
  std::vector<int8_t> q;
  std::vector<float> ds;
};
CpuQ8 QuantizeCpu(const std::vector<float>& x) {
  std::vector<ops::BlockQ8> blocks(x.size() / 32);
  ops::QuantizeRowQ8(x.data(), static_cast<int64_t>(x.size()), blocks.data());
  CpuQ8 r;
  for (const ops::BlockQ8& b : blocks) {
    r.q.insert(r.q.end(), b.q, b.q + 32);
    r.ds.push_back(b.d);
    r.ds.push_back(b.s);
  }
  return r;
}
// The values the quantized activations stand for: d * q.
std::vector<float> Dequantized(const CpuQ8& a) {
  std::vector<float> v(a.q.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = a.ds[2 * (i / 32)] * a.q[i];
  return v;
}
// A matrix on the device in the device layout, from GGUF rows.
struct TestMatrix {
  DeviceBuffer q, scales;
  DeviceMatrix m;
};
TestMatrix Upload(WeightType t, const std::vector<uint8_t>& gguf, int64_t rows, int64_t cols) {
  std::vector<uint8_t> q(QuantRowBytes(t, cols) * rows), scales(rows * (cols / 32) * ScaleBytesPerBlock(t));
  SplitBlocks(t, gguf.data(), rows, cols, q.data(), scales.data());
  TestMatrix r;
  r.q = ToDevice(q);
  r.scales = ToDevice(scales);
  r.m = DeviceMatrix{
      t, rows, cols, r.q.as<uint8_t>(), IsSplit(t) ? r.scales.as<uint8_t>() : nullptr, QuantRowBytes(t, cols)};
  return r;
}

}  // namespace lr::cuda::testing
