// KV-cache compression formats and attention computed directly on the compressed rows.
//
// The model runner stores each (layer, KV head)'s keys and values as rows of `dim` values in one of the formats
// below, chosen by name separately for keys and values. A RowCodec encodes one token's row (the append path) and
// Attend() computes softmax(scale·q·Kᵀ)·V over a range of stored rows without expanding K or V to f32: the query is
// rotated once into the stored domain, each row is scored block by block from its codes
// (scale × Σ q_i · level[code_i]), and V is accumulated in its rotated domain and rotated back once at the end.
//
// Formats. A row is a sequence of blocks; a block is an fp16 scale d followed by code runs, and block element i
// decodes to d · level[code_i] (in the rotated domain where the format rotates). Bits per element include the scale.
//
//   name     rotation          block  bytes  bits   codes                           scale
//   f16      none              1      2      16     IEEE half per value              -
//   q8_0     none              32     34     8.5    int8, level = code               max|x|/127      (llama.cpp)
//   q4_0     none              32     18     4.5    4-bit, level = code - 8          signed max / -8 (llama.cpp)
//   q4_0h    Hadamard          32     18     4.5    as q4_0, after the rotation
//   tq4      Hadamard          32     18     4.5    4-bit Lloyd-Max N(0,1) levels    as tq3
//   tq3      Hadamard          32     14     3.5    3-bit Lloyd-Max                  least squares + 2 passes of
//                                                                                    coordinate descent (see below)
//   tq2      Hadamard          32     10     2.5    2-bit Lloyd-Max                  as tq3
//   planar3  Givens pairs      128    50     3.125  3-bit Lloyd-Max                  norm-preserving (see below)
//   planar4  Givens pairs      128    66     4.125  4-bit Lloyd-Max                  norm-preserving
//   iso3     quaternion quads  128    50     3.125  3-bit Lloyd-Max                  norm-preserving
//   iso4     quaternion quads  128    66     4.125  4-bit Lloyd-Max                  norm-preserving
//   hx3      Hadamard          128    56     3.5    48 × 4-bit then 80 × 3-bit LM    descent, dot-preserving
//   hx3s     Hadamard          128    50     3.125  3-bit Lloyd-Max                  as hx3
//   hx4      Hadamard          128    66     4.125  4-bit Lloyd-Max                  as hx3
//
// Rotations are described in kvquant/rotation.h; each codec's is fixed by (seed, layer, head).
//
// hx3 is our format. A 128-wide block spreads the 16-bit scale over more coordinates (0.125 bit/element instead of
// tq3's 0.5) and spends what that frees on a fourth bit for 48 of the 128 coordinates, at tq3's 3.5 bits. After the
// Hadamard rotation all coordinates have the same variance, so which ones get the fourth bit does not matter.
// hx3s is hx3's block with 3-bit codes only, for values beside hx3 keys within a 3.5-bit budget; hx4 is hx3's block
// with 4-bit codes only (tq4's levels, one scale per 128 instead of per 32), which leaves room in tq4's 4.5 bits for
// sink and window rows. docs/RESULTS.md has the candidates measured for hx3 and the formats' errors.
//
// Rounding rules:
//   least squares (tq*): codes start at the nearest levels for d = block RMS; then, twice over the block, each code
//     may move to a neighbouring level when that lowers the block error with the scale re-solved (d = Σx·l / Σl²);
//     the final d is that least-squares scale.
//   descent, dot-preserving (hx3, hx3s, hx4): the same descent, then d = Σx² / Σx·l, so that the decoded block x̂ has
//     ⟨x̂, x⟩ = ⟨x, x⟩. The least-squares x̂ is a shrunk projection (⟨x̂, x⟩ = ‖x‖²·cos²): a query that resembles a
//     stored key would score it low by about (1 - cos²)·‖k‖², a bias the softmax does not average away. The extra
//     MSE is second order.
//   norm-preserving (planar*, iso*): codes are the nearest levels for d = ‖y‖/√n, then d = ‖y‖ / ‖level[codes]‖, so
//     every decoded block has exactly the input block's length (up to fp16 rounding of d): the length is unbiased.
//
// Exact transforms a codec may hold (inference/kv_calibration.h measures them for a model). Rows encoded before one
// is set decode wrongly after it.
//   Centering (SetCenter, a center mu): EncodeRow stores x - mu, DecodeRow adds mu back, and Attend / AttendParallel /
//     AttendSharedKV add V's center (for shared rows its leading v_dim values) to their output once. Exact: the key
//     center shifts all of one query's scores by q·mu, which the softmax ignores, and Σ p_j (v_j - mu) + mu = Σ p_j v_j
//     since Σ p_j = 1 (every row of a head has the same center, so partial results over pieces of a range merge
//     exactly). A channel with a constant offset would otherwise be spread by the rotation over the whole block and
//     inflate every scale.
//   Channel weights w > 0 (SetWeights): EncodeRow stores (x - mu) * w, DecodeRow divides by w before adding mu.
//     Attention divides the query by the key codec's weights before rotating it, so q·k is unchanged
//     ((q / w)·((k - mu) * w) = q·(k - mu)), and divides the value output by the value codec's weights before adding
//     its center. They change only where the rounding error goes: a rotating format spreads its error evenly over
//     the stored channels, so the score error q·e is smallest when channels that carry large query components are
//     stored large relative to the others; w_c = (E[q_c²] / E[k_c²])^(1/4) minimizes E[(q·e)²] for a fixed total
//     error (Cauchy-Schwarz).
//   Rotating centers (SetRotatingCenter): pairs of channels (a, b) whose center turns with the row's position pos,
//     (u_a, u_b) = (c_a cos(pos·theta) - c_b sin(pos·theta), c_a sin(pos·theta) + c_b cos(pos·theta)), subtracted by
//     EncodeRow after the fixed center and added back by DecodeRow. This is RoPE's rotation: a key channel pair with a
//     constant offset c before RoPE carries R(pos)·c after it, which no fixed center removes. Attention adds
//     scale·q·u(pos) back to every row's score (rows carry their positions, RowSpan::pos), so it is exact too; the
//     cost is a few multiply-adds per row and pair.
//
// Row shapes: dim must be a multiple of 32 (any dim from 1 to 4096 for f16), and of 64 for hx3. In formats with
// 128-element blocks a row whose dim is not a multiple of 128 ends with one shorter block: planar/iso/hx3s/hx4 keep one
// code run of the block's length (hx3s on a 64-wide head: 3.25 bits); hx3's short block of n elements has n/2 - 16
// four-bit codes and the rest three-bit, which keeps it at 3.5 bits (a 64-wide head: 16 + 48). RowCodec::row_bytes()
// is the exact size of one row.
//
// Code runs (n codes, n a multiple of 16) are packed in 16- or 32-code pieces, so that a 512-bit register unpacks
// 16 codes with a few shifts. 8-bit: byte j = code j. 4-bit: per group of 32 codes, 16 bytes, byte j holding code j
// in the low nibble and code j + 16 in the high one (llama.cpp's q4_0); a final group of 16 codes takes 8 bytes, byte
// j holding codes j and j + 8. 2-bit: per tile of 16 codes, 4 bytes, byte j holding codes j, j + 4, j + 8, j + 12 in
// bits 0-1, 2-3, 4-5, 6-7. 3-bit: per tile of 16 codes, the low two bits as a 2-bit tile, then the high bits as a
// 16-bit word, code j at bit j. Scales, halves and words are little-endian.
//
// Threads: everything here is thread-safe on const codecs; Attend, AttendMixed and AttendSharedKV run on the calling
// thread only (the runner calls them from its own OpenMP loop over heads). AttendParallel splits one head group's
// range over threads for long contexts and benchmarks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "kvquant/rotation.h"

