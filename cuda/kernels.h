// The CUDA kernels of the dense forward pass, behind plain C++ launchers (no CUDA headers needed to call them).
//
// Pointers named "device" point to device memory; every launcher queues its work on `stream` (a cudaStream_t, null:
// the default stream), checks the launch and returns; errors of the work itself surface at the next synchronization.
// Each kernel has a plain scalar reference on the CPU it is tested against (tests/cuda/kernels_test.cc): the weight
// decoding is inference's DequantizeRow, the rest the CPU model's own steps.
//
// Weights stay in their GGUF types. Q4_0, Q4_1 and Q8_0 are stored split (SplitBlocks): each row's quants, 16 (4-bit)
// or 32 (8-bit) bytes per block of 32 values, then, in a second array, each block's f16 d (Q4_1: d and m): 16-byte
// aligned quants that one vector load fetches, instead of GGUF's 18-, 20- and 34-byte blocks. Same bytes per weight.
// The other types keep GGUF's row layout. Every matrix has a whole number of 32-value sub-blocks per row: the
// kernels decode a quarter of a 32-value sub-block per thread step, in registers (Dequant8 in common.cuh).
//
// Products: MatVec / MatVecMany for 1..16 tokens (matvec.cu: int8 activations and __dp4a for the quantized types,
// f32 for the float types), MatMulTiled for more (cuda/matmul.cu: the weight rows decoded once per call into an f16
// scratch, the activations converted to f16, then a tensor-core product with f32 accumulation). MatMul picks between
// them. The kernels of a decode step launch early on Hopper (LaunchEarly in common.cuh).
//
// KV pages (KvPool): the layout of inference::KvCache's f16 pages, one page = kPageTokens (32) positions of every
// layer and KV head: for each (layer, head) 32 key rows of k_dim halves, then the same for values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "base/status.h"
#include "ops/tensor_type.h"

namespace lr::cuda {

using Stream = void*;  // cudaStream_t

// The weight types are GGUF's (ggml's type ids).
using WeightType = ops::TensorType;

// Whether the type is stored split on the device (Q4_0, Q4_1, Q8_0).
bool IsSplit(WeightType t);
// Bytes per row of the quant array (split) or of GGUF's rows (the others) for a row of `cols` values.
size_t QuantRowBytes(WeightType t, int64_t cols);
// Bytes of the scale array per 32-value block (split types: 2, Q4_1 4), 0 for the others.
size_t ScaleBytesPerBlock(WeightType t);
// GGUF's bytes per row of `cols` values.
size_t GgufRowBytes(WeightType t, int64_t cols);
// Whether the device kernels take this type (every type of ops::TensorType).
bool IsSupported(uint32_t ggml_type);

// GGUF rows -> the device layout, on the host: `rows` rows of `cols` values at src (GGUF's layout) into q
// (rows * QuantRowBytes) and, for split types, scales (rows * cols / 32 * ScaleBytesPerBlock); the other types are
// copied as they are.
void SplitBlocks(WeightType t, const uint8_t* src, int64_t rows, int64_t cols, uint8_t* q, uint8_t* scales);

// A weight matrix on the device: rows x cols (cols a multiple of 32).
struct DeviceMatrix {
  WeightType type = WeightType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  const uint8_t* q = nullptr;       // device: quants (split) or GGUF rows
  const uint8_t* scales = nullptr;  // device: split types only
  size_t row_bytes = 0;             // QuantRowBytes(type, cols)
};

// Activations quantized for the integer products, in the CPU's scheme (ops::BlockQ8, ops::QuantizeRowQ8): per block of
// 32 consecutive values d = max|x| / 127, q = x / d rounded to the nearest (ties to even) as int8, and s = d * (sum of
// the block's q). Stored split: value i's q at q[i], block b's d and s at ds[2 b], ds[2 b + 1]. A token's row of
// `cols` values (a multiple of 32) starts at q + t * cols and block t * cols / 32, so n rows quantize as one array.
struct Q8Activations {
  int8_t* q = nullptr;  // device
  float* ds = nullptr;  // device
};
// Whether MatVec takes this weight type with Q8Activations (__dp4a products): Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K.
bool TakesQ8(WeightType t);
// out = x[0..count) quantized (count a multiple of 32).
Status QuantizeQ8(const float* x, int64_t count, Q8Activations out, Stream stream);

// out[i * cols + c] = row rows[i] of w, decoded (the embedding lookup); rows: device, n entries.
Status DequantizeRows(const DeviceMatrix& w, const int32_t* rows, int n, float* out, Stream stream);

// Rows row0 .. row0 + rows - 1 of w decoded to f16 (IEEE half bits), rows x cols at out (device); values beyond
// f16's range become infinities.
Status DequantizeHalves(const DeviceMatrix& w, int64_t row0, int64_t rows, uint16_t* out, Stream stream);

// Device memory that MatMulTiled uses for its f16 operands.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
};
// The scratch bytes with which MatMulTiled multiplies a rows x cols matrix by n_tokens tokens in one pass. Less
// works too, down to MatMulScratchBytes(min(rows, 128), cols, n_tokens): the rows then go in bands.
size_t MatMulScratchBytes(int64_t rows, int64_t cols, int n_tokens);

