// --device: where the in-process model runs, the same flag for every command that loads one (generate, perplexity,
// bench, serve, prove, batch, tui).
//   cpu   the CPU runner (inference::Model)
//   cuda  the CUDA backend (cuda::CudaModel) on device 0; an error when the build has no CUDA backend, the machine no
//         device, or the weights and the KV pool do not fit in its free memory (the error gives the numbers)
//   auto  cuda when a device is present and both fit, else cpu (the default)
// The choice is said in one line on stderr.
#pragma once

#include <CLI/CLI.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "base/status.h"
#include "inference/model.h"

namespace lr::cli {

void AddDeviceFlag(CLI::App* sub, std::string* device);

// The forward pass on the chosen device, made from a loaded model; null for the CPU.
using DeviceFactory = std::function<Result<std::unique_ptr<inference::ForwardPass>>(const inference::Model&)>;

// The device for a model file of weight_bytes with a KV pool of kv_bytes, per the --device value; says it on stderr.
Result<DeviceFactory> ChooseDevice(const std::string& device, size_t weight_bytes, size_t kv_bytes);

// --load-format dummy (bench): whether `name` is a dummy preset (cuda/model.h) rather than a GGUF file.
bool IsDummyPreset(const std::string& name);
// A CUDA forward pass with random weights generated on the device: of the preset `name`, or with model's shape and
// weight types (model non-null). kUnavailable without the CUDA backend or a device.
Result<std::unique_ptr<inference::ForwardPass>> MakeDummyPass(const std::string& name, const inference::Model* model);
// The device's copy bandwidth (bytes read + written per second) for the bench's bound; kUnavailable without CUDA.
Result<double> DeviceCopyBandwidth();

}  // namespace lr::cli
