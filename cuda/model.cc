#include "cuda/model.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "cuda/kv_attention.h"
#include "cuda/mla.h"
#include "cuda/moe.h"
#include "inference/mla.h"
#include "kvquant/kvquant.h"
#include "ops/kernels.h"
#include "ops/ops.h"

namespace lr::cuda {
namespace {

using inference::BatchToken;
using inference::KvCache;
using inference::ModelConfig;

cudaStream_t S(void* s) { return static_cast<cudaStream_t>(s); }

std::string MiB(size_t bytes) { return std::to_string((bytes + (1 << 20) - 1) >> 20) + " MiB"; }

// The device pages of one KvCache; copies run on the model's stream, before the step that needs them.
class DevicePages : public inference::KvPageStore {
 public:
  DevicePages(DeviceBuffer buffer, size_t page_bytes, void* stream)
      : buffer_(std::move(buffer)), page_bytes_(page_bytes), stream_(stream) {}
  void CopyPage(int from, int to) override {
    const cudaError_t e =
        cudaMemcpyAsync(buffer_.as<uint8_t>() + page_bytes_ * to, buffer_.as<uint8_t>() + page_bytes_ * from,
                        page_bytes_, cudaMemcpyDeviceToDevice, S(stream_));
    if (e != cudaSuccess && error_.ok()) error_ = CheckCuda(e, "copying a KV page");
  }
  uint8_t* base() const { return buffer_.as<uint8_t>(); }
  size_t page_bytes() const { return page_bytes_; }
  // The first copy's error since the last call, if any.
  Status TakeError() { return std::exchange(error_, Status::Ok()); }
  // The cache's codecs on the device, uploaded at its first step (KvCache::Create makes them after ConfigureCache).
  DeviceCodecs k_codecs, v_codecs;
  bool has_codecs = false;

 private:
  DeviceBuffer buffer_;
  size_t page_bytes_;
  void* stream_;
  Status error_;
};

// Bytes of one page of a cache of this shape with these formats (KvCache's layout).
Result<size_t> PageBytes(const inference::KvShape& s, const std::string& k_format, const std::string& v_format) {
  LR_ASSIGN_OR_RETURN(kvquant::RowCodec k, kvquant::RowCodec::Create(k_format, s.k_dim, 0, 0, 0));
  size_t v_bytes = 0;  // no value rows: MLA's latent cache
  if (s.v_dim > 0) {
    LR_ASSIGN_OR_RETURN(kvquant::RowCodec v, kvquant::RowCodec::Create(v_format, s.v_dim, 0, 0, 0));
    v_bytes = v.row_bytes();
  }
  return static_cast<size_t>(s.n_layer) * s.n_head_kv * (k.row_bytes() + v_bytes) * kPageTokens;
}

Result<DeviceCodecs> UploadCodecs(const KvCache& cache, bool values) {
  const inference::KvShape& s = cache.shape();
  std::vector<const kvquant::RowCodec*> codecs;
  for (int l = 0; l < s.n_layer; ++l)
    for (int h = 0; h < s.n_head_kv; ++h) codecs.push_back(values ? &cache.v_codec(l, h) : &cache.k_codec(l, h));
  LR_ASSIGN_OR_RETURN(DeviceCodecs device, DeviceCodecs::Upload(codecs, s.n_head_kv, values));
  if (device.format().n_runs > 0) {  // compressed rows: the device's encoder checked against the CPU's once
    codecs.resize(static_cast<size_t>(s.n_head_kv));
    LR_RETURN_IF_ERROR(VerifyEncoder(device, codecs, values));
  }
  return device;
}

WeightType TypeOf(const ops::TensorTypeInfo& t) { return static_cast<WeightType>(t.type); }

bool Supported(const ModelConfig& c, std::string* why) {
  if (c.arch != "llama" && c.arch != "qwen2" && c.arch != "qwen3" && c.arch != "deepseek2") {
    *why = "the CUDA backend runs llama, qwen2, qwen3 and deepseek2 models, not " + c.arch;
    return false;
  }
  return true;
}

}  // namespace

Result<DummyPreset> FindDummyPreset(const std::string& name) {
  if (name == "llama-7b-q4_0") {
    DummyPreset p;
    ModelConfig& c = p.config;
    c.arch = "llama";
    c.name = "LLaMA-7B shape, dummy weights";
    c.n_layer = 32;
    c.n_embd = 4096;
    c.n_head = 32;
    c.n_head_kv = 32;
    c.head_dim = 128;
    c.head_dim_v = 128;
    c.n_ff = 11008;
    c.n_vocab = 32000;
    c.n_ctx_train = 4096;
    c.rms_eps = 1e-6f;
    c.rope.n_rot = 128;
    p.types = DummyTypes{WeightType::kQ4_0, WeightType::kQ4_0, WeightType::kQ6_K};
    return p;
  }
  if (name == "leanstral-q4_0") {
    DummyPreset p;
    ModelConfig& c = p.config;
    c.arch = "deepseek2";
    c.name = "Leanstral shape, dummy weights";
    c.n_layer = 36;
    c.n_embd = 4096;
    c.n_head = 32;
    c.n_head_kv = 32;
    c.q_lora_rank = 1024;
    c.kv_lora_rank = 256;
    c.qk_rope_dim = 64;
    c.qk_nope_dim = 64;
    c.head_dim = 128;
    c.head_dim_v = 128;
    c.n_ff = 12288;  // no dense FFN layer uses it
    c.n_expert = 128;
    c.n_expert_used = 4;
    c.n_expert_shared = 1;
    c.n_ff_expert = 2048;
    c.gating = inference::ExpertGating::kSoftmax;
    c.expert_weights_norm = true;
    c.n_vocab = 131072;
    c.n_ctx_train = 1048576;
    c.rms_eps = 1e-6f;
    c.rope.n_rot = 64;
    c.rope.base = 10000.0f;
    c.rope.scaling_factor = 128.0f;
    c.rope.original_ctx = 8192;
    c.rope.yarn_log_multiplier = 0.1f;
    c.attn_temperature_scale = 0.1f;
    c.attn_temperature_length = 8192;
    p.types = DummyTypes{WeightType::kQ8_0, WeightType::kQ8_0, WeightType::kQ8_0, WeightType::kQ4_0};
    return p;
  }
  return NotFound("dummy preset '" + name +
                  "' is unknown (presets: llama-7b-q4_0, leanstral-q4_0; or a GGUF file for its shape)");
}

CudaModel::~CudaModel() {
  DropGraphs();
  if (staging_ != nullptr) cudaFreeHost(staging_);
  if (host_logits_ != nullptr) cudaFreeHost(host_logits_);
  if (stream_ != nullptr) cudaStreamDestroy(S(stream_));
}

void CudaModel::DropGraphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
  graphs_.clear();
}

