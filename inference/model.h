// A decoder-only transformer loaded from GGUF and run on the CPU.
//
// An architecture is a ModelConfig (read from the GGUF metadata with llama.cpp's key names) plus, per layer, an
// attention block and an FFN block. Each layer records which block functions it uses (AttentionKind, FfnKind), so
// that new kinds (MoE FFN, MLA attention) plug in as new block functions without touching the others:
//   layer(x) = x + Attention(RMSNorm(x)) ; x + Ffn(RMSNorm(x))
// Supported: `llama` (also Mistral/SmolLM2; RoPE on adjacent pairs, as ggml's mode 0 after the GGUF converter's
// q/k permutation), `qwen2` (llama's blocks with biases on the q, k and v products, RoPE on the two halves of the
// head, ggml's NEOX mode), `qwen3` (per-head RMSNorm of q and k before RoPE, NEOX RoPE), and `deepseek2`
// (DeepSeek-V2/V3, Mistral 4: MLA attention, inference/mla.h). Any of them may have MoE FFNs (inference/moe.h): Mixtral
// as llama + expert keys, DeepSeek/Mistral-4 with shared experts.
//
// Forward() runs a batch of tokens, each appended to one sequence of a KvCache: one token per sequence is a decode
// step over several sequences; many tokens of one sequence are a prefill chunk (each weight matrix is read once for
// the whole batch). Logits come back for the tokens that ask for them (the last prompt token, or every token when
// scoring perplexity).
//
// Shared-prefix attention: in a step where several sequences begin with the same pages (the attempts of pass@k, forks
// of one prompt), GQA attention reads those pages once for the queries of all of them (one block of queries, as
// kvquant::AttendSharedPrefix does) and each sequence's own rows alone, and merges the two exactly (log-sum-exp):
// the result equals attending each sequence alone up to float rounding, while a step of k attempts at a long prompt
// reads the prompt's rows once instead of k times. PlanSharedPrefix says which tokens share what.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "base/status.h"
#include "inference/gguf.h"
#include "inference/kv_cache.h"
#include "inference/mla.h"
#include "inference/model_config.h"
#include "inference/moe.h"
#include "ops/kernels.h"

namespace lr::inference {

enum class AttentionKind { kGqa, kMla };
enum class FfnKind { kSwiGlu, kMoe };

struct LayerWeights {
  AttentionKind attention = AttentionKind::kGqa;
  FfnKind ffn = FfnKind::kSwiGlu;
  std::vector<float> attn_norm;       // n_embd
  ops::WeightMatrix wq, wk, wv, wo;   // q: n_head*head_dim x n_embd, ... o: n_embd x n_head*head_dim_v
  std::vector<float> q_norm, k_norm;  // head_dim each, qk_norm only
  std::vector<float> bq, bk, bv;      // the q, k, v products' biases (widths as their rows), qkv_bias only
  std::vector<float> ffn_norm;        // n_embd
  ops::WeightMatrix gate, up, down;   // SwiGLU: down(silu(gate x) * up x)
  MlaWeights mla;                     // kMla only (then wq..wo, q_norm, k_norm are empty)
  MoeWeights moe;                     // kMoe only (then gate, up, down are empty)
};

// One token of a batch: appended to sequence `seq` of the cache at position cache.Length(seq) (tokens of the same
// sequence in batch order take consecutive positions).
struct BatchToken {
  int seq;
  int32_t token;
  bool want_logits;
};

// Tokens of a step that attend to positions [0, shared_end) of the same pages (Model::PlanSharedPrefix).
struct SharedPrefixGroup {
  int shared_end = 0;        // a multiple of KvCache::kPageTokens
  std::vector<int> members;  // indices into the batch, in batch order
};

// The forward pass as the engine, perplexity and the bench use it, whatever runs it: Model on the CPU, or a device
// backend (cuda/CudaModel) over the same config and a KvCache whose pages it keeps in device memory.
class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  virtual const ModelConfig& config() const = 0;
  // The shape a KvCache for this model must have.
  virtual KvShape kv_shape() const = 0;
  // Bytes of weights read by one decode step.
  virtual size_t weight_bytes_per_token() const = 0;
  // Where it runs, for reports: "cpu", or e.g. "cuda (NVIDIA H100 80GB HBM3)".
  virtual std::string device() const = 0;
  // Whether a step reads the pages its sequences share once for all of them (Model::PlanSharedPrefix's groups).
  virtual bool shares_prefix_pages() const { return false; }
  // Completes the options of a KvCache this pass will run on (a device pass puts the page storage there): call
  // before KvCache::Create. kResourceExhausted when the pool does not fit.
  virtual Status ConfigureCache(KvCacheOptions* options) { return Status::Ok(); }
  // Model::Forward's contract.
  virtual Status Forward(KvCache& cache, std::span<const BatchToken> batch, std::vector<float>* logits) = 0;
  // Forward, then the greedy token (the first maximum) of each token that wants logits, in batch order, into *ids.
  // A device pass picks them on the device and copies only the ids back.
  virtual Status ForwardGreedy(KvCache& cache, std::span<const BatchToken> batch, std::vector<int32_t>* ids);
  // Distinct routed experts per MoE layer that the last step read, averaged over the MoE layers; 0 when the pass
  // has no MoE layers or does not count them.
  virtual double last_step_experts() const { return 0; }
};

