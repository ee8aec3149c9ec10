// The calibration text, its prefill on an f16 cache, and the per-(layer, head) means of the stored rows.
#include "inference/kv_calibration.h"

#include <string>

#include "inference/model.h"
#include "inference/tokenizer.h"

namespace lr::inference {
namespace {

// What the prover's contexts are made of: Lean 4 statements and tactic proofs, and English about them.
constexpr std::string_view kCalibrationText = R"(Lean 4 is a functional programming language and an interactive theorem prover. A proof is a program whose type is the statement it proves, and tactics build that program step by step.

theorem add_comm' (a b : Nat) : a + b = b + a := by
  induction b with
  | zero => simp
  | succ n ih => omega

The theorem above is proved by induction on the second argument. In the successor case the hypothesis ih says that a + n = n + a, and omega closes the goal, because it decides linear arithmetic over the natural numbers and the integers.

def sumTo : Nat → Nat
  | 0 => 0
  | n + 1 => (n + 1) + sumTo n

theorem sumTo_eq (n : Nat) : 2 * sumTo n = n * (n + 1) := by
  induction n with
  | zero => rfl
  | succ k ih =>
    simp only [sumTo]
    rw [Nat.mul_add, ih]
    ring

example (p q : Prop) (hp : p) (hq : q) : p ∧ q := ⟨hp, hq⟩

example (s : List Nat) : s.reverse.reverse = s := by simp

When a tactic fails, Lean reports the remaining goals, for example "unsolved goals: x : ℝ, h : 0 < x ⊢ 0 < x ^ 2", and the next attempt can use positivity, nlinarith [sq_nonneg x], or a lemma found with exact?.

theorem two_mul_le (x y : ℝ) (h : x ≤ y) : 2 * x ≤ 2 * y := by
  linarith

lemma card_pos {α : Type*} [Fintype α] [Nonempty α] : 0 < Fintype.card α :=
  Fintype.card_pos

The model reads the theorem statement, writes a proof between ```lean and ```, and the checker replies with the errors it found. A correct proof uses no sorry, no admit and no new axioms.

open Finset in
theorem sum_range_id (n : ℕ) : ∑ i ∈ range n, i = n * (n - 1) / 2 := by
  rw [Finset.sum_range_id_mul_two, Nat.mul_div_cancel]
  norm_num
)";

}  // namespace

std::string_view KvCalibrationText() { return kCalibrationText; }

Result<std::shared_ptr<const KvCenters>> ComputeKvCenters(Model& model, const Tokenizer& tokenizer) {
  std::vector<int32_t> tokens;
  if (tokenizer.add_bos() && tokenizer.bos() >= 0) tokens.push_back(tokenizer.bos());
  const std::vector<int32_t> text = tokenizer.Encode(kCalibrationText, false);
  tokens.insert(tokens.end(), text.begin(), text.end());
  const KvShape shape = model.kv_shape();
  KvCacheOptions o;  // f16 keys and values, no centers: the rows as the model computed them
  o.max_tokens = static_cast<int>(tokens.size());
  LR_ASSIGN_OR_RETURN(KvCache cache, KvCache::Create(shape, o));
  const int seq = cache.NewSequence();
  std::vector<BatchToken> batch;
  for (size_t i = 0; i < tokens.size(); ++i) batch.push_back({seq, tokens[i], i + 1 == tokens.size()});
  std::vector<float> logits;
  LR_RETURN_IF_ERROR(model.Forward(cache, batch, &logits).WithContext("KV calibration prefill"));

  auto centers = std::make_shared<KvCenters>();
  centers->shape = shape;
  const size_t heads = static_cast<size_t>(shape.n_layer) * shape.n_head_kv;
  centers->k.resize(heads * shape.k_dim);
  centers->v.resize(heads * shape.v_dim);
  const int n = static_cast<int>(tokens.size());
  std::vector<double> sum;
  std::vector<float> row;
  // Mean over positions 1..n-1 of one (layer, head)'s rows, decoded with the cache's f16 codec.
  auto mean = [&](const kvquant::RowCodec& codec, auto row_at, float* out) {
    const int dim = codec.dim();
    sum.assign(dim, 0.0);
    row.resize(dim);
    for (int pos = 1; pos < n; ++pos) {
      codec.DecodeRow(row_at(pos), row.data());
      for (int j = 0; j < dim; ++j) sum[j] += row[j];
    }
    for (int j = 0; j < dim; ++j) out[j] = static_cast<float>(sum[j] / (n - 1));
  };
  for (int layer = 0; layer < shape.n_layer; ++layer) {
    for (int head = 0; head < shape.n_head_kv; ++head) {
      const size_t h = static_cast<size_t>(layer) * shape.n_head_kv + head;
      mean(cache.k_codec(layer, head), [&](int pos) { return cache.KRow(seq, layer, head, pos); },
           &centers->k[h * shape.k_dim]);
      if (shape.v_dim > 0)
        mean(cache.v_codec(layer, head), [&](int pos) { return cache.VRow(seq, layer, head, pos); },
             &centers->v[h * shape.v_dim]);
    }
  }
  return std::shared_ptr<const KvCenters>(std::move(centers));
}

}  // namespace lr::inference
