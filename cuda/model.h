// A dense transformer (llama, qwen2, qwen3) run on one CUDA device, behind inference::ForwardPass.
//
// The weights are uploaded once, in their GGUF types (cuda/kernels.h's device layout), from a loaded
// inference::Model's GGUF tensors; or generated on the device in given types (dummy weights, as vLLM's
// --load-format dummy: for timing shapes whose weights are not at hand; never for text). The KV cache keeps its
// bookkeeping on the host (inference::KvCache: page tables, reference counts, forks and copy on write, the prefix
// index, LRU) and its pages on the device: ConfigureCache gives the cache a device page pool (f16 rows) of the size
// its options ask for, so one pool per cache and device.
//
// Forward runs one step: the batch's token ids, positions and page tables are copied up, the layers run as a
// sequence of kernels on the model's stream, and the logits (Forward) or the greedy token ids (ForwardGreedy) come
// back. A step of at most kMaxMatVecTokens tokens (a decode step) is captured once per (tokens, logit rows) as a
// CUDA graph and replayed, so that a small model is not bound by the launch latency of its ~10 kernels per layer;
// longer steps (prefill) launch directly and use the tensor-core product.
//
// Not thread-safe: one Forward at a time (as inference::Model).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "base/status.h"
#include "cuda/device.h"
#include "cuda/kernels.h"
#include "cuda/kv_codec.h"
#include "cuda/matmul.h"
#include "inference/model.h"

namespace lr::cuda {

// The weight types of a dummy model: its layer matrices, the token embedding and the output matrix.
struct DummyTypes {
  WeightType matrices = WeightType::kQ4_0;
  WeightType embedding = WeightType::kQ4_0;
  WeightType output = WeightType::kQ6_K;
};

// A named shape for dummy weights: "llama-7b-q4_0" (LLaMA-7B: 32 layers of 4096, 32 heads, FFN 11008, vocabulary
// 32000; Q4_0 matrices and embedding, Q6_K output, as llama.cpp's Q4_0 file: 3.6 GiB).
struct DummyPreset {
  inference::ModelConfig config;
  DummyTypes types;
};
// kNotFound listing the presets for an unknown name.
Result<DummyPreset> FindDummyPreset(const std::string& name);

class CudaModel : public inference::ForwardPass {
 public:
  // The model's weights on device 0. kUnsupported for MoE or MLA models and weight types the kernels lack;
  // kResourceExhausted, with the numbers, when they do not fit in the device's free memory.
  static Result<std::unique_ptr<CudaModel>> Upload(const inference::Model& model);
  // Random weights of this shape generated on device 0 (dummy weights).
  static Result<std::unique_ptr<CudaModel>> Dummy(const inference::ModelConfig& config, const DummyTypes& types,
                                                  uint64_t seed);
  // Bytes Upload would put on the device for this model (weights, norms, RoPE table), for the device choice.
  static size_t UploadBytes(const inference::Model& model);
  // Bytes of a device page pool for a cache of this shape and max_tokens positions.
  static size_t PoolBytes(const inference::KvShape& shape, int max_tokens);
  ~CudaModel() override;

  const inference::ModelConfig& config() const override { return config_; }
  inference::KvShape kv_shape() const override;
  size_t weight_bytes_per_token() const override { return weight_bytes_per_token_; }
  std::string device() const override;
  // Allocates the device page pool for options->max_tokens positions and sets options->page_store. Rows in any
  // kvquant format (cuda/kv_codec.h), attended on their codes; f16 ones as before. kInvalidArgument for sink or
  // window rows of a compressed cache (not on the device) and unknown formats; kResourceExhausted with the numbers.
  Status ConfigureCache(inference::KvCacheOptions* options) override;
  Status Forward(inference::KvCache& cache, std::span<const inference::BatchToken> batch,
                 std::vector<float>* logits) override;
  Status ForwardGreedy(inference::KvCache& cache, std::span<const inference::BatchToken> batch,
                       std::vector<int32_t>* ids) override;

  bool dummy() const { return dummy_; }
  // Bytes of weights on the device.
  size_t weight_bytes() const { return weight_bytes_; }