namespace lr::kvquant {

struct FormatInfo {
  std::string_view name;
  int block_elems;          // elements per full block
  int block_bytes;          // bytes per full block, scale included
  double bits_per_element;  // 8 * block_bytes / block_elems
  std::string_view summary;
};

// How a block's scale is chosen (the "Rounding rules" above): q8_0's max|x|/127, q4_0's signed max / -8, least squares
// (tq*), descent with the dot-preserving scale (hx*), norm-preserving (planar*, iso*); kNone for f16.
enum class ScaleRule { kNone, kMaxQ8, kMaxQ4, kLeastSquares, kSelfDot, kNorm };

// Every format, in the order of the table above.
std::vector<FormatInfo> ListFormats();
// kInvalidArgument naming the bad name and the valid ones.
Result<FormatInfo> FindFormat(std::string_view name);

// One block of a row's layout (internal to the kernels, exposed so they can be tested one by one).
struct CodeRun {
  int bits;             // 2, 3, 4 or 8
  int count;            // codes in this run, a multiple of 16
  const float* levels;  // 2^bits levels indexed by code (zero-padded to 16 floats when bits <= 4)
};
// A channel pair whose center turns with the row's position (see "Rotating centers" above).
struct RotatingCenter {
  int a, b;      // channels, distinct, < dim
  float theta;   // radians per position
  float ca, cb;  // the center at position 0
};
// The pair's center at position pos: (ua, ub) = R(pos·theta)·(ca, cb).
void RotatingCenterAt(const RotatingCenter& p, int pos, float* ua, float* ub);

struct BlockLayout {
  int begin;   // first element of the row in this block
  int size;    // elements in this block
  int offset;  // byte offset of the block in the row: the fp16 scale, then the runs
  int n_runs;
  CodeRun runs[2];
};

// Encoder/decoder for rows of `dim` values of one (layer, head); holds the rotation chosen by (seed, layer, head).
// Cheap to copy (a few hundred bytes plus the rotation parameters and the center).
class RowCodec {
 public:
  // kInvalidArgument for an unknown format or a dim the format cannot hold (naming both).
  static Result<RowCodec> Create(std::string_view format, int dim, uint64_t seed, int layer, int head);

