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

// The weight types of a dummy model: its layer matrices (attention, dense FFNs, shared experts), the token embedding,
// the output matrix and the routed experts. MoE routers are f32 and MLA's attn_kv_b f16 (as the device keeps it).
struct DummyTypes {
  WeightType matrices = WeightType::kQ4_0;
  WeightType embedding = WeightType::kQ4_0;
  WeightType output = WeightType::kQ6_K;
  WeightType experts = WeightType::kQ4_0;
};

// A named shape for dummy weights: "llama-7b-q4_0" (LLaMA-7B: 32 layers of 4096, 32 heads, FFN 11008, vocabulary
// 32000; Q4_0 matrices and embedding, Q6_K output, as llama.cpp's Q4_0 file: 3.6 GiB); "leanstral-q4_0" (Leanstral /
// Mistral Small 4, ../shared/REFERENCES.md: 36 layers of 4096, MLA with 32 heads, q_lora 1024, kv_lora 256, rope 64
// + nope 64, values 128; 128 routed experts of 2048 top-4 (softmax, renormalised) and one shared expert in every
// layer; vocabulary 131072; YaRN factor 128 over 8192 positions, query temperature 0.1; Q4_0 routed experts, Q8_0
// for the rest: about 68 GB).
struct DummyPreset {
  inference::ModelConfig config;
  DummyTypes types;
};
// kNotFound listing the presets for an unknown name.
Result<DummyPreset> FindDummyPreset(const std::string& name);

class CudaModel : public inference::ForwardPass {
 public:
  // The model's weights on device 0. kUnsupported for architectures other than llama, qwen3 and deepseek2 and for
  // weight types or shapes the kernels lack;
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

  // Distinct routed experts per MoE layer in the last step, averaged over the MoE layers (0 for a dense model).
  double last_step_experts() const override;

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
    // MLA (kv_lora_rank > 0; wq when q_lora_rank is 0): wq_b's columns padded with zeros to a multiple of 32.
    Matrix wq_a, wq_b, wkv_a;
    DeviceBuffer q_a_norm, kv_a_norm, kv_b;  // kv_b: f16 rows (mla.h)
    // MoE (moe): the router, stacked experts (moe.h), the shared expert (rows 0 when none).
    bool moe = false;
    Matrix router, gate_exps, up_exps, down_exps, gate_shexp, up_shexp, down_shexp;
    DeviceBuffer expert_bias;  // empty when none
  };

  CudaModel(inference::ModelConfig config, DeviceInfo info) : config_(std::move(config)), info_(std::move(info)) {}
  Status Init();  // stream, RoPE table
  Result<Matrix> AllocateMatrix(WeightType type, int64_t rows, int64_t cols);
  // A GGUF tensor as a matrix: its first dimension the columns (float types padded with zeros to a multiple of 32),
  // the others the rows (stacked experts); a vector as f32.
  Status UploadMatrix(const inference::GgufFile& g, const std::string& name, Matrix* out);
  Status UploadVector(const inference::GgufFile& g, const std::string& name, DeviceBuffer* out);
  Status RandomMatrix(WeightType type, int64_t rows, int64_t cols, uint64_t seed, Matrix* out);
  Status Ones(int n, DeviceBuffer* out);
  // The MLA and MoE parts of layer `il` (model_mla_moe.cc): from GGUF, or dummy weights (adding the bytes a decode
  // step reads to *per_token).
  Status UploadMla(const inference::GgufFile& g, int il);
  Status UploadMoe(const inference::GgufFile& g, int il);
  Status DummyMla(int il, const DummyTypes& types, uint64_t* seed, size_t* per_token);
  Status DummyMoe(int il, const DummyTypes& types, uint64_t* seed, size_t* per_token);
  Status ReserveMlaMoe(size_t tokens);
  // flash: the attention of a prefill chunk on the tensor cores (FlashAttentionLatent).
  Status EnqueueMla(int il, int n, const TokenPlaces& places, bool flash);
  // next_norm: the next layer's attn_norm, whose RMSNorm of x into xn_ the last kernel does too; null: none.
  Status EnqueueMoe(int il, int n, const float* next_norm);
  // The shared expert of layer l on `stream` (stream_, or in decode steps side_.stream): x += its output.
  Status EnqueueSharedExpert(const Layer& l, int n, void* stream);
  // Products over the same activations: one launch per run of one type (n_tokens <= kMaxMatVecTokens; on in_q, `in`
  // quantized, for the types that TakesQ8), else one tensor-core product each.
  Status Products(const Product* p, int count, const float* in, int n_tokens, const Q8Activations* in_q = nullptr);
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
  // MLA and MoE (ReserveMlaMoe): q_lora activations (stride qa_stride_), [latent | k_rope] rows, absorbed queries,
  // attended latents, split states; router logits, choices, their weights, the grouping, the grouped gate / up /
  // outputs, the shared expert's gate / up; tally_: distinct experts per layer of the last step.
  int qa_stride_ = 0;
  DeviceBuffer qa_, kv_, q_abs_, latent_, mla_part_;
  DeviceBuffer router_logits_, chosen_, chosen_weights_, first_, order_, row_of_, active_, tiles_, eg_, eu_, ys_, sg_,
      su_;
  DeviceBuffer tally_;
  // Int8 inputs: of a decode step's q_b product and grouped expert rows (gathered), of a prefill step's routed experts
  // (x_q8_), of the down products.
  struct Q8Buffer {
    DeviceBuffer q, ds;
    Q8Activations view() const { return Q8Activations{q.as<int8_t>(), ds.as<float>()}; }
  };
  Q8Buffer qa_q8_, xg_q8_, x_q8_, h_q8_, sh_q8_;  // sh_q8_: the shared expert's down input (decode)
  // A decode step runs the shared expert on a second stream beside the router and the routed experts (forked after
  // the FFN norm, joined before the weighted sum): its products fill the device while the routing's small kernels run.
  struct SideStream {
    void* stream = nullptr;  // cudaStream_t
    void* fork = nullptr;    // cudaEvent_t
    void* join = nullptr;    // cudaEvent_t
    SideStream() = default;
    SideStream(const SideStream&) = delete;
    SideStream& operator=(const SideStream&) = delete;
    ~SideStream();
  };
  SideStream side_;
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