inference::KvShape CudaModel::kv_shape() const {
  if (config_.kv_lora_rank > 0) return inference::MlaKvShape(config_);
  return inference::KvShape{config_.n_layer, config_.n_head_kv, config_.head_dim, config_.head_dim_v};
}

std::string CudaModel::device() const { return "cuda (" + info_.name + ")" + (dummy_ ? ", dummy weights" : ""); }

size_t CudaModel::PoolBytes(const inference::KvShape& s, int max_tokens) {
  const size_t pages = (static_cast<size_t>(max_tokens) + kPageTokens - 1) / kPageTokens;
  return pages * static_cast<size_t>(s.n_layer) * s.n_head_kv * (s.k_dim + s.v_dim) * 2 * kPageTokens;
}

size_t CudaModel::UploadBytes(const inference::Model& model) {
  size_t total = 0;
  for (const inference::GgufFile::Tensor& t : model.gguf().tensors()) {
    const size_t n = t.shape.size() == 1 ? static_cast<size_t>(t.shape[0]) : 0;
    total += n > 0 ? 4 * n : t.bytes;  // vectors (norms) go up as f32
  }
  return total + static_cast<size_t>(model.config().rope.n_rot) * 2;
}

Status CudaModel::Init() {
  std::string why;
  if (!Supported(config_, &why)) return Unsupported(why);
  const ModelConfig& c = config_;
  if (c.kv_lora_rank > 0 && ((c.kv_lora_rank + c.qk_rope_dim) % 8 != 0 || c.kv_lora_rank > 512 || c.qk_rope_dim > 64))
    return Unsupported(
        "the CUDA MLA takes kv_lora_rank + rope a multiple of 8, kv_lora_rank at most 512 and rope at "
        "most 64; this model has " +
        std::to_string(c.kv_lora_rank) + " + " + std::to_string(c.qk_rope_dim));
  if (c.n_expert > 0 && (c.n_expert > kMaxExperts || c.n_expert_used > kMaxExpertsUsed || c.n_expert_groups > 32))
    return Unsupported("the CUDA MoE takes up to " + std::to_string(kMaxExpertsUsed) + " of " +
                       std::to_string(kMaxExperts) + " experts in up to 32 groups; this model has " +
                       std::to_string(c.n_expert_used) + " of " + std::to_string(c.n_expert) + " in " +
                       std::to_string(c.n_expert_groups));
  if (c.kv_lora_rank == 0 && (c.head_dim % 8 != 0 || c.head_dim > 256 || c.head_dim_v > 256 || c.head_dim_v % 2 != 0 ||
                              c.n_head / c.n_head_kv > 8))
    return Unsupported(
        "the CUDA attention takes heads of at most 256 values (keys a multiple of 8, values even) "
        "and at most 8 query heads per KV head; this model has " +
        std::to_string(config_.head_dim) + " / " + std::to_string(config_.head_dim_v) + " and " +
        std::to_string(config_.n_head / config_.n_head_kv));
  cudaStream_t s;
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"));
  stream_ = s;
  LR_ASSIGN_OR_RETURN(tally_, DeviceBuffer::Allocate(static_cast<size_t>(config_.n_layer) * 4, "expert tally"));
  LR_RETURN_IF_ERROR(tally_.Fill(0));
  const std::vector<float> inv_freq = ops::RopeInvFreq(config_.rope);
  LR_ASSIGN_OR_RETURN(inv_freq_, DeviceBuffer::Allocate(std::max<size_t>(4, inv_freq.size() * 4), "RoPE table"));
  if (!inv_freq.empty()) LR_RETURN_IF_ERROR(inv_freq_.Upload(inv_freq.data(), inv_freq.size() * 4));
  return Status::Ok();
}

Result<CudaModel::Matrix> CudaModel::AllocateMatrix(WeightType type, int64_t rows, int64_t cols) {
  if (!IsSupported(static_cast<uint32_t>(type)))
    return Unsupported("weight type " + std::to_string(static_cast<uint32_t>(type)) + " on the CUDA backend");
  if (cols % 32 != 0)
    return Unsupported("CUDA weight rows of " + std::to_string(cols) + " values (not a multiple of 32)");
  Matrix mat;
  const size_t q_bytes = QuantRowBytes(type, cols) * static_cast<size_t>(rows);
  const size_t s_bytes = static_cast<size_t>(rows) * static_cast<size_t>(cols / 32) * ScaleBytesPerBlock(type);
  LR_ASSIGN_OR_RETURN(mat.q, DeviceBuffer::Allocate(q_bytes, "weights"));
  if (s_bytes > 0) {
    LR_ASSIGN_OR_RETURN(mat.scales, DeviceBuffer::Allocate(s_bytes, "weight scales"));
  }
  mat.m = DeviceMatrix{type, rows, cols, mat.q.as<uint8_t>(), mat.scales.as<uint8_t>(), QuantRowBytes(type, cols)};
  weight_bytes_ += q_bytes + s_bytes;
  return mat;
}