class Model : public ForwardPass {
 public:
  // Opens and maps the GGUF file and checks every tensor the config needs (name, shape, type): kNotFound naming a
  // missing tensor, kCorrupt naming a tensor of the wrong shape. On a CPU with AVX2, the Q4_0 / Q4_1 / Q8_0 matrices
  // of the blocks (all but MLA's attn_kv_b; MoE experts stacked) and the output matrix (rows a multiple of 16) are
  // copied into the 16-row interleaved layout (kernels.h, Repack16) and the products read the copies: that memory is
  // allocated (for SmolLM2-135M Q4_1, 96 MB, about the whole file) and those tensors' mapped pages are not read after
  // the load.
  static Result<std::unique_ptr<Model>> Load(const std::string& path);

  const ModelConfig& config() const override { return config_; }
  // RoPE's angle per position of each of the n_rot / 2 rotated pairs (radians).
  std::span<const float> rope_inv_freq() const { return rope_inv_freq_; }
  const GgufFile& gguf() const { return gguf_; }
  // The shape a KvCache for this model must have.
  KvShape kv_shape() const override;
  // Bytes of weights read by one decode step: every matrix once (the embedding table only for its one row unless
  // it is also the output matrix).
  size_t weight_bytes_per_token() const override { return WeightBytes(/*all_experts=*/false); }
  // Bytes of weights read by a prefill chunk at most: every matrix once, every expert included (a chunk of a few
  // hundred tokens chooses nearly all of them), the embedding table as in a decode step.
  size_t weight_bytes() const { return WeightBytes(/*all_experts=*/true); }
  std::string device() const override { return "cpu"; }
  bool shares_prefix_pages() const override { return true; }

  // Runs `batch` through the model, appending each token's keys and values to its sequence in `cache`. For the
  // tokens with want_logits, in batch order, appends n_vocab logits each to *logits (cleared first).
  // kResourceExhausted when the cache is full (the cache then keeps the positions appended so far: truncate to
  // roll back); kInvalidArgument for a token id outside the vocabulary; kvquant's attention errors (an invariant of
  // the cache, reported rather than asserted).
  Status Forward(KvCache& cache, std::span<const BatchToken> batch, std::vector<float>* logits) override;
  // A token attending to this many positions or more does so in two halves of its range, merged exactly
  // (kvquant::FinishAttention), whatever the batch and the thread count, so that its result depends on neither
  // (a request decodes the same tokens alone or batched, unless its step shares a prefix: PlanSharedPrefix;
  // the range after the shared positions is halved then). The halves run on different threads: in a decode step 3 KV
  // heads on 2 threads would otherwise leave one thread attending for two. Below it the merge costs more than it saves.
  static constexpr int kSplitAttentionFrom = 256;