  int dim() const { return dim_; }
  size_t row_bytes() const { return row_bytes_; }
  const FormatInfo& format() const { return info_; }
  const Rotation& rotation() const { return rotation_; }
  bool is_f16() const { return blocks_.empty(); }
  ScaleRule scale_rule() const;
  const std::vector<BlockLayout>& blocks() const { return blocks_; }

  // Sets the per-channel center subtracted before encoding (see "Centering" above); an empty span removes it. Rows
  // encoded before the call decode wrongly after it. kInvalidArgument when the size is neither 0 nor dim().
  Status SetCenter(std::span<const float> center);
  // The center, empty when none.
  std::span<const float> center() const { return center_; }
  // Sets per-channel weights w > 0 (see "Channel weights" above): rows are stored as (x - center) * w. Rows encoded
  // before the call decode wrongly after it. kInvalidArgument when the size is neither 0 nor dim(), or a weight is
  // not a positive finite number.
  Status SetWeights(std::span<const float> weights);
  // The weights, empty when none (all 1).
  std::span<const float> weights() const { return weights_; }
  // Sets the rotating center (see "Rotating centers" above); an empty span removes it. Rows encoded before the call
  // decode wrongly after it. kInvalidArgument for more than kMaxRotatingPairs pairs, a channel out of range, a pair of
  // one channel, a channel in two pairs or a value that is not finite.
  static constexpr int kMaxRotatingPairs = 64;
  Status SetRotatingCenter(std::span<const RotatingCenter> pairs);
  std::span<const RotatingCenter> rotating_center() const { return rotating_; }
  // cos(t·theta) and sin(t·theta) of every pair for t < kRotatingTableRows, [pair][cos, sin][t]: attention turns each
  // chunk of rows' correction from its first position with it (no sin/cos per row).
  static constexpr int kRotatingTableRows = 64;
  std::span<const float> rotating_table() const { return rotating_table_; }

  // Append path: encodes one token's row of dim() floats (minus the centers) into row_bytes() bytes at dst. pos: the
  // row's position in its sequence, used by the rotating center only.
  void EncodeRow(const float* x, uint8_t* dst, int pos = 0) const;
  // Reconstructs the row (rotated back, centers added). For tests, evaluation, debugging, and MLA's prompt chunks
  // (inference/mla.cc), which decode the rows a chunk attends once and multiply them as f32 matrices; Attend and
  // its variants never call it.
  void DecodeRow(const uint8_t* src, float* x, int pos = 0) const;
  // Reconstructs the centered row in the rotated domain (no inverse rotation, no center): what attention scores
  // against.
  void DecodeRowRotated(const uint8_t* src, float* y) const;

 private:
  RowCodec(const FormatInfo& info, int spec, int dim, Rotation rotation);