Status CudaModel::UploadMatrix(const inference::GgufFile& g, const std::string& name, Matrix* out) {
  LR_ASSIGN_OR_RETURN(const inference::GgufFile::Tensor* t, g.FindTensor(name));
  const int64_t cols = t->shape[0];
  int64_t rows = 1;
  for (size_t d = 1; d < t->shape.size(); ++d) rows *= t->shape[d];
  const WeightType type = TypeOf(t->type);
  const bool pad =
      cols % 32 != 0 && (type == WeightType::kF32 || type == WeightType::kF16 || type == WeightType::kBF16);
  const int64_t padded = pad ? (cols + 31) / 32 * 32 : cols;
  LR_ASSIGN_OR_RETURN(*out, AllocateMatrix(type, rows, padded));
  std::vector<uint8_t> q(out->q.bytes()), scales(out->scales.bytes());
  if (pad) {
    const size_t row_bytes = GgufRowBytes(type, cols);
    for (int64_t r = 0; r < rows; ++r)
      std::memcpy(&q[r * out->m.row_bytes], t->data + r * row_bytes, row_bytes);  // the rest stays 0
  } else {
    SplitBlocks(type, t->data, rows, cols, q.data(), scales.data());
  }
  LR_RETURN_IF_ERROR(out->q.Upload(q.data(), q.size()).WithContext(name));
  if (!scales.empty()) LR_RETURN_IF_ERROR(out->scales.Upload(scales.data(), scales.size()).WithContext(name));
  return Status::Ok();
}

Status CudaModel::UploadVector(const inference::GgufFile& g, const std::string& name, DeviceBuffer* out) {
  LR_ASSIGN_OR_RETURN(const inference::GgufFile::Tensor* t, g.FindTensor(name));
  std::vector<float> v(static_cast<size_t>(t->shape[0]));
  ops::DequantizeRow(t->type, t->data, v.data(), t->shape[0]);
  LR_ASSIGN_OR_RETURN(*out, DeviceBuffer::Allocate(v.size() * 4, "norm weights"));
  return out->Upload(v.data(), v.size() * 4).WithContext(name);
}

Status CudaModel::RandomMatrix(WeightType type, int64_t rows, int64_t cols, uint64_t seed, Matrix* out) {
  LR_ASSIGN_OR_RETURN(*out, AllocateMatrix(type, rows, cols));
  return RandomizeMatrix(type, rows, cols, out->q.as<uint8_t>(), out->scales.as<uint8_t>(), seed, stream_);
}

Status CudaModel::Ones(int n, DeviceBuffer* out) {
  LR_ASSIGN_OR_RETURN(*out, DeviceBuffer::Allocate(static_cast<size_t>(n) * 4, "norm weights"));
  return FillFloats(out->as<float>(), n, 1.0f, stream_);
}

Result<std::unique_ptr<CudaModel>> CudaModel::Upload(const inference::Model& model) {
  LR_ASSIGN_OR_RETURN(DeviceInfo info, QueryDevice());
  const ModelConfig& c = model.config();
  const size_t need = UploadBytes(model);
  if (need > info.free_bytes)
    return ResourceExhausted("the model's weights take " + MiB(need) + " on the device; " + info.name + " has " +
                             MiB(info.free_bytes) + " free of " + MiB(info.total_bytes));
  std::unique_ptr<CudaModel> m(new CudaModel(c, std::move(info)));
  LR_RETURN_IF_ERROR(m->Init());
  const inference::GgufFile& g = model.gguf();
  auto matrix = [&](const std::string& name, Matrix* out) { return m->UploadMatrix(g, name, out); };
  auto vector = [&](const std::string& name, DeviceBuffer* out) { return m->UploadVector(g, name, out); };
  LR_RETURN_IF_ERROR(matrix("token_embd.weight", &m->embd_));
  if (c.tied_output) {
    m->out_ = &m->embd_.m;
  } else {
    LR_RETURN_IF_ERROR(matrix("output.weight", &m->output_));
    m->out_ = &m->output_.m;
  }
  LR_RETURN_IF_ERROR(vector("output_norm.weight", &m->output_norm_));
  m->layers_.resize(static_cast<size_t>(c.n_layer));
  for (int i = 0; i < c.n_layer; ++i) {
    Layer& l = m->layers_[i];
    const std::string p = "blk." + std::to_string(i) + ".";
    LR_RETURN_IF_ERROR(vector(p + "attn_norm.weight", &l.attn_norm));
    LR_RETURN_IF_ERROR(vector(p + "ffn_norm.weight", &l.ffn_norm));
    if (c.qk_norm) {
      LR_RETURN_IF_ERROR(vector(p + "attn_q_norm.weight", &l.q_norm));
      LR_RETURN_IF_ERROR(vector(p + "attn_k_norm.weight", &l.k_norm));
    }
    if (c.qkv_bias) {
      LR_RETURN_IF_ERROR(vector(p + "attn_q.bias", &l.bq));
      LR_RETURN_IF_ERROR(vector(p + "attn_k.bias", &l.bk));
      LR_RETURN_IF_ERROR(vector(p + "attn_v.bias", &l.bv));
    }
    if (c.kv_lora_rank > 0) {
      LR_RETURN_IF_ERROR(m->UploadMla(g, i));
    } else {
      LR_RETURN_IF_ERROR(matrix(p + "attn_q.weight", &l.wq));
      LR_RETURN_IF_ERROR(matrix(p + "attn_k.weight", &l.wk));
      LR_RETURN_IF_ERROR(matrix(p + "attn_v.weight", &l.wv));
      LR_RETURN_IF_ERROR(matrix(p + "attn_output.weight", &l.wo));
    }
    if (c.n_expert > 0 && i >= c.n_leading_dense) {
      LR_RETURN_IF_ERROR(m->UploadMoe(g, i));
    } else {
      LR_RETURN_IF_ERROR(matrix(p + "ffn_gate.weight", &l.gate));
      LR_RETURN_IF_ERROR(matrix(p + "ffn_up.weight", &l.up));
      LR_RETURN_IF_ERROR(matrix(p + "ffn_down.weight", &l.down));
    }
  }
  m->weight_bytes_per_token_ = model.weight_bytes_per_token();
  return m;
}

