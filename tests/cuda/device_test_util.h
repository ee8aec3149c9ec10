// Helpers of the CUDA tests: fixtures that skip without a device, and device buffers from and to host vectors.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cuda/device.h"

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

}  // namespace lr::cuda::testing