  // Shared-prefix attention's groups for a step whose positions are appended (in Forward, or after it for a report):
  // the tokens of sequences that have one token in the batch (decode steps), grouped by their first page. A group's
  // shared range is the run of pages all its members' page tables begin with, cut to end before each member's own
  // position and window rows, and at least kSharedPrefixFrom positions long; a group has two members or more. A
  // member's attention depends on which sequences share the step by float rounding only, but int8-quantized
  // activations can turn that into a rounding step of theirs (docs/ARCHITECTURE.md): the rows a shared step stores
  // then differ from a lone decode's or a prefill's as much as that path's own rounding, so that a prompt extending
  // them (a repair turn reusing the reply's cached pages) may continue otherwise than from a cold prefill. Shorter
  // shared ranges (below kSplitAttentionFrom, a range attended in one piece) are not worth that. The shared
  // range is attended in pieces of kSharedPieceTokens positions (fixed, so that no result depends on the thread
  // count), spread over the threads with the members' own ranges.
  static constexpr int kSharedPrefixFrom = kSplitAttentionFrom;
  static constexpr int kSharedPieceTokens = 512;
  static std::vector<SharedPrefixGroup> PlanSharedPrefix(const KvCache& cache, std::span<const BatchToken> batch);

 private:
  Model(GgufFile gguf, ModelConfig config) : gguf_(std::move(gguf)), config_(std::move(config)) {}
  Status BindWeights();
  // Every matrix once (the embedding table one row unless tied); of the routed experts all, or expert_used_count.
  size_t WeightBytes(bool all_experts) const;

  // Buffers of one forward step, sized for its batch and shared by the threads of its parallel regions.
  struct Scratch {
    std::vector<int> tokens;  // 0 .. n - 1
    std::vector<float> xn, q, k, v, attn, g, u;
    std::vector<ops::BlockQ8> xq;
    // Attention in pieces (kSplitAttentionFrom), when some range is that long: pair = token * n_head_kv + KV head;
    // pair p's pieces are [first_piece[p], first_piece[p + 1]), their states in `states`. Empty otherwise.
    struct Piece {
      int pair, begin, end;
    };
    std::vector<Piece> pieces;
    std::vector<int> first_piece;
    std::vector<kvquant::AttentionState> states;
    // Shared-prefix attention (PlanSharedPrefix): per token its group (-1: none) and index in it; per group the
    // members' queries, for KV head h at qblock[qblock_at[g] + h * members * group * head_dim] (members x group x
    // head_dim), and its shared pieces, for KV head h chunks[first_chunk[g] + h * n_chunks[g] + c], with their
    // states.
    struct Chunk {
      int group, head, begin, end;
    };
    std::vector<SharedPrefixGroup> groups;
    std::vector<int> group_of, member_index;
    std::vector<float> qblock;
    std::vector<size_t> qblock_at;
    std::vector<int> first_chunk, n_chunks;
    std::vector<Chunk> chunks;
    std::vector<kvquant::AttentionState> chunk_states;
    FirstError error;  // of the attention calls of a parallel region
  };

  // The dense steps, team functions (kernels.h): every thread of a parallel region calls them with the same
  // arguments, so that a run of them shares one region (for a dense model, the whole step).
  // The blocks: x (n tokens x n_embd, the residual stream) += Block(RMSNorm(x)). rope: cos, sin of n_rot / 2 angles
  // per token.
  void AttentionGqa(int layer, KvCache& cache, std::span<const BatchToken> batch, const std::vector<int>& pos,
                    const float* rope, Scratch& s, float* x);
  void FfnSwiGlu(int layer, int n, Scratch& s, float* x);
  // The final norm and the logits of the tokens `rows` of x (n_vocab each, in that order).
  void Logits(const std::vector<int>& rows, Scratch& s, const float* x, float* logits);
  // Row j of s.xn = RMSNorm(row rows[j] of x) with weights w; with q8 also quantized into s.xq, row by row.
  void NormTeam(const float* x, const std::vector<float>& w, const std::vector<int>& rows, bool q8, Scratch& s);

  GgufFile gguf_;
  ModelConfig config_;
  ops::WeightMatrix token_embd_, output_;       // output_: a view of repacked_ when repacked (token_embd_ never is)
  std::vector<std::vector<uint8_t>> repacked_;  // the buffers of the repacked matrices (BindWeights)
  std::vector<float> output_norm_;
  std::vector<LayerWeights> layers_;
  std::vector<float> rope_inv_freq_;  // n_rot / 2
};

}  // namespace lr::inference