// y[t * y_stride + r] (+)= sum_c W[r][c] * x[t * cols + c] for t < n_tokens: MatVec for n_tokens <= 16, else
// MatMulTiled. x, y: device. MatVec and MatVecMany multiply f32 activations x, or with xq (x quantized, QuantizeQ8)
// and TakesQ8 of the weights xq's int8 values by integer dot products (as the CPU's SIMD paths; Q4_0 with more than
// 4 tokens on the tensor cores, int8 mma); x is not read then.
Status MatMul(const DeviceMatrix& w, const float* x, int n_tokens, float* y, int64_t y_stride, bool add,
              const Scratch& scratch, Stream stream);
constexpr int kMaxMatVecTokens = 16;
Status MatVec(const DeviceMatrix& w, const float* x, int n_tokens, float* y, int64_t y_stride, bool add, Stream stream,
              const Q8Activations* xq = nullptr);
// One product of MatVecMany: y[t * y_stride + r] (+ with add)= sum_c W[r][c] * a[t * cols + c].
struct Product {
  DeviceMatrix w;
  float* y = nullptr;
  int64_t y_stride = 0;
  bool add = false;
};
// 1..3 products of matrices of one type and column count over the same activations x, in one launch (q, k and v;
// gate and up).
Status MatVecMany(const Product* products, int count, const float* x, int n_tokens, Stream stream,
                  const Q8Activations* xq = nullptr);
// The gate and up products of a SwiGLU FFN and the SwiGLU, for 1..16 tokens: h[t * rows + r] = silu(gate_r . x_t) *
// (up_r . x_t), and h quantized into hq (the down product's input). gate and up: one type that TakesQ8, one shape,
// rows a multiple of 32. One kernel, or (Q4_0, more than 4 tokens: the products on the tensor cores) the products
// into h and u (n_tokens x rows floats of scratch) and a SwiGluQ8.
Status MatVecSwiGluQ8(const DeviceMatrix& gate, const DeviceMatrix& up, Q8Activations xq, int n_tokens, float* h,
                      float* u, Q8Activations hq, Stream stream);
Status MatMulTiled(const DeviceMatrix& w, const float* x, int n_tokens, float* y, int64_t y_stride, bool add,
                   const Scratch& scratch, Stream stream);

// y[j] = RMSNorm(x[rows[j]]) * w for j < n (rows: device, null for 0..n-1); rows of dim values.
Status RmsNorm(const float* x, const int32_t* rows, int n, int dim, const float* w, float eps, float* y, Stream stream);

// As RmsNorm, and y quantized into yq (dim a multiple of 32): the input of the next products in one pass.
Status RmsNormQ8(const float* x, const int32_t* rows, int n, int dim, const float* w, float eps, float* y,
                 Q8Activations yq, Stream stream);

// g[i] = silu(g[i]) * u[i], i < count.
Status SwiGlu(float* g, const float* u, int64_t count, Stream stream);
// As SwiGlu, and g quantized into gq (count a multiple of 32).
Status SwiGluQ8(float* g, const float* u, int64_t count, Q8Activations gq, Stream stream);

struct KvPool {
  uint8_t* base = nullptr;  // device: page p at base + p * page_bytes
  size_t page_bytes = 0;
  int n_layer = 0, n_head_kv = 0, k_dim = 0, v_dim = 0;
};
constexpr int kPageTokens = 32;

// Where each token of a batch sits: token i is at position pos[i] of a sequence whose page ids (in position order)
// are pages[first[i]], pages[first[i] + 1], ... All device arrays.
struct TokenPlaces {
  const int32_t* pos = nullptr;
  const int32_t* first = nullptr;
  const int32_t* pages = nullptr;
};