 private:
  struct Matrix {
    DeviceBuffer q, scales;
    DeviceMatrix m;
  };
  struct Layer {
    DeviceBuffer attn_norm, ffn_norm, q_norm, k_norm;
    DeviceBuffer bq, bk, bv;  // qkv_bias only
    Matrix wq, wk, wv, wo, gate, up, down;
  };

  CudaModel(inference::ModelConfig config, DeviceInfo info) : config_(std::move(config)), info_(std::move(info)) {}
  Status Init();  // stream, RoPE table
  Result<Matrix> AllocateMatrix(WeightType type, int64_t rows, int64_t cols);
  // The steps of Forward and ForwardGreedy: the logits rows stay on the device; with `greedy` the ids are picked.
  Status Step(inference::KvCache& cache, std::span<const inference::BatchToken> batch, bool greedy, int* n_logits);
  // Room for n tokens, n_logits logit rows and n_pages page ids; reallocating drops the captured graphs.
  Status Reserve(int n, int n_logits, int n_pages);
  // Queues the kernels of one step of n tokens with n_logits logit rows on stream_; flash: attention through
  // FlashAttention (the step's tokens come in long runs of one sequence), else Attention.
  Status Enqueue(int n, int n_logits, bool greedy, bool flash);
  void DropGraphs();
  // Before a step: the cache's codecs on the device (uploaded at its first step), the positions the step's
  // sequences share, and room for the states of attention on the codes. device_pages: the cache's DevicePages.
  Status PrepareCodedAttention(inference::KvCache& cache, void* device_pages,
                               std::span<const inference::BatchToken> batch, const std::vector<int32_t>& pos);

  inference::ModelConfig config_;
  DeviceInfo info_;
  bool dummy_ = false;
  size_t weight_bytes_ = 0, weight_bytes_per_token_ = 0;
  void* stream_ = nullptr;  // cudaStream_t
  Matrix embd_, output_;
  const DeviceMatrix* out_ = nullptr;  // &output_.m, or &embd_.m when tied
  DeviceBuffer output_norm_, inv_freq_;
  std::vector<Layer> layers_;

  // Per-step buffers (Reserve).
  int cap_tokens_ = 0, cap_logits_ = 0, cap_pages_ = 0;
  DeviceBuffer x_, xn_, q_, k_, v_, attn_, attn_part_, g_, u_, logits_, ids_;
  DeviceBuffer xq_, xds_;  // a decode step's product input quantized (Q8Activations)
  DeviceBuffer hq_, hds_;  // the same for the FFN's down product
  // The tensor-core products of steps of more than kMaxMatVecTokens tokens, and the layers' matrices in the order
  // Enqueue multiplies them.
  std::unique_ptr<PrefillProducts> prefill_;
  std::vector<const DeviceMatrix*> prefill_order_;
  DeviceBuffer step_;             // int32: tokens, pos, first, logit rows (cap_tokens_ each), then pages
  int32_t* staging_ = nullptr;    // pinned host copy of step_
  float* host_logits_ = nullptr;  // pinned, cap_logits_ x n_vocab
  size_t host_logits_floats_ = 0;
  KvPool pool_;  // of the cache of the step being enqueued
  // Of the same cache, for attention on the codes (compressed rows, or a shared prefix): its codecs and pages, the
  // positions the step's sequences share (cuda/kv_attention.h) and the attention's scratch.
  const DeviceRowFormat *k_format_ = nullptr, *v_format_ = nullptr;
  KvPages kv_pages_;
  int shared_tokens_ = 0;
  DeviceBuffer coded_part_;
  // (n, n_logits * 2 + greedy, shared tokens) -> cudaGraphExec_t
  std::map<std::tuple<int, int, int>, void*> graphs_;
  const uint8_t* graph_pool_ = nullptr;  // the pool the graphs were captured with
};

// Device-to-device copy speed: bytes read plus bytes written per second, the best of several copies of `bytes`.
Result<double> MeasureCopyBandwidth(size_t bytes);

}  // namespace lr::cuda
