// The mixture-of-experts FFN on the device (DeepSeek-V3 / Mistral 4 / Mixtral routing, inference/moe.h's contract):
// the router's choice, the grouping of the (token, expert) slots by expert, the routed experts' products over their
// own tokens, and the weighted sum back into the residual. Every decision stays on the device, so that a decode step
// (a captured CUDA graph) has no host round trip: the launches are sized for the most experts a step of n tokens can
// choose (min(n * k, n_expert)) and the blocks of experts nobody chose return at once.
//
// Slots: token t's i-th choice is slot t * k + i. Grouped rows: the slots sorted by expert (expert e's rows are
// [first[e], first[e + 1])); order[j] is the slot of grouped row j and row_of[slot] its grouped row. The order of
// the rows within one expert is not fixed (atomics); no result depends on it, every row being computed alone.
//
// Each kernel has a scalar reference it is tested against (tests/cuda/moe_mla_test.cc): Route is
// inference::RouteToken; the expert products are inference::MoeFfn's.
#pragma once

#include <cstdint>

#include "base/status.h"
#include "cuda/kernels.h"

namespace lr::cuda {

struct RouterArgs {
  int n_expert = 0;             // at most kMaxExperts
  int n_used = 0;               // k
  int n_groups = 1;             // expert groups (DeepSeek-V3), at most 32
  int n_groups_used = 1;        // groups kept
  bool sigmoid = false;         // sigmoid scores, else softmax
  bool norm = false;            // renormalise the chosen weights to sum 1
  float scale = 1.0f;           // routed output scale
  const float* bias = nullptr;  // device: n_expert choice biases (exp_probs_b), null: none
};
constexpr int kMaxExperts = 1024, kMaxExpertsUsed = 16;

// experts[t * k + i], weights[t * k + i] for the n tokens of logits (n x n_expert): best first.
Status Route(const RouterArgs& a, const float* logits, int n, int32_t* experts, float* weights, Stream stream);

// The grouping of one step's slots (device arrays).
struct ExpertGroups {
  int32_t* first = nullptr;   // n_expert + 1
  int32_t* order = nullptr;   // slots
  int32_t* row_of = nullptr;  // slots
  int32_t* active = nullptr;  // n_expert: the chosen experts, ascending; active[n_expert] = their count
  // Prefill tiles of kExpertTileTokens grouped rows of one expert: tile t is (tiles[2t] = expert, tiles[2t + 1] = its
  // first grouped row); tiles[2 * MaxExpertTiles] = their count. Null: not built (decode steps).
  int32_t* tiles = nullptr;
};
constexpr int kExpertTileTokens = 64;
// Room for the tiles of `slots` slots over n_expert experts (pairs, then the count).
int MaxExpertTiles(int slots, int n_expert);
// Route, then GroupByExpert of its n * k slots; one launch for steps of up to kMaxMatVecTokens tokens over at most 256
// experts (decode).
// With `gather`, then also gather->out's grouped row j = gather->in's row order[j] / k (int8 activations of `cols`
// values a row: the expert products' xg).
struct Q8Gather {
  Q8Activations in, out;
  int64_t cols = 0;  // a multiple of 32
};
Status RouteAndGroup(const RouterArgs& a, const float* logits, int n, int32_t* experts, float* weights,
                     const ExpertGroups& g, int32_t* tally, Stream stream, const Q8Gather* gather = nullptr);

// Groups the slots of `experts` (slots entries); also writes the count of distinct experts to *tally (device, may be
// null: the bench's experts-per-step figure).
Status GroupByExpert(const int32_t* experts, int slots, int n_expert, const ExpertGroups& g, int32_t* tally,
                     Stream stream);

// For every chosen expert e and grouped row j of e: y[j * rows + r] = sum_c W_e[r][c] * x[in(j) * cols + c], r < rows,
// where W_e is rows [e * rows, (e + 1) * rows) of `stacked` and in(j) = order[j] / k with `gather` (the token of the
// slot: gate and up read the normalised hidden states), else j (down reads the grouped SwiGLU outputs). max_active:
// min(slots, n_expert), the launch size of the matrix-vector path. n_tokens: the step's tokens, the most rows one
// expert can have; above kMaxMatVecTokens the tensor cores take tiles of kExpertTileTokens rows (g.tiles needed).
struct ExpertProduct {
  DeviceMatrix stacked;
  int64_t rows = 0;  // per expert
  const float* x = nullptr;
  bool gather = false;
  float* y = nullptr;
};
// `count` (1 or 2) products of matrices of one type and shape over the same inputs (gate and up) in one launch.
constexpr int kMaxExpertProducts = 2;
Status ExpertMatMul(const ExpertProduct* p, int count, const ExpertGroups& g, int k, int max_active, int n_tokens,
                    Stream stream);
// gate.y = silu(gate's products) * up's products (both ExpertMatMul's layout, gathered inputs); up.y is scratch. Decode
// steps compute both rows in one warp and write only gate.y; prefill runs both products, then SwiGLU.
Status ExpertGateUp(const ExpertProduct& gate, const ExpertProduct& up, const ExpertGroups& g, int k, int max_active,
                    int n_tokens, Stream stream);

// The same products for decode steps (1..kMaxMatVecTokens tokens) on int8 activations in ops::BlockQ8's scheme (the
// dense products' integer kernels, cuda/matvec.cu), for weights that TakesQ8: xg holds the grouped rows' activations
// (grouped row j: its token's quantized input; RouteAndGroup's gather), rows the rows per expert.
// ExpertGateUpQ8: h[j * rows + r] = silu(gate_e[r] . xg_j) * (up_e[r] . xg_j), and h quantized into hq (rows a multiple
// of 32), the down product's input. ExpertDownQ8: y[j * rows + r] = w_e[r] . xg_j.
Status ExpertGateUpQ8(const DeviceMatrix& gate, const DeviceMatrix& up, int64_t rows, Q8Activations xg,
                      const ExpertGroups& g, int max_active, int n_tokens, float* h, Q8Activations hq, Stream stream);
Status ExpertDownQ8(const DeviceMatrix& w, int64_t rows, Q8Activations xg, const ExpertGroups& g, int max_active,
                    int n_tokens, float* y, Stream stream);

// The products of prefill steps (more than kMaxMatVecTokens tokens) on int8 activations, on the tensor cores, for
// Q4_0 experts of a multiple of 128 columns (ExpertMatMulQ8Takes): y[j * rows + r] = W_e[r] . x_in(j), in(j) =
// order[j] / k with `gather` (x: the step's tokens quantized), else j (x: the grouped rows quantized). Needs g.tiles.
bool ExpertMatMulQ8Takes(const DeviceMatrix& w);
Status ExpertMatMulQ8(const DeviceMatrix& w, int64_t rows, Q8Activations x, bool gather, const ExpertGroups& g, int k,
                      int n_tokens, float* y, Stream stream);

// x[t * dim + d] += sum_i weights[t * k + i] * ys[row_of[t * k + i] * dim + d] for t < n; with `norm`, then
// norm->out[t * dim + d] = RMSNorm(x[t]) * norm->w[d] (the next layer's input norm, saving its launch).
struct RowNorm {
  const float* w = nullptr;  // device: dim
  float eps = 0;
  float* out = nullptr;  // device: n x dim
  Q8Activations q{};     // device, q.q null: none; out quantized too (dim a multiple of 32)
};
Status CombineExperts(const float* ys, const float* weights, const ExpertGroups& g, int n, int k, int dim, float* x,
                      Stream stream, const RowNorm* norm = nullptr);

}  // namespace lr::cuda