  FormatInfo info_;
  int spec_;  // index into the format table
  int dim_;
  size_t row_bytes_ = 0;
  Rotation rotation_;
  std::vector<BlockLayout> blocks_;  // empty for f16
  std::vector<float> center_;        // dim_ values, or empty
  std::vector<float> weights_;       // dim_ values, or empty
  std::vector<RotatingCenter> rotating_;
  std::vector<float> rotating_table_;
};

// A run of consecutive compressed rows (one page of the paged cache). k and v point at n_rows rows each; pos is the
// position of the first (read only by codecs with a rotating center).
struct RowSpan {
  const uint8_t* k;
  const uint8_t* v;
  int n_rows;
  int pos = 0;
};

// Rows of one KV head stored with one pair of codecs: one part of a range that AttendMixed reads.
struct CodedSpans {
  const RowCodec* k;
  const RowCodec* v;  // ignored (may be null) for shared K/V rows
  std::span<const RowSpan> spans;
};

// Attention for one KV head and the n_q query heads that share it (a GQA group), over the spans in order, with a
// streaming softmax: out[i] = softmax(scale · q_i·Kᵀ) · V for i < n_q. q is n_q × k.dim() floats, out is
// n_q × v.dim(). Errors (kInvalidArgument): n_q < 1, no rows in total, a span with n_rows < 0 or null pointers,
// k.dim() != q's dim is the caller's contract (q is read as n_q rows of k.dim()).
Status Attend(const RowCodec& k, const RowCodec& v, const float* q, int n_q, std::span<const RowSpan> spans,
              float scale, float* out);

// Attend over a range whose parts are stored with different codecs (e.g. the first tokens of a sequence in f16 and
// the rest compressed): one softmax over the rows of every part. Each part is scored in its own rotated domain and
// its partial result (running max, sum, V accumulator) is rotated back and merged exactly. Key centers are exact
// here too: a part's scores are shifted by scale·q·mu_K (its key center), which is added back before the merge,
// because the softmax ignores a shift only when all rows share it. The parts' K dims must be equal, and their V dims.
// Errors as Attend, and kInvalidArgument for no parts, a null codec or unequal dims.
Status AttendMixed(std::span<const CodedSpans> parts, const float* q, int n_q, float scale, float* out);

// The softmax state of n_q queries over some of the rows they attend to: for query i the largest scaled score m[i],
// l[i] = Σ exp(s - m[i]) and acc[i·v_dim ..] = Σ exp(s - m[i])·v, with V rotated back and its weights and center
// undone. States of the same queries over disjoint rows merge exactly (FinishAttention), so pieces of one range can
// be attended by different threads.
struct AttentionState {
  std::vector<float> m, l, acc;
  // n_q queries with no rows yet: m = -inf, l = 0, acc = 0 (v_dim values per query).
  void Reset(int n_q, int v_dim);
};
// AttendMixed without the final normalization: the state of the queries over the parts' rows in *state. Errors as
// AttendMixed's.
Status AttendMixedState(std::span<const CodedSpans> parts, const float* q, int n_q, float scale, AttentionState* state);
// Merges states of the same n_q queries over disjoint rows (at least one state, at least one row in all) into
// states[0], in place (no copy on the decode path), and writes softmax(scale·q·Kᵀ)·V over all their rows: out is
// n_q × v_dim.
void FinishAttention(std::span<AttentionState> states, int n_q, int v_dim, float* out);
// The state of queries [first, first + n_q) of `block`, a state of more queries (several sequences' query groups
// attended together over rows they share: AttendSharedPrefix), into *out, to be merged with those queries' other
// states.
void SliceAttentionState(const AttentionState& block, int first, int n_q, int v_dim, AttentionState* out);

// Attention of n_seq sequences whose ranges begin with the same rows (pass@k attempts forked from one prompt, a
// repair turn resending a conversation): the shared parts are read once for the queries of all of them (one block
// of n_seq · n_q queries), then each sequence's own parts with its own n_q queries, and the two states merged
// exactly. The result equals AttendMixed of each sequence over its shared and own parts, up to float rounding, while
// the shared rows are read once instead of n_seq times. q: n_seq × n_q query rows of the K dim; own[s]: sequence s's
// own parts (may be empty); out: n_seq × n_q × v_dim. Errors as AttendMixed's (for the shared parts and each
// sequence's own).
Status AttendSharedPrefix(std::span<const CodedSpans> shared, std::span<const std::span<const CodedSpans>> own,
                          const float* q, int n_q, float scale, float* out);

// MLA: keys and values share one stored row (DeepSeek-style latent plus rope key). K is the whole row of kv.dim()
// values and V is its leading v_dim values; spans' k pointers are used, v pointers ignored. out is n_q × v_dim.
// kInvalidArgument when v_dim does not end on a block boundary of the format and a segment boundary of its rotation
// (e.g. hx3 or tq3 with dim 320 = 256 + 64 and v_dim 256 work).
Status AttendSharedKV(const RowCodec& kv, int v_dim, const float* q, int n_q, std::span<const RowSpan> spans,
                      float scale, float* out);

// Attend, with the rows split into n_threads contiguous pieces processed by an OpenMP team and merged exactly
// (log-sum-exp). For one long range; not meant to be called from inside another parallel region.
Status AttendParallel(const RowCodec& k, const RowCodec& v, const float* q, int n_q, std::span<const RowSpan> spans,
                      float scale, float* out, int n_threads);

}  // namespace lr::kvquant