// The attention block's step between the q/k/v products and attention, for n tokens: per head of q
// (n x n_head x head_dim) and k (n x n_head_kv x head_dim), optionally the products' biases (q_bias, k_bias, v_bias:
// n_head x head_dim, n_head_kv x head_dim, n_head_kv x v_dim; null: none), then optionally the per-head RMSNorm
// (q_norm, k_norm: head_dim weights each, null: none), then RoPE of the first n_rot values at the token's position
// (angles pos * inv_freq[j], j < n_rot / 2, cos and sin times cos_sin_factor; halves: false rotates pairs (2j, 2j+1),
// true pairs (j, j + n_rot / 2)); q and k in place. Then each token's k and v (n x n_head_kv x v_dim) rows are stored
// as f16 into its page slot of `layer`.
struct QkvArgs {
  float* q = nullptr;
  float* k = nullptr;
  const float* v = nullptr;
  int n_head = 0;
  const float* q_norm = nullptr;
  const float* k_norm = nullptr;
  const float* q_bias = nullptr;
  const float* k_bias = nullptr;
  const float* v_bias = nullptr;
  float eps = 0;
  const float* inv_freq = nullptr;
  int n_rot = 0;
  float cos_sin_factor = 1.0f;  // on cos and sin (YaRN's, ops::RopeCosSinFactor)
  bool halves = false;
  int layer = 0;
  bool store_kv = true;  // false: k and v are left to the caller (compressed rows: cuda/kv_codec.h's EncodeKvRows)
};
Status PrepareQkv(const QkvArgs& a, const KvPool& pool, const TokenPlaces& places, int n, Stream stream);

// out[i][head] = softmax(q . K^T * scale) V over positions 0..pos[i] of token i's sequence, for each of its n_head
// query heads (q: n x n_head x k_dim; out: n x n_head x v_dim). n_head / n_head_kv (the group) at most 8; k_dim a
// multiple of 8, both at most 256. A step of up to kMaxMatVecTokens tokens (decode) splits each range over
// AttentionSplits blocks (so that a few heads still fill the device; the split depends on n alone, so that a captured
// graph fits every depth) and merges their states; scratch: AttentionScratchFloats floats for that (null when 0).
constexpr int kAttentionBlocks = 256, kMaxAttentionSplits = 32;
int AttentionSplits(int n_head_kv, int n);
size_t AttentionScratchFloats(int n, int n_head, int n_head_kv, int v_dim);
// With outq, out is quantized into it too (v_dim a multiple of 32): the output product's input in the same pass.
Status Attention(const float* q, int n_head, float scale, const KvPool& pool, int layer, const TokenPlaces& places,
                 int n, float* out, float* scratch, Stream stream, const Q8Activations* outq = nullptr);

// Attention's results on the tensor cores (cuda/flash_attention.cu), with the queries and the softmax weights rounded
// to f16, for key and value rows of the same width, 16, 32, 64, 96 or 128 (FlashAttentionTakes). A block takes 64
// consecutive tokens of the batch and makes one pass over the pages per sequence among them: made for prefill chunks
// (long runs of one sequence's tokens), slow for many sequences' single tokens (decode steps: Attention).
bool FlashAttentionTakes(int k_dim, int v_dim);
Status FlashAttention(const float* q, int n_head, float scale, const KvPool& pool, int layer, const TokenPlaces& places,
                      int n, float* out, Stream stream);

// out[r] = the sampled token of logits row r (rows x vocab): the first maximum at temperature 0, else a draw from
// softmax(logits / temperature) (the Gumbel-max trick: argmax of logits / T + Gumbel noise hashed from seed, the
// row and the token id).
Status Sample(const float* logits, int rows, int vocab, float temperature, uint64_t seed, int32_t* out, Stream stream);

// Dummy weights: q (q_bytes) and scales (scale_bytes) of a `rows` x `cols` matrix of type t filled with random
// values from `seed`, scaled so that a product keeps activations of about unit size. norm: count floats set to value.
Status RandomizeMatrix(WeightType t, int64_t rows, int64_t cols, uint8_t* q, uint8_t* scales, uint64_t seed,
                       Stream stream);
Status FillFloats(float* p, int64_t count, float value, Stream stream);

}  // namespace lr::cuda
