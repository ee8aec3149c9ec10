// CudaModel's deepseek2 blocks: multi-head latent attention (cuda/mla.h) and mixture-of-experts FFNs (cuda/moe.h),
// their weights (from GGUF or dummy) and their per-step buffers.
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "base/half.h"
#include "cuda/mla.h"
#include "cuda/model.h"
#include "cuda/moe.h"
#include "inference/mla.h"
#include "ops/kernels.h"
#include "ops/ops.h"

namespace lr::cuda {
namespace {

using inference::ModelConfig;

int PaddedQLora(const ModelConfig& c) { return (c.q_lora_rank + 31) / 32 * 32; }

// Room for `values` int8 activations (a multiple of 32) and their blocks' (d, s).
template <typename Q8Buffer>
Status AllocateQ8(size_t values, Q8Buffer* b) {
  LR_ASSIGN_OR_RETURN(b->q, DeviceBuffer::Allocate(std::max<size_t>(values, 32), "quantized activations"));
  LR_ASSIGN_OR_RETURN(b->ds, DeviceBuffer::Allocate(std::max<size_t>(values, 32) / 32 * 8, "quantized activations"));
  return Status::Ok();
}

MlaArgs ArgsOf(const ModelConfig& c, int layer) {
  MlaArgs a;
  a.n_head = c.n_head;
  a.nope = c.qk_nope_dim;
  a.rope = c.qk_rope_dim;
  a.lat = c.kv_lora_rank;
  a.v_dim = c.head_dim_v;
  a.eps = c.rms_eps;
  a.cos_sin_factor = ops::RopeCosSinFactor(c.rope);
  a.temperature_scale = c.attn_temperature_scale;
  a.temperature_length = c.attn_temperature_length;
  a.layer = layer;
  return a;
}

}  // namespace

Status CudaModel::UploadMla(const inference::GgufFile& g, int il) {
  const ModelConfig& c = config_;
  Layer& l = layers_[il];
  const std::string p = "blk." + std::to_string(il) + ".";
  if (c.q_lora_rank > 0) {
    LR_RETURN_IF_ERROR(UploadMatrix(g, p + "attn_q_a.weight", &l.wq_a));
    LR_RETURN_IF_ERROR(UploadVector(g, p + "attn_q_a_norm.weight", &l.q_a_norm));
    LR_RETURN_IF_ERROR(UploadMatrix(g, p + "attn_q_b.weight", &l.wq_b));
  } else {
    LR_RETURN_IF_ERROR(UploadMatrix(g, p + "attn_q.weight", &l.wq));
  }
  LR_RETURN_IF_ERROR(UploadMatrix(g, p + "attn_kv_a_mqa.weight", &l.wkv_a));
  LR_RETURN_IF_ERROR(UploadVector(g, p + "attn_kv_a_norm.weight", &l.kv_a_norm));
  LR_RETURN_IF_ERROR(UploadMatrix(g, p + "attn_output.weight", &l.wo));
  // attn_kv_b as f16 rows, decoded on the host.
  const std::string name = p + "attn_kv_b.weight";
  LR_ASSIGN_OR_RETURN(const inference::GgufFile::Tensor* t, g.FindTensor(name));
  const int64_t rows = int64_t{c.n_head} * (c.qk_nope_dim + c.head_dim_v), cols = c.kv_lora_rank;
  if (t->shape.size() != 2 || t->shape[0] != cols || t->shape[1] != rows)
    return Corrupt(g.path() + ": " + name + " is not " + std::to_string(rows) + " rows of " + std::to_string(cols));
  std::vector<float> row(static_cast<size_t>(cols));
  std::vector<uint16_t> halves(static_cast<size_t>(rows * cols));
  const size_t row_bytes = t->bytes / static_cast<size_t>(rows);
  for (int64_t r = 0; r < rows; ++r) {
    ops::DequantizeRow(t->type, t->data + r * row_bytes, row.data(), cols);
    for (int64_t i = 0; i < cols; ++i) halves[r * cols + i] = FloatToHalf(row[i]);
  }
  LR_ASSIGN_OR_RETURN(l.kv_b, DeviceBuffer::Allocate(halves.size() * 2, "attn_kv_b"));
  weight_bytes_ += halves.size() * 2;
  return l.kv_b.Upload(halves.data(), halves.size() * 2).WithContext(name);
}

Status CudaModel::UploadMoe(const inference::GgufFile& g, int il) {
  const ModelConfig& c = config_;
  Layer& l = layers_[il];
  l.moe = true;
  const std::string p = "blk." + std::to_string(il) + ".";
  LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_gate_inp.weight", &l.router));
  if (g.FindTensor(p + "exp_probs_b.bias").ok()) {
    LR_RETURN_IF_ERROR(UploadVector(g, p + "exp_probs_b.bias", &l.expert_bias));
  }
  LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_gate_exps.weight", &l.gate_exps));
  LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_up_exps.weight", &l.up_exps));
  LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_down_exps.weight", &l.down_exps));
  if (c.n_expert_shared > 0) {
    LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_gate_shexp.weight", &l.gate_shexp));
    LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_up_shexp.weight", &l.up_shexp));
    LR_RETURN_IF_ERROR(UploadMatrix(g, p + "ffn_down_shexp.weight", &l.down_shexp));
  }
  return Status::Ok();
}

Status CudaModel::DummyMla(int il, const DummyTypes& types, uint64_t* seed, size_t* per_token) {
  const ModelConfig& c = config_;
  Layer& l = layers_[il];
  const WeightType t = types.matrices;
  const int64_t e = c.n_embd, q_rows = int64_t{c.n_head} * c.head_dim;
  if (c.q_lora_rank > 0) {
    LR_RETURN_IF_ERROR(RandomMatrix(t, c.q_lora_rank, e, (*seed)++, &l.wq_a));
    LR_RETURN_IF_ERROR(Ones(c.q_lora_rank, &l.q_a_norm));
    LR_RETURN_IF_ERROR(RandomMatrix(t, q_rows, PaddedQLora(c), (*seed)++, &l.wq_b));
  } else {
    LR_RETURN_IF_ERROR(RandomMatrix(t, q_rows, e, (*seed)++, &l.wq));
  }
  LR_RETURN_IF_ERROR(RandomMatrix(t, c.kv_lora_rank + c.qk_rope_dim, e, (*seed)++, &l.wkv_a));
  LR_RETURN_IF_ERROR(Ones(c.kv_lora_rank, &l.kv_a_norm));
  LR_RETURN_IF_ERROR(RandomMatrix(t, e, int64_t{c.n_head} * c.head_dim_v, (*seed)++, &l.wo));
  const int64_t kv_b_rows = int64_t{c.n_head} * (c.qk_nope_dim + c.head_dim_v);
  Matrix kv_b;
  LR_RETURN_IF_ERROR(RandomMatrix(WeightType::kF16, kv_b_rows, c.kv_lora_rank, (*seed)++, &kv_b));
  l.kv_b = std::move(kv_b.q);
  // (wq and wo are counted with the dense layers' matrices.)
  for (const Matrix* x : {&l.wq_a, &l.wq_b, &l.wkv_a}) *per_token += x->q.bytes() + x->scales.bytes();
  *per_token += l.kv_b.bytes();
  return Status::Ok();
}

Status CudaModel::DummyMoe(int il, const DummyTypes& types, uint64_t* seed, size_t* per_token) {
  const ModelConfig& c = config_;
  Layer& l = layers_[il];
  l.moe = true;
  const int64_t e = c.n_embd, ne = c.n_expert, ff = c.n_ff_expert;
  LR_RETURN_IF_ERROR(RandomMatrix(WeightType::kF32, ne, e, (*seed)++, &l.router));
  LR_RETURN_IF_ERROR(RandomMatrix(types.experts, ne * ff, e, (*seed)++, &l.gate_exps));
  LR_RETURN_IF_ERROR(RandomMatrix(types.experts, ne * ff, e, (*seed)++, &l.up_exps));
  LR_RETURN_IF_ERROR(RandomMatrix(types.experts, ne * e, ff, (*seed)++, &l.down_exps));
  if (c.n_expert_shared > 0) {
    const int64_t sh = ff * c.n_expert_shared;
    LR_RETURN_IF_ERROR(RandomMatrix(types.matrices, sh, e, (*seed)++, &l.gate_shexp));
    LR_RETURN_IF_ERROR(RandomMatrix(types.matrices, sh, e, (*seed)++, &l.up_shexp));
    LR_RETURN_IF_ERROR(RandomMatrix(types.matrices, e, sh, (*seed)++, &l.down_shexp));
  }
  auto bytes = [](const Matrix& x) { return x.q.bytes() + x.scales.bytes(); };
  for (const Matrix* x : {&l.router, &l.gate_shexp, &l.up_shexp, &l.down_shexp}) *per_token += bytes(*x);
  const size_t experts = bytes(l.gate_exps) + bytes(l.up_exps) + bytes(l.down_exps);
  *per_token += experts / static_cast<size_t>(ne) * c.n_expert_used;
  return Status::Ok();
}

Status CudaModel::ReserveMlaMoe(size_t t) {
  const ModelConfig& c = config_;
  if (c.kv_lora_rank > 0) {
    const size_t kd = static_cast<size_t>(c.kv_lora_rank) + c.qk_rope_dim, h = static_cast<size_t>(c.n_head);
    qa_stride_ = PaddedQLora(c);
    LR_ASSIGN_OR_RETURN(qa_, DeviceBuffer::Allocate(std::max<size_t>(t * qa_stride_, 1) * 4, "MLA q_lora"));
    LR_RETURN_IF_ERROR(qa_.Fill(0));  // the padding columns stay 0
    LR_ASSIGN_OR_RETURN(kv_, DeviceBuffer::Allocate(t * kd * 4, "MLA latent rows"));
    LR_ASSIGN_OR_RETURN(q_abs_, DeviceBuffer::Allocate(t * h * kd * 4, "MLA absorbed queries"));
    LR_ASSIGN_OR_RETURN(latent_, DeviceBuffer::Allocate(t * h * c.kv_lora_rank * 4, "MLA attended latents"));
    size_t part = 1;
    const MlaArgs a = ArgsOf(c, 0);
    for (int k = 1; k <= std::min<int>(static_cast<int>(t), kMaxMatVecTokens); ++k)
      part = std::max(part, MlaAttentionScratchFloats(a, k));
    LR_ASSIGN_OR_RETURN(mla_part_, DeviceBuffer::Allocate(part * 4, "MLA attention splits"));
    LR_RETURN_IF_ERROR(AllocateQ8(static_cast<size_t>(kMaxMatVecTokens) * qa_stride_, &qa_q8_));
  }
  if (c.n_expert > 0) {
    const size_t slots = t * c.n_expert_used, ne = static_cast<size_t>(c.n_expert);
    const size_t ff = static_cast<size_t>(c.n_ff_expert), sh = ff * std::max(c.n_expert_shared, 1);
    LR_ASSIGN_OR_RETURN(router_logits_, DeviceBuffer::Allocate(t * ne * 4, "router logits"));
    LR_ASSIGN_OR_RETURN(chosen_, DeviceBuffer::Allocate(slots * 4, "expert choices"));
    LR_ASSIGN_OR_RETURN(chosen_weights_, DeviceBuffer::Allocate(slots * 4, "expert weights"));
    LR_ASSIGN_OR_RETURN(first_, DeviceBuffer::Allocate((ne + 1) * 4, "expert groups"));
    LR_ASSIGN_OR_RETURN(order_, DeviceBuffer::Allocate(slots * 4, "expert groups"));
    LR_ASSIGN_OR_RETURN(row_of_, DeviceBuffer::Allocate(slots * 4, "expert groups"));
    LR_ASSIGN_OR_RETURN(active_, DeviceBuffer::Allocate((ne + 1) * 4, "expert groups"));
    const size_t tiles = 2 * static_cast<size_t>(MaxExpertTiles(static_cast<int>(slots), c.n_expert)) + 1;
    LR_ASSIGN_OR_RETURN(tiles_, DeviceBuffer::Allocate(tiles * 4, "expert tiles"));
    LR_ASSIGN_OR_RETURN(eg_, DeviceBuffer::Allocate(slots * ff * 4, "expert FFN"));
    LR_ASSIGN_OR_RETURN(eu_, DeviceBuffer::Allocate(slots * ff * 4, "expert FFN"));
    LR_ASSIGN_OR_RETURN(ys_, DeviceBuffer::Allocate(slots * c.n_embd * 4, "expert outputs"));
    LR_ASSIGN_OR_RETURN(sg_, DeviceBuffer::Allocate(t * sh * 4, "shared expert"));
    LR_ASSIGN_OR_RETURN(su_, DeviceBuffer::Allocate(t * sh * 4, "shared expert"));
    const size_t decode_slots = static_cast<size_t>(kMaxMatVecTokens) * c.n_expert_used;
    LR_RETURN_IF_ERROR(AllocateQ8(decode_slots * c.n_embd, &xg_q8_));
    LR_RETURN_IF_ERROR(AllocateQ8(t * c.n_embd, &x_q8_));
    LR_RETURN_IF_ERROR(AllocateQ8(std::max(slots * ff, kMaxMatVecTokens * sh), &h_q8_));
    LR_RETURN_IF_ERROR(AllocateQ8(kMaxMatVecTokens * sh, &sh_q8_));
    if (side_.stream == nullptr) {
      cudaStream_t stream;
      cudaEvent_t fork, join;
      LR_RETURN_IF_ERROR(CheckCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate"));
      side_.stream = stream;
      LR_RETURN_IF_ERROR(CheckCuda(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming), "cudaEventCreate"));
      side_.fork = fork;
      LR_RETURN_IF_ERROR(CheckCuda(cudaEventCreateWithFlags(&join, cudaEventDisableTiming), "cudaEventCreate"));
      side_.join = join;
    }
  }
  return Status::Ok();
}

CudaModel::SideStream::~SideStream() {
  if (fork != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(fork));
  if (join != nullptr) cudaEventDestroy(static_cast<cudaEvent_t>(join));
  if (stream != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

Status CudaModel::EnqueueMla(int il, int n, const TokenPlaces& places, bool flash) {
  const ModelConfig& c = config_;
  const Layer& l = layers_[il];
  void* s = stream_;
  const int kd = c.kv_lora_rank + c.qk_rope_dim, qd = c.n_head * c.head_dim;
  float *xn = xn_.as<float>(), *q = q_.as<float>(), *kv = kv_.as<float>(), *qa = qa_.as<float>();
  // Decode steps multiply int8 activations (the types that TakesQ8): xq holds xn quantized (the norm before wrote it).
  const bool decode = n <= kMaxMatVecTokens;
  const Q8Activations xq{xq_.as<int8_t>(), xds_.as<float>()}, qa_q = qa_q8_.view();
  if (c.q_lora_rank > 0) {
    const Product in[] = {{l.wq_a.m, qa, qa_stride_}, {l.wkv_a.m, kv, kd}};
    LR_RETURN_IF_ERROR(Products(in, 2, xn, n, decode ? &xq : nullptr));
    LR_RETURN_IF_ERROR(RmsNormStrided(qa, n, c.q_lora_rank, qa_stride_, l.q_a_norm.as<float>(), c.rms_eps, s,
                                      decode ? &qa_q : nullptr));
    const Product qb[] = {{l.wq_b.m, q, qd}};
    LR_RETURN_IF_ERROR(Products(qb, 1, qa, n, decode ? &qa_q : nullptr));
  } else {
    const Product in[] = {{l.wq.m, q, qd}, {l.wkv_a.m, kv, kd}};
    LR_RETURN_IF_ERROR(Products(in, 2, xn, n, decode ? &xq : nullptr));
  }
  MlaArgs a = ArgsOf(c, il);
  a.kv_norm = l.kv_a_norm.as<float>();
  a.inv_freq = inv_freq_.as<float>();
  a.kv_b = l.kv_b.as<uint16_t>();
  float* attn = attn_.as<float>();
  LR_RETURN_IF_ERROR(MlaPrepare(a, q, kv, pool_, places, n, q_abs_.as<float>(), s));
  if (flash) {
    LR_RETURN_IF_ERROR(FlashAttentionLatent(q_abs_.as<float>(), c.n_head, inference::MlaSoftmaxScale(c), pool_, il,
                                            places, n, c.kv_lora_rank, latent_.as<float>(), s));
  } else {
    LR_RETURN_IF_ERROR(MlaAttention(a, q_abs_.as<float>(), inference::MlaSoftmaxScale(c), pool_, places, n,
                                    latent_.as<float>(), mla_part_.as<float>(), s));
  }
  const bool quantize = decode && c.head_dim_v % 32 == 0;  // the values quantized for the output product
  const int splits = flash ? 1 : MlaAttentionSplits(a, n);
  const MlaSplitStates states{mla_part_.as<float>(), splits, places.pos};
  LR_RETURN_IF_ERROR(
      MlaValues(a, latent_.as<float>(), n, attn, s, quantize ? &xq : nullptr, splits > 1 ? &states : nullptr));
  const Product wo[] = {{l.wo.m, x_.as<float>(), c.n_embd, /*add=*/true}};
  return Products(wo, 1, attn, n, quantize ? &xq : nullptr);
}

Status CudaModel::EnqueueMoe(int il, int n, const float* next_norm) {
  const ModelConfig& c = config_;
  const Layer& l = layers_[il];
  void* s = stream_;
  const int e = c.n_embd, k = c.n_expert_used, ff = c.n_ff_expert, slots = n * k;
  float* xn = xn_.as<float>();
  // Decode steps: xq holds xn quantized (the FFN norm wrote it); the products of the types that TakesQ8 read it.
  const bool decode = n <= kMaxMatVecTokens;
  const Q8Activations xq{xq_.as<int8_t>(), xds_.as<float>()}, hq = h_q8_.view();
  // The shared expert: on the side stream in decode steps (prefill's tensor-core products share one scratch).
  const bool side = decode && l.gate_shexp.m.rows > 0;
  if (side) {
    LR_RETURN_IF_ERROR(CheckCuda(cudaEventRecord(static_cast<cudaEvent_t>(side_.fork), static_cast<cudaStream_t>(s)),
                                 "cudaEventRecord"));
    LR_RETURN_IF_ERROR(
        CheckCuda(cudaStreamWaitEvent(static_cast<cudaStream_t>(side_.stream), static_cast<cudaEvent_t>(side_.fork), 0),
                  "cudaStreamWaitEvent"));
    LR_RETURN_IF_ERROR(EnqueueSharedExpert(l, n, side_.stream));
    LR_RETURN_IF_ERROR(
        CheckCuda(cudaEventRecord(static_cast<cudaEvent_t>(side_.join), static_cast<cudaStream_t>(side_.stream)),
                  "cudaEventRecord"));
  }
  const Product router[] = {{l.router.m, router_logits_.as<float>(), c.n_expert}};
  LR_RETURN_IF_ERROR(Products(router, 1, xn, n, decode ? &xq : nullptr));
  RouterArgs r;
  r.n_expert = c.n_expert;
  r.n_used = k;
  r.n_groups = c.n_expert_groups;
  r.n_groups_used = c.n_expert_groups_used;
  r.sigmoid = c.gating == inference::ExpertGating::kSigmoid;
  r.norm = c.expert_weights_norm;
  r.scale = c.expert_weights_scale;
  r.bias = l.expert_bias.bytes() > 0 ? l.expert_bias.as<float>() : nullptr;
  const ExpertGroups groups{first_.as<int32_t>(), order_.as<int32_t>(), row_of_.as<int32_t>(), active_.as<int32_t>(),
                            tiles_.as<int32_t>()};
  const DeviceMatrix &gate_w = l.gate_exps.m, &up_w = l.up_exps.m, &down_w = l.down_exps.m;
  const bool int8_experts =
      decode && TakesQ8(gate_w.type) && up_w.type == gate_w.type && TakesQ8(down_w.type) && ff % 32 == 0;
  const Q8Gather gather{xq, xg_q8_.view(), e};
  LR_RETURN_IF_ERROR(RouteAndGroup(r, router_logits_.as<float>(), n, chosen_.as<int32_t>(), chosen_weights_.as<float>(),
                                   groups, tally_.as<int32_t>() + il, s, int8_experts ? &gather : nullptr));
  const int max_active = std::min(slots, c.n_expert);
  // Prefill steps: Q4_0 experts on the tensor cores on int8 activations (the tokens' rows quantized, then the
  // SwiGLU's).
  const bool int8_prefill =
      !decode && ExpertMatMulQ8Takes(gate_w) && ExpertMatMulQ8Takes(up_w) && ExpertMatMulQ8Takes(down_w) && e % 32 == 0;
  if (int8_prefill) {
    const Q8Activations x_q = x_q8_.view();
    LR_RETURN_IF_ERROR(QuantizeQ8(xn, static_cast<int64_t>(n) * e, x_q, s));
    LR_RETURN_IF_ERROR(ExpertMatMulQ8(gate_w, ff, x_q, true, groups, k, n, eg_.as<float>(), s));
    LR_RETURN_IF_ERROR(ExpertMatMulQ8(up_w, ff, x_q, true, groups, k, n, eu_.as<float>(), s));
    LR_RETURN_IF_ERROR(SwiGluQ8(eg_.as<float>(), eu_.as<float>(), static_cast<int64_t>(slots) * ff, hq, s));
    LR_RETURN_IF_ERROR(ExpertMatMulQ8(down_w, e, hq, false, groups, k, n, ys_.as<float>(), s));
  } else if (int8_experts) {
    LR_RETURN_IF_ERROR(ExpertGateUpQ8(gate_w, up_w, ff, gather.out, groups, max_active, n, eg_.as<float>(), hq, s));
    LR_RETURN_IF_ERROR(ExpertDownQ8(down_w, e, hq, groups, max_active, n, ys_.as<float>(), s));
  } else {
    const ExpertProduct gate{gate_w, ff, xn, true, eg_.as<float>()};
    const ExpertProduct up{up_w, ff, xn, true, eu_.as<float>()};
    LR_RETURN_IF_ERROR(ExpertGateUp(gate, up, groups, k, max_active, n, s));
    const ExpertProduct down{down_w, e, eg_.as<float>(), false, ys_.as<float>()};
    LR_RETURN_IF_ERROR(ExpertMatMul(&down, 1, groups, k, max_active, n, s));
  }
  if (side) {
    LR_RETURN_IF_ERROR(
        CheckCuda(cudaStreamWaitEvent(static_cast<cudaStream_t>(s), static_cast<cudaEvent_t>(side_.join), 0),
                  "cudaStreamWaitEvent"));
  } else if (l.gate_shexp.m.rows > 0) {
    LR_RETURN_IF_ERROR(EnqueueSharedExpert(l, n, s));
  }
  // The products reading xn and xq are queued before (or joined); decode steps quantize the new xn too.
  RowNorm norm{next_norm, c.rms_eps, xn};
  if (decode && e % 32 == 0) norm.q = xq;
  return CombineExperts(ys_.as<float>(), chosen_weights_.as<float>(), groups, n, k, e, x_.as<float>(), s,
                        next_norm != nullptr ? &norm : nullptr);
}

Status CudaModel::EnqueueSharedExpert(const Layer& l, int n, void* stream) {
  const ModelConfig& c = config_;
  const int e = c.n_embd;
  float *xn = xn_.as<float>(), *sg = sg_.as<float>(), *su = su_.as<float>();
  const bool decode = n <= kMaxMatVecTokens;
  const Q8Activations xq{xq_.as<int8_t>(), xds_.as<float>()}, hq = sh_q8_.view();
  const int64_t sh = l.gate_shexp.m.rows;
  const DeviceMatrix &gate_sh = l.gate_shexp.m, &up_sh = l.up_shexp.m;
  const Product gate_up[] = {{gate_sh, sg, sh}, {up_sh, su, sh}};
  const Product down_sh[] = {{l.down_shexp.m, x_.as<float>(), e, /*add=*/true}};
  if (!decode) {
    LR_RETURN_IF_ERROR(Products(gate_up, 2, xn, n));
    LR_RETURN_IF_ERROR(SwiGlu(sg, su, n * sh, stream));
    return Products(down_sh, 1, sg, n);
  }
  // Gate, up and SwiGLU (quantized into hq for the int8 down product): in one kernel where its blocks of 32 rows fill
  // the multiprocessors, else the products over all of them, then the SwiGLU.
  const bool int8 = TakesQ8(gate_sh.type) && up_sh.type == gate_sh.type && sh % 32 == 0;
  if (int8 && sh / 32 >= info_.multiprocessors) {
    LR_RETURN_IF_ERROR(MatVecSwiGluQ8(gate_sh, up_sh, xq, n, sg, su, hq, stream));
  } else {
    if (gate_sh.type == up_sh.type) {
      LR_RETURN_IF_ERROR(MatVecMany(gate_up, 2, xn, n, stream, &xq));
    } else {
      LR_RETURN_IF_ERROR(MatVecMany(&gate_up[0], 1, xn, n, stream, &xq));
      LR_RETURN_IF_ERROR(MatVecMany(&gate_up[1], 1, xn, n, stream, &xq));
    }
    LR_RETURN_IF_ERROR(int8 ? SwiGluQ8(sg, su, n * sh, hq, stream) : SwiGlu(sg, su, n * sh, stream));
  }
  return MatVecMany(down_sh, 1, sg, n, stream, int8 ? &hq : nullptr);
}

double CudaModel::last_step_experts() const {
  int moe_layers = 0;
  for (const Layer& l : layers_) moe_layers += l.moe ? 1 : 0;
  if (moe_layers == 0) return 0;
  std::vector<int32_t> tally(static_cast<size_t>(config_.n_layer));
  if (!CheckCuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream_)), "the last step").ok() ||
      !tally_.Download(tally.data(), tally.size() * 4).ok())
    return 0;
  double sum = 0;
  for (int il = 0; il < config_.n_layer; ++il) sum += layers_[il].moe ? tally[il] : 0;
  return sum / moe_layers;
}

}  // namespace lr::cuda