Result<std::unique_ptr<CudaModel>> CudaModel::Dummy(const ModelConfig& config, const DummyTypes& types, uint64_t seed) {
  LR_ASSIGN_OR_RETURN(DeviceInfo info, QueryDevice());
  std::unique_ptr<CudaModel> m(new CudaModel(config, std::move(info)));
  m->dummy_ = true;
  LR_RETURN_IF_ERROR(m->Init());
  const ModelConfig& c = m->config_;
  const int e = c.n_embd;
  auto matrix = [&](WeightType type, int64_t rows, int64_t cols, Matrix* out) {
    return m->RandomMatrix(type, rows, cols, seed++, out);
  };
  auto ones = [&](int n, DeviceBuffer* out) { return m->Ones(n, out); };
  auto zeros = [&](int64_t n, DeviceBuffer* out) -> Status {
    LR_ASSIGN_OR_RETURN(*out, DeviceBuffer::Allocate(static_cast<size_t>(n) * 4, "biases"));
    return FillFloats(out->as<float>(), n, 0.0f, m->stream_);
  };
  size_t per_token = 0;
  auto bytes = [](const Matrix& x) { return x.q.bytes() + x.scales.bytes(); };
  LR_RETURN_IF_ERROR(matrix(types.embedding, c.n_vocab, e, &m->embd_));
  per_token += bytes(m->embd_) / static_cast<size_t>(c.n_vocab);
  if (c.tied_output) {
    m->out_ = &m->embd_.m;
    per_token += bytes(m->embd_);
  } else {
    LR_RETURN_IF_ERROR(matrix(types.output, c.n_vocab, e, &m->output_));
    m->out_ = &m->output_.m;
    per_token += bytes(m->output_);
  }
  LR_RETURN_IF_ERROR(ones(e, &m->output_norm_));
  m->layers_.resize(static_cast<size_t>(c.n_layer));
  const int64_t qd = int64_t{c.n_head} * c.head_dim, kd = int64_t{c.n_head_kv} * c.head_dim;
  const int64_t vd = int64_t{c.n_head_kv} * c.head_dim_v, od = int64_t{c.n_head} * c.head_dim_v;
  for (int il = 0; il < c.n_layer; ++il) {
    Layer& l = m->layers_[il];
    LR_RETURN_IF_ERROR(ones(e, &l.attn_norm));
    LR_RETURN_IF_ERROR(ones(e, &l.ffn_norm));
    if (c.qk_norm) {
      LR_RETURN_IF_ERROR(ones(c.head_dim, &l.q_norm));
      LR_RETURN_IF_ERROR(ones(c.head_dim, &l.k_norm));
    }
    if (c.qkv_bias) {  // zero biases: the adds run, the products decide the values
      LR_RETURN_IF_ERROR(zeros(qd, &l.bq));
      LR_RETURN_IF_ERROR(zeros(kd, &l.bk));
      LR_RETURN_IF_ERROR(zeros(vd, &l.bv));
    }
    const WeightType t = types.matrices;
    if (c.kv_lora_rank > 0) {
      LR_RETURN_IF_ERROR(m->DummyMla(il, types, &seed, &per_token));
    } else {
      LR_RETURN_IF_ERROR(matrix(t, qd, e, &l.wq));
      LR_RETURN_IF_ERROR(matrix(t, kd, e, &l.wk));
      LR_RETURN_IF_ERROR(matrix(t, vd, e, &l.wv));
      LR_RETURN_IF_ERROR(matrix(t, e, od, &l.wo));
    }
    if (c.n_expert > 0 && il >= c.n_leading_dense) {
      LR_RETURN_IF_ERROR(m->DummyMoe(il, types, &seed, &per_token));
    } else {
      LR_RETURN_IF_ERROR(matrix(t, c.n_ff, e, &l.gate));
      LR_RETURN_IF_ERROR(matrix(t, c.n_ff, e, &l.up));
      LR_RETURN_IF_ERROR(matrix(t, e, c.n_ff, &l.down));
    }
    for (const Matrix* x : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down}) per_token += bytes(*x);
  }
  m->weight_bytes_per_token_ = per_token;
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamSynchronize(S(m->stream_)), "generating dummy weights"));
  return m;
}

