#include "cli/device.h"

#include <cstdio>

#ifdef LEANROTOR_HAVE_CUDA
#include "cuda/device.h"
#include "cuda/model.h"
#endif

namespace lr::cli {
namespace {

std::string MiB(size_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

}  // namespace

void AddDeviceFlag(CLI::App* sub, std::string* device) {
  sub->add_option("--device", *device,
                  "where the model runs: cpu, cuda, or auto (cuda when a CUDA device is present and the model and "
                  "KV pool fit)")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
}

Result<DeviceFactory> ChooseDevice(const std::string& device, size_t weight_bytes, size_t kv_bytes) {
  if (device == "cpu") {
    std::fprintf(stderr, "leanrotor: device cpu (--device cpu)\n");
    return DeviceFactory();
  }
#ifdef LEANROTOR_HAVE_CUDA
  const Result<cuda::DeviceInfo> info = cuda::QueryDevice();
  if (!info.ok()) {
    if (device == "cuda") return info.status().WithContext("--device cuda");
    std::fprintf(stderr, "leanrotor: device cpu (%s)\n", info.status().message().c_str());
    return DeviceFactory();
  }
  const std::string sizes = "weights " + MiB(weight_bytes) + " + KV pool " + MiB(kv_bytes) + ", " +
                            MiB(info->free_bytes) + " free on " + info->name;
  if (weight_bytes + kv_bytes > info->free_bytes) {
    if (device == "cuda") return ResourceExhausted("--device cuda: the model does not fit: " + sizes);
    std::fprintf(stderr, "leanrotor: device cpu (the model does not fit on the GPU: %s)\n", sizes.c_str());
    return DeviceFactory();
  }
  std::fprintf(stderr, "leanrotor: device cuda (%s)\n", sizes.c_str());
  return DeviceFactory([](const inference::Model& m) -> Result<std::unique_ptr<inference::ForwardPass>> {
    LR_ASSIGN_OR_RETURN(std::unique_ptr<cuda::CudaModel> gpu, cuda::CudaModel::Upload(m));
    return std::unique_ptr<inference::ForwardPass>(std::move(gpu));
  });
#else
  if (device == "cuda") return Unavailable("--device cuda: this build has no CUDA backend (LEANROTOR_CUDA=OFF)");
  std::fprintf(stderr, "leanrotor: device cpu (built without the CUDA backend)\n");
  (void)weight_bytes;
  (void)kv_bytes;
  return DeviceFactory();
#endif
}

bool IsDummyPreset(const std::string& name) {
#ifdef LEANROTOR_HAVE_CUDA
  return cuda::FindDummyPreset(name).ok();
#else
  (void)name;
  return false;
#endif
}

Result<std::unique_ptr<inference::ForwardPass>> MakeDummyPass(const std::string& name, const inference::Model* model) {
#ifdef LEANROTOR_HAVE_CUDA
  constexpr uint64_t kSeed = 1;
  std::unique_ptr<cuda::CudaModel> pass;
  if (model == nullptr) {
    LR_ASSIGN_OR_RETURN(cuda::DummyPreset preset, cuda::FindDummyPreset(name));
    LR_ASSIGN_OR_RETURN(pass, cuda::CudaModel::Dummy(preset.config, preset.types, kSeed));
  } else {
    auto type = [&](const char* tensor) -> Result<cuda::WeightType> {
      LR_ASSIGN_OR_RETURN(const inference::GgufFile::Tensor* t, model->gguf().FindTensor(tensor));
      return static_cast<cuda::WeightType>(t->type.type);
    };
    const inference::ModelConfig& c = model->config();
    cuda::DummyTypes types;
    LR_ASSIGN_OR_RETURN(types.matrices,
                        type(c.kv_lora_rank > 0 ? "blk.0.attn_kv_a_mqa.weight" : "blk.0.ffn_gate.weight"));
    if (c.n_expert > 0) {
      const std::string experts = "blk." + std::to_string(c.n_leading_dense) + ".ffn_gate_exps.weight";
      LR_ASSIGN_OR_RETURN(types.experts, type(experts.c_str()));
    }
    LR_ASSIGN_OR_RETURN(types.embedding, type("token_embd.weight"));
    types.output = types.embedding;
    if (!c.tied_output) {
      LR_ASSIGN_OR_RETURN(types.output, type("output.weight"));
    }
    LR_ASSIGN_OR_RETURN(pass, cuda::CudaModel::Dummy(model->config(), types, kSeed));
  }
  return std::unique_ptr<inference::ForwardPass>(std::move(pass));
#else
  (void)name;
  (void)model;
  return Unavailable("--load-format dummy: the weights are generated on a CUDA device; this build has no CUDA backend");
#endif
}

Result<double> DeviceCopyBandwidth() {
#ifdef LEANROTOR_HAVE_CUDA
  return cuda::MeasureCopyBandwidth(size_t{1} << 30);
#else
  return Unavailable("no CUDA backend in this build");
#endif
}

}  // namespace lr::cli