Status CudaModel::ConfigureCache(inference::KvCacheOptions* o) {
  const bool compressed = o->k_format != "f16" || o->v_format != "f16";
  if (compressed && (o->sink_tokens > 0 || o->window_tokens > 0))
    return InvalidArgument("the CUDA backend keeps no sink or window rows (--kv-sinks " +
                           std::to_string(o->sink_tokens) + ", --kv-window " + std::to_string(o->window_tokens) +
                           "); expected 0 with --ctk " + o->k_format + " --ctv " + o->v_format);
  if (compressed && config_.kv_lora_rank > 0)
    return Unsupported("the CUDA MLA blocks keep f16 latent rows; got --ctk " + o->k_format + " --ctv " + o->v_format +
                       " (expected f16, or --device cpu for a compressed MLA cache)");
  LR_ASSIGN_OR_RETURN(const size_t page_bytes, PageBytes(kv_shape(), o->k_format, o->v_format));
  const size_t bytes = page_bytes * ((static_cast<size_t>(o->max_tokens) + kPageTokens - 1) / kPageTokens);
  size_t free_bytes = 0, total = 0;
  LR_RETURN_IF_ERROR(CheckCuda(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo"));
  if (bytes > free_bytes)
    return ResourceExhausted("the KV pool (--kv-budget) takes " + MiB(bytes) + " on the device beside " +
                             MiB(weight_bytes_) + " of weights; " + info_.name + " has " + MiB(free_bytes) + " free");
  LR_ASSIGN_OR_RETURN(DeviceBuffer pool, DeviceBuffer::Allocate(bytes, "the KV page pool"));
  o->page_store = std::make_shared<DevicePages>(std::move(pool), page_bytes, stream_);
  return Status::Ok();
}

Status CudaModel::Reserve(int n, int n_logits, int n_pages) {
  const ModelConfig& c = config_;
  if (n > cap_tokens_ || n_logits > cap_logits_) {
    DropGraphs();
    const int tokens = std::max({n, cap_tokens_, kMaxMatVecTokens});
    const size_t t = static_cast<size_t>(tokens);
    LR_ASSIGN_OR_RETURN(x_, DeviceBuffer::Allocate(t * c.n_embd * 4, "activations"));
    const size_t widest = std::max({c.n_embd, c.n_head * c.head_dim_v, c.n_ff});
    LR_ASSIGN_OR_RETURN(xn_, DeviceBuffer::Allocate(t * std::max<size_t>(c.n_embd, widest) * 4, "activations"));
    LR_ASSIGN_OR_RETURN(q_, DeviceBuffer::Allocate(t * c.n_head * c.head_dim * 4, "queries"));
    LR_ASSIGN_OR_RETURN(k_, DeviceBuffer::Allocate(t * c.n_head_kv * c.head_dim * 4, "keys"));
    LR_ASSIGN_OR_RETURN(v_, DeviceBuffer::Allocate(t * c.n_head_kv * c.head_dim_v * 4, "values"));
    LR_ASSIGN_OR_RETURN(attn_, DeviceBuffer::Allocate(t * c.n_head * c.head_dim_v * 4, "attention"));
    size_t part = 0;  // the split attention's states: the most any step of up to `tokens` tokens needs
    for (int k = 1; k <= std::min(tokens, kMaxMatVecTokens); ++k)
      part = std::max(part, AttentionScratchFloats(k, c.n_head, c.n_head_kv, c.head_dim_v));
    LR_ASSIGN_OR_RETURN(attn_part_, DeviceBuffer::Allocate(std::max<size_t>(part, 1) * 4, "attention splits"));
    prefill_.reset();
    prefill_order_.clear();
    if (tokens > kMaxMatVecTokens) {  // the tensor-core products' buffers, and their order in a step
      // A dense model's products run in a fixed order (the next matrix decoded beside the product before it); the
      // MLA and MoE blocks multiply on the same buffers as MatMulTiled's scratch, one product after another.
      const bool ordered = c.kv_lora_rank == 0 && c.n_expert == 0;
      int64_t max_weights = 0, max_cols = out_->cols;
      for (const Layer& l : layers_) {
        for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down, &l.wq_a, &l.wq_b, &l.wkv_a,
                                &l.router, &l.gate_shexp, &l.up_shexp, &l.down_shexp}) {
          max_weights = std::max(max_weights, m->m.rows * m->m.cols);
          max_cols = std::max(max_cols, m->m.cols);
          if (ordered && m->m.rows > 0) prefill_order_.push_back(&m->m);
        }
      }
      LR_ASSIGN_OR_RETURN(prefill_, PrefillProducts::Create(max_weights, max_cols, tokens));
    }
    LR_ASSIGN_OR_RETURN(g_, DeviceBuffer::Allocate(t * c.n_ff * 4, "FFN"));
    LR_ASSIGN_OR_RETURN(u_, DeviceBuffer::Allocate(t * c.n_ff * 4, "FFN"));
    const size_t q8 = static_cast<size_t>(kMaxMatVecTokens) * std::max<size_t>(c.n_embd, widest);  // decode inputs
    LR_ASSIGN_OR_RETURN(xq_, DeviceBuffer::Allocate(q8, "quantized activations"));
    LR_ASSIGN_OR_RETURN(xds_, DeviceBuffer::Allocate(q8 / 32 * 8, "quantized activations"));
    const size_t q8_ff = static_cast<size_t>(kMaxMatVecTokens) * c.n_ff;
    LR_ASSIGN_OR_RETURN(hq_, DeviceBuffer::Allocate(q8_ff, "quantized activations"));
    LR_ASSIGN_OR_RETURN(hds_, DeviceBuffer::Allocate(q8_ff / 32 * 8, "quantized activations"));
    const int rows = std::max({n_logits, cap_logits_, kMaxMatVecTokens});
    LR_ASSIGN_OR_RETURN(logits_, DeviceBuffer::Allocate(static_cast<size_t>(rows) * c.n_vocab * 4, "logits"));
    LR_ASSIGN_OR_RETURN(ids_, DeviceBuffer::Allocate(static_cast<size_t>(rows) * 4, "token ids"));
    if (host_logits_ != nullptr) cudaFreeHost(host_logits_);
    host_logits_ = nullptr;
    host_logits_floats_ = static_cast<size_t>(rows) * c.n_vocab;
    LR_RETURN_IF_ERROR(CheckCuda(cudaMallocHost(&host_logits_, host_logits_floats_ * 4), "pinned logits"));
    LR_RETURN_IF_ERROR(ReserveMlaMoe(t));
    cap_tokens_ = tokens;
    cap_logits_ = rows;
    cap_pages_ = 0;  // the step array's layout depends on cap_tokens_
  }
  if (n_pages > cap_pages_) {
    DropGraphs();
    cap_pages_ = std::max(n_pages, 2 * cap_pages_);
    const size_t words = 4 * static_cast<size_t>(cap_tokens_) + cap_pages_;
    LR_ASSIGN_OR_RETURN(step_, DeviceBuffer::Allocate(words * 4, "step arrays"));
    if (staging_ != nullptr) cudaFreeHost(staging_);
    staging_ = nullptr;
    LR_RETURN_IF_ERROR(CheckCuda(cudaMallocHost(&staging_, words * 4), "pinned step arrays"));
  }
  return Status::Ok();
}

Status CudaModel::Products(const Product* p, int count, const float* in, int n_tokens, const Q8Activations* in_q) {
  if (n_tokens <= kMaxMatVecTokens) {
    for (int first = 0; first < count;) {
      int end = first + 1;
      while (end < count && p[end].w.type == p[first].w.type && p[end].w.cols == p[first].w.cols) ++end;
      LR_RETURN_IF_ERROR(MatVecMany(p + first, end - first, in, n_tokens, stream_, in_q));
      first = end;
    }
    return Status::Ok();
  }
  for (int i = 0; i < count; ++i)
    LR_RETURN_IF_ERROR(
        MatMulTiled(p[i].w, in, n_tokens, p[i].y, p[i].y_stride, p[i].add, prefill_->scratch(), stream_));
  return Status::Ok();
}

Status CudaModel::Enqueue(int n, int n_logits, bool greedy, bool flash) {
  const ModelConfig& c = config_;
  const int e = c.n_embd;
  const int qd = c.n_head * c.head_dim, kd = c.n_head_kv * c.head_dim, vd = c.n_head_kv * c.head_dim_v;
  int32_t* step = step_.as<int32_t>();
  const int32_t* tokens = step;
  const TokenPlaces places{step + cap_tokens_, step + 2 * cap_tokens_, step + 4 * cap_tokens_};
  const int32_t* logit_rows = step + 3 * cap_tokens_;
  float *x = x_.as<float>(), *xn = xn_.as<float>(), *q = q_.as<float>(), *k = k_.as<float>(), *v = v_.as<float>();
  float *attn = attn_.as<float>(), *g = g_.as<float>(), *u = u_.as<float>();
  void* s = stream_;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  // A decode step quantizes each product input once (in the step that writes it: the norms, SwiGLU) and runs the
  // integer products on it; prefill multiplies f32 activations on the tensor cores.
  const bool decode = n <= kMaxMatVecTokens;
  const Q8Activations xq{xq_.as<int8_t>(), xds_.as<float>()}, hq{hq_.as<int8_t>(), hds_.as<float>()};
  auto Norm = [&](const int32_t* rows, int count, const DeviceBuffer& w) -> Status {
    if (decode) return RmsNormQ8(x, rows, count, e, w.as<float>(), c.rms_eps, xn, xq, s);
    return RmsNorm(x, rows, count, e, w.as<float>(), c.rms_eps, xn, s);
  };
  // Products over the same activations `in` (quantized in in_q, else xq): one launch for those of one type (decode
  // steps), else one product each on the tensor cores (prefill, in the order of prefill_order_).
  auto Products = [&](const Product* p, int count, const float* in, int n_tokens,
                      const Q8Activations& in_q = Q8Activations{}) -> Status {
    if (n_tokens <= kMaxMatVecTokens) {
      const Q8Activations* quantized = in_q.q != nullptr ? &in_q : &xq;
      for (int first = 0; first < count;) {
        int end = first + 1;
        while (end < count && p[end].w.type == p[first].w.type) ++end;
        LR_RETURN_IF_ERROR(MatVecMany(p + first, end - first, in, n_tokens, s, quantized));
        first = end;
      }
      return Status::Ok();
    }
    for (int i = 0; i < count; ++i) {
      if (prefill_order_.empty()) {
        LR_RETURN_IF_ERROR(MatMulTiled(p[i].w, in, n_tokens, p[i].y, p[i].y_stride, p[i].add, prefill_->scratch(), s));
      } else {
        LR_RETURN_IF_ERROR(prefill_->MatMul(p[i].w, in, n_tokens, p[i].y, p[i].y_stride, p[i].add));
      }
    }
    return Status::Ok();
  };
  if (n > kMaxMatVecTokens && !prefill_order_.empty())
    LR_RETURN_IF_ERROR(prefill_->Begin(prefill_order_.data(), static_cast<int>(prefill_order_.size()), s));
  LR_RETURN_IF_ERROR(DequantizeRows(embd_.m, tokens, n, x, s));
  bool normed = false;  // xn already holds this layer's attn_norm of x (the last MoE kernel wrote it)
  for (int il = 0; il < c.n_layer; ++il) {
    const Layer& l = layers_[il];
    if (!normed) LR_RETURN_IF_ERROR(Norm(nullptr, n, l.attn_norm));
    normed = false;
    if (c.kv_lora_rank > 0) {
      LR_RETURN_IF_ERROR(EnqueueMla(il, n, places, flash));
    } else {
      const Product qkv[] = {{l.wq.m, q, qd}, {l.wk.m, k, kd}, {l.wv.m, v, vd}};
      LR_RETURN_IF_ERROR(Products(qkv, 3, xn, n));
      QkvArgs a;
      a.q = q;
      a.k = k;
      a.v = v;
      a.n_head = c.n_head;
      a.q_norm = c.qk_norm ? l.q_norm.as<float>() : nullptr;
      a.k_norm = c.qk_norm ? l.k_norm.as<float>() : nullptr;
      a.q_bias = c.qkv_bias ? l.bq.as<float>() : nullptr;
      a.k_bias = c.qkv_bias ? l.bk.as<float>() : nullptr;
      a.v_bias = c.qkv_bias ? l.bv.as<float>() : nullptr;
      a.eps = c.rms_eps;
      a.inv_freq = inv_freq_.as<float>();
      a.n_rot = c.rope.n_rot;
      a.cos_sin_factor = ops::RopeCosSinFactor(c.rope);
      a.halves = c.rope.style == ops::RopeStyle::kHalves;
      a.layer = il;
      const bool f16 = k_format_->n_runs == 0 && v_format_->n_runs == 0;
      a.store_kv = f16;
      LR_RETURN_IF_ERROR(PrepareQkv(a, pool_, places, n, s));
      if (!f16) {
        LR_RETURN_IF_ERROR(EncodeKvRows(*k_format_, k, *v_format_, v, kv_pages_, il, places, n, s));
      }
      // A decode step's attention output goes to the output product quantized (by the f16 attention kernels
      // themselves where the value rows are whole blocks; attention on the codes writes floats). FlashAttention reads
      // f16 pages.
      const bool coded = !f16 || shared_tokens_ > 0;
      const bool fused = decode && c.head_dim_v % 32 == 0 && !coded;
      if (coded) {
        LR_RETURN_IF_ERROR(CodedAttention(q, c.n_head, scale, *k_format_, *v_format_, kv_pages_, il, places, n,
                                          shared_tokens_, attn, coded_part_.as<float>(), s));
      } else if (flash) {
        LR_RETURN_IF_ERROR(FlashAttention(q, c.n_head, scale, pool_, il, places, n, attn, s));
      } else {
        LR_RETURN_IF_ERROR(Attention(q, c.n_head, scale, pool_, il, places, n, attn, attn_part_.as<float>(), s,
                                     fused ? &xq : nullptr));
      }
      if (decode && !fused)
        LR_RETURN_IF_ERROR(QuantizeQ8(attn, static_cast<int64_t>(n) * c.n_head * c.head_dim_v, xq, s));
      const Product wo[] = {{l.wo.m, x, e, /*add=*/true}};
      LR_RETURN_IF_ERROR(Products(wo, 1, attn, n));
    }
    LR_RETURN_IF_ERROR(Norm(nullptr, n, l.ffn_norm));
    if (l.moe) {
      normed = il + 1 < c.n_layer;  // the weighted sum writes the next layer's xn (and xq in decode steps)
      LR_RETURN_IF_ERROR(EnqueueMoe(il, n, normed ? layers_[il + 1].attn_norm.as<float>() : nullptr));
      continue;
    }
    const Product gate_up[] = {{l.gate.m, g, c.n_ff}, {l.up.m, u, c.n_ff}};
    const int64_t ff = static_cast<int64_t>(n) * c.n_ff;
    if (decode && l.gate.m.type == l.up.m.type && TakesQ8(l.gate.m.type) && c.n_ff % 32 == 0) {
      // Gate, up and SwiGLU, quantized into hq (xq is read meanwhile).
      LR_RETURN_IF_ERROR(MatVecSwiGluQ8(l.gate.m, l.up.m, xq, n, g, u, hq, s));
    } else {
      LR_RETURN_IF_ERROR(Products(gate_up, 2, xn, n));
      if (decode) {
        LR_RETURN_IF_ERROR(SwiGluQ8(g, u, ff, hq, s));
      } else {
        LR_RETURN_IF_ERROR(SwiGlu(g, u, ff, s));
      }
    }
    const Product down[] = {{l.down.m, x, e, /*add=*/true}};
    LR_RETURN_IF_ERROR(Products(down, 1, g, n, hq));
  }
  if (n_logits > 0) {
    // The logit rows' norm: quantized for the output product when that is a matrix-vector product.
    if (n_logits <= kMaxMatVecTokens) {
      LR_RETURN_IF_ERROR(RmsNormQ8(x, logit_rows, n_logits, e, output_norm_.as<float>(), c.rms_eps, xn, xq, s));
      const Product logits[] = {{*out_, logits_.as<float>(), c.n_vocab}};
      LR_RETURN_IF_ERROR(Products(logits, 1, xn, n_logits));
    } else {
      LR_RETURN_IF_ERROR(RmsNorm(x, logit_rows, n_logits, e, output_norm_.as<float>(), c.rms_eps, xn, s));
      LR_RETURN_IF_ERROR(
          MatMulTiled(*out_, xn, n_logits, logits_.as<float>(), c.n_vocab, false, prefill_->scratch(), s));
    }
    if (greedy) LR_RETURN_IF_ERROR(Sample(logits_.as<float>(), n_logits, c.n_vocab, 0.0f, 0, ids_.as<int32_t>(), s));
  }
  return Status::Ok();
}

Status CudaModel::Step(KvCache& cache, std::span<const BatchToken> batch, bool greedy, int* n_logits) {
  const ModelConfig& c = config_;
  const int n = static_cast<int>(batch.size());
  *n_logits = 0;
  if (n == 0) return Status::Ok();
  auto* pages = dynamic_cast<DevicePages*>(cache.options().page_store.get());
  if (pages == nullptr || pages->page_bytes() != cache.page_bytes())
    return InvalidArgument("the KV cache was not made for the CUDA model (ConfigureCache before KvCache::Create)");
  for (const BatchToken& t : batch)
    if (t.token < 0 || t.token >= c.n_vocab)
      return InvalidArgument("token id " + std::to_string(t.token) + " is outside the vocabulary (" +
                             std::to_string(c.n_vocab) + " tokens)");
  std::vector<int32_t> pos(n), logit_rows;
  for (int i = 0; i < n; ++i) {
    LR_ASSIGN_OR_RETURN(pos[i], cache.AppendSlot(batch[i].seq));
    if (batch[i].want_logits) logit_rows.push_back(i);
  }
  LR_RETURN_IF_ERROR(pages->TakeError());
  // Each distinct sequence's page table once.
  std::vector<int32_t> first(n), table;
  std::unordered_map<int, int32_t> at;
  for (int i = 0; i < n; ++i) {
    auto [it, fresh] = at.try_emplace(batch[i].seq, static_cast<int32_t>(table.size()));
    if (fresh) {
      const std::span<const int> t = cache.PageTable(batch[i].seq);
      table.insert(table.end(), t.begin(), t.end());
    }
    first[i] = it->second;
  }
  const int nl = static_cast<int>(logit_rows.size());
  LR_RETURN_IF_ERROR(Reserve(n, nl, static_cast<int>(table.size())));
  for (int i = 0; i < n; ++i) staging_[i] = batch[i].token;
  std::memcpy(staging_ + cap_tokens_, pos.data(), n * 4);
  std::memcpy(staging_ + 2 * cap_tokens_, first.data(), n * 4);
  std::memcpy(staging_ + 3 * cap_tokens_, logit_rows.data(), nl * 4);
  std::memcpy(staging_ + 4 * cap_tokens_, table.data(), table.size() * 4);
  const size_t words = 4 * static_cast<size_t>(cap_tokens_) + table.size();
  LR_RETURN_IF_ERROR(CheckCuda(cudaMemcpyAsync(step_.get(), staging_, words * 4, cudaMemcpyHostToDevice, S(stream_)),
                               "copying the step's tokens"));
  const inference::KvShape shape = kv_shape();
  pool_ = KvPool{pages->base(), pages->page_bytes(), shape.n_layer, shape.n_head_kv, shape.k_dim, shape.v_dim};
  if (c.kv_lora_rank == 0) {  // the MLA blocks keep f16 latent rows (pool_)
    LR_RETURN_IF_ERROR(PrepareCodedAttention(cache, pages, batch, pos));
  } else {
    shared_tokens_ = 0;
  }
  if (n > kMaxMatVecTokens) {
    // FlashAttention makes one pass per sequence in each 64-token block: worth it where the tokens come in runs of
    // one sequence at least 16 long on average (a prefill chunk), not for many sequences' decode tokens.
    int runs = 0;
    for (int i = 0; i < n; ++i) runs += i == 0 || batch[i].seq != batch[i - 1].seq;
    const bool takes = c.kv_lora_rank > 0 ? FlashAttentionLatentTakes(c.kv_lora_rank + c.qk_rope_dim, c.kv_lora_rank)
                                          : FlashAttentionTakes(c.head_dim, c.head_dim_v);
    const bool flash = takes && n >= 16 * runs;
    LR_RETURN_IF_ERROR(Enqueue(n, nl, greedy, flash));
  } else {
    if (graph_pool_ != pages->base()) {
      DropGraphs();
      graph_pool_ = pages->base();
    }
    const std::tuple<int, int, int> key{n, 2 * nl + (greedy ? 1 : 0), shared_tokens_};
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      cudaGraph_t graph;
      LR_RETURN_IF_ERROR(
          CheckCuda(cudaStreamBeginCapture(S(stream_), cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture"));
      const Status enqueued = Enqueue(n, nl, greedy, /*flash=*/false);
      const cudaError_t ended = cudaStreamEndCapture(S(stream_), &graph);
      LR_RETURN_IF_ERROR(enqueued);
      LR_RETURN_IF_ERROR(CheckCuda(ended, "cudaStreamEndCapture"));
      cudaGraphExec_t exec;
      const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      LR_RETURN_IF_ERROR(CheckCuda(made, "cudaGraphInstantiate"));
      it = graphs_.emplace(key, exec).first;
    }
    LR_RETURN_IF_ERROR(
        CheckCuda(cudaGraphLaunch(static_cast<cudaGraphExec_t>(it->second), S(stream_)), "cudaGraphLaunch"));
  }
  *n_logits = nl;
  return Status::Ok();
}

Status CudaModel::PrepareCodedAttention(KvCache& cache, void* device_pages, std::span<const BatchToken> batch,
                                        const std::vector<int32_t>& pos) {
  const ModelConfig& c = config_;
  auto* pages = static_cast<DevicePages*>(device_pages);
  if (!pages->has_codecs) {
    LR_ASSIGN_OR_RETURN(pages->k_codecs, UploadCodecs(cache, false));
    LR_ASSIGN_OR_RETURN(pages->v_codecs, UploadCodecs(cache, true));
    pages->has_codecs = true;
  }
  k_format_ = &pages->k_codecs.format();
  v_format_ = &pages->v_codecs.format();
  kv_pages_ =
      KvPages{pages->base(), pages->page_bytes(), c.n_layer, c.n_head_kv, k_format_->row_bytes, v_format_->row_bytes};
  // A decode step of sequences forked from one prompt reads the prompt's pages once (cuda/kv_attention.h).
  const int n = static_cast<int>(batch.size());
  shared_tokens_ = 0;
  if (n >= 2 && n <= kMaxMatVecTokens) {
    std::vector<std::span<const int>> tables;
    std::vector<int> contexts;
    std::vector<int> seqs;
    for (int i = 0; i < n; ++i) {
      seqs.push_back(batch[i].seq);
      tables.push_back(cache.PageTable(batch[i].seq));
      contexts.push_back(pos[i] + 1);
    }
    std::sort(seqs.begin(), seqs.end());
    if (std::adjacent_find(seqs.begin(), seqs.end()) == seqs.end())
      shared_tokens_ = SharedPrefixTokens(tables, contexts);
  }
  const bool f16 = k_format_->n_runs == 0 && v_format_->n_runs == 0;
  if (f16 && shared_tokens_ == 0) return Status::Ok();
  size_t floats = CodedAttentionScratchFloats(cap_tokens_, c.n_head, c.n_head_kv, c.head_dim_v, false);
  for (int k = 1; k <= std::min(cap_tokens_, kMaxMatVecTokens); ++k)
    floats = std::max(floats, CodedAttentionScratchFloats(k, c.n_head, c.n_head_kv, c.head_dim_v, true));
  if (coded_part_.bytes() < floats * 4) {
    DropGraphs();
    LR_ASSIGN_OR_RETURN(coded_part_, DeviceBuffer::Allocate(floats * 4, "attention states"));
  }
  return Status::Ok();
}

Status CudaModel::Forward(KvCache& cache, std::span<const BatchToken> batch, std::vector<float>* logits) {
  logits->clear();
  int nl = 0;
  LR_RETURN_IF_ERROR(Step(cache, batch, /*greedy=*/false, &nl));
  const size_t floats = static_cast<size_t>(nl) * config_.n_vocab;
  if (floats > 0) {
    LR_RETURN_IF_ERROR(
        CheckCuda(cudaMemcpyAsync(host_logits_, logits_.get(), floats * 4, cudaMemcpyDeviceToHost, S(stream_)),
                  "copying logits"));
  }
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamSynchronize(S(stream_)), "the forward step"));
  logits->assign(host_logits_, host_logits_ + floats);
  return Status::Ok();
}

Status CudaModel::ForwardGreedy(KvCache& cache, std::span<const BatchToken> batch, std::vector<int32_t>* ids) {
  ids->clear();
  int nl = 0;
  LR_RETURN_IF_ERROR(Step(cache, batch, /*greedy=*/true, &nl));
  ids->resize(static_cast<size_t>(nl));
  if (nl > 0) {
    LR_RETURN_IF_ERROR(CheckCuda(cudaMemcpyAsync(staging_, ids_.get(), nl * 4, cudaMemcpyDeviceToHost, S(stream_)),
                                 "copying token ids"));
  }
  LR_RETURN_IF_ERROR(CheckCuda(cudaStreamSynchronize(S(stream_)), "the forward step"));
  std::memcpy(ids->data(), staging_, nl * 4);
  return Status::Ok();
}

Result<double> MeasureCopyBandwidth(size_t bytes) {
  LR_ASSIGN_OR_RETURN(DeviceBuffer a, DeviceBuffer::Allocate(bytes, "the bandwidth test"));
  LR_ASSIGN_OR_RETURN(DeviceBuffer b, DeviceBuffer::Allocate(bytes, "the bandwidth test"));
  LR_RETURN_IF_ERROR(a.Fill(0x5A));
  cudaEvent_t start, stop;
  LR_RETURN_IF_ERROR(CheckCuda(cudaEventCreate(&start), "cudaEventCreate"));
  LR_RETURN_IF_ERROR(CheckCuda(cudaEventCreate(&stop), "cudaEventCreate"));
  double best = 0;
  Status status;
  for (int rep = 0; rep < 6 && status.ok(); ++rep) {
    cudaEventRecord(start);
    status = CheckCuda(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice), "device copy");
    cudaEventRecord(stop);
    if (status.ok()) status = CheckCuda(cudaEventSynchronize(stop), "device copy");
    float ms = 0;
    if (status.ok()) status = CheckCuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    if (status.ok() && rep > 0) best = std::max(best, 2.0 * static_cast<double>(bytes) / (ms * 1e-3));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  LR_RETURN_IF_ERROR(status);
  return best;
}

}  // namespace lr::cuda
