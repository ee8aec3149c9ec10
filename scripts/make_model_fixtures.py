#!/usr/bin/env python3
"""Makes the model reference fixtures in tests/fixtures/models/ (run by hand; the outputs are committed).

Two kinds of fixture:

1. Tiny random-weight models, one per architecture the runner supports. Each is built as a transformers model
   (the independent implementation), given random weights from a fixed seed, written as a GGUF file with
   llama.cpp's metadata keys and tensor names, and run by transformers in float64 on a fixed sequence of token
   ids. Outputs per fixture NAME:
     NAME.gguf         the model (matrices f16 unless stated, norms and biases f32; no tokenizer metadata)
     NAME.logits.f32   logits of every position, little-endian float32, [n_tokens][n_vocab]
     NAME.json         manifest: tokens, shapes, the reference's own float32-vs-float64 error, routing margins
   The reference runs on exactly the values stored in the GGUF (f16-rounded, or dequantized for quantized types).

2. The real default model (models/SmolLM2-135M-Instruct.Q4_1.gguf), loaded by transformers (which dequantizes it)
   and run in float32: greedy continuations of fixed prompts, top logits of their last position, and perplexity on
   /usr/share/common-licenses/GPL-3 (windowing rule in tests/fixtures/models/README.md). Output: smollm2_reference.json.

Usage: .venv-ref/bin/python scripts/make_model_fixtures.py [--only NAME[,NAME...]] [--skip-smollm2]
"""

import argparse
import json
import math
import os
import re
import sys

import numpy as np
import torch
import transformers as tf
import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "models")
N_TOKENS = 32
VOCAB = 256
HIDDEN = 64


# ---------------------------------------------------------------------------------------------------------------
# Random weights
# ---------------------------------------------------------------------------------------------------------------

def is_vector_param(name, tensor):
    """Norm weights and biases: 1D, stored as f32 in the GGUF (llama.cpp's convention)."""
    return tensor.dim() == 1


def randomize(model, seed):
    """Gives every parameter (and the DeepSeek router bias buffer) random values from `seed`.

    Matrices get N(0, 1/fan_in) so activations keep their scale through the layers; norm weights 1 + N(0, 0.1^2)
    so that a norm applied without its weight shows; embeddings N(0, 1); the q/k/v biases (qwen2) N(0, 0.5^2), so
    that a bias left out or added in the wrong place shows. Values are then rounded to what the GGUF
    will hold (f16 for matrices, f32 for vectors) so the reference computes on exactly the stored weights.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if "inv_freq" in name:
                continue
            if name.endswith("e_score_correction_bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
            elif "norm" in name:
                p.copy_(1.0 + torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
            elif name.endswith("_proj.bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(fan_in))
            if is_vector_param(name, p):
                p.copy_(p.to(torch.float32).to(p.dtype))
            else:
                p.copy_(p.to(torch.float16).to(p.dtype))


# ---------------------------------------------------------------------------------------------------------------
# GGUF writing
# ---------------------------------------------------------------------------------------------------------------

def permute_rope_rows(w, n_head):
    """HF llama q/k rows are in rotate_half order (each head: first half, second half); ggml's normal RoPE rotates
    adjacent pairs. Reorders each head's rows so that row 2i is HF row i and row 2i+1 is HF row i + head_dim/2."""
    rows, cols = w.shape
    head_dim = rows // n_head
    return w.reshape(n_head, 2, head_dim // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


class TensorSink:
    """Collects GGUF tensors: matrices as f16 (or a quantized type), vectors as f32."""

    def __init__(self, writer, matrix_type):
        self.writer = writer
        self.matrix_type = matrix_type
        self.dequantized = {}  # name -> float64 values as stored (for the quantized fixture's reference)

    def add(self, name, array):
        a = np.ascontiguousarray(array, dtype=np.float64)
        if a.ndim == 1:
            self.writer.add_tensor(name, a.astype(np.float32))
            return
        if self.matrix_type == gguf.GGMLQuantizationType.F16:
            self.writer.add_tensor(name, a.astype(np.float16))
            return
        q = gguf.quants.quantize(a.astype(np.float32), self.matrix_type)
        self.writer.add_tensor(name, q, raw_dtype=self.matrix_type)
        self.dequantized[name] = gguf.quants.dequantize(q, self.matrix_type).astype(np.float64)


def sd_numpy(model):
    return {k: v.detach().to(torch.float64).numpy() for k, v in model.state_dict().items()}


def write_common(w, arch, cfg, n_layer):
    w.add_name(f"leanrotor-fixture-{arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(n_layer)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)


def add_globals(sink, sd, tied):
    sink.add("token_embd.weight", sd["model.embed_tokens.weight"])
    sink.add("output_norm.weight", sd["model.norm.weight"])
    if not tied:
        sink.add("output.weight", sd["lm_head.weight"])


def add_dense_ffn(sink, sd, i, suffix=""):
    p = f"model.layers.{i}.mlp."
    sink.add(f"blk.{i}.ffn_gate{suffix}.weight", sd[p + "gate_proj.weight"])
    sink.add(f"blk.{i}.ffn_up{suffix}.weight", sd[p + "up_proj.weight"])
    sink.add(f"blk.{i}.ffn_down{suffix}.weight", sd[p + "down_proj.weight"])


def add_experts(sink, sd, i, n_ff):
    """transformers keeps experts as gate_up_proj [E, 2*n_ff, H] (gate rows first) and down_proj [E, H, n_ff];
    GGUF stores three 3D tensors whose numpy shapes are [E, n_ff, H], [E, n_ff, H], [E, H, n_ff]."""
    p = f"model.layers.{i}.mlp."
    gate_up = sd[p + "experts.gate_up_proj"]
    sink.add(f"blk.{i}.ffn_gate_inp.weight", sd[p + "gate.weight"])
    sink.add(f"blk.{i}.ffn_gate_exps.weight", gate_up[:, :n_ff, :])
    sink.add(f"blk.{i}.ffn_up_exps.weight", gate_up[:, n_ff:, :])
    sink.add(f"blk.{i}.ffn_down_exps.weight", sd[p + "experts.down_proj"])


def write_llama_family(path, arch, model, matrix_type, permute_qk, moe):
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    write_common(w, arch, cfg, cfg.num_hidden_layers)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if moe:
        w.add_feed_forward_length(cfg.intermediate_size)  # llama.cpp's mixtral: the expert FFN size
        w.add_expert_count(cfg.num_local_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    else:
        w.add_feed_forward_length(cfg.intermediate_size)
    sink = TensorSink(w, matrix_type)
    sd = sd_numpy(model)
    add_globals(sink, sd, cfg.tie_word_embeddings)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"]
        k = sd[p + "self_attn.k_proj.weight"]
        if permute_qk:
            q = permute_rope_rows(q, cfg.num_attention_heads)
            k = permute_rope_rows(k, cfg.num_key_value_heads)
        sink.add(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        sink.add(f"blk.{i}.attn_q.weight", q)
        sink.add(f"blk.{i}.attn_k.weight", k)
        sink.add(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        sink.add(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj")):
            if p + f"self_attn.{h}.bias" in sd:  # qwen2 (NEOX RoPE: q/k not permuted, so neither are their biases)
                assert not permute_qk
                sink.add(f"blk.{i}.{g}.bias", sd[p + f"self_attn.{h}.bias"])
        if p + "self_attn.q_norm.weight" in sd:
            sink.add(f"blk.{i}.attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"])
            sink.add(f"blk.{i}.attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"])
        sink.add(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        if moe:
            add_experts(sink, sd, i, cfg.intermediate_size)
        else:
            add_dense_ffn(sink, sd, i)
    finish(w)
    return sink


def write_mla_keys(w, arch, cfg, gating):
    """deepseek2 metadata (llama.cpp's key names) from a transformers DeepseekV3Config / Mistral4Config."""
    rp = cfg.rope_parameters
    write_common(w, arch, cfg, cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_leading_dense_block_count(cfg.first_k_dense_replace)
    if cfg.q_lora_rank is not None:
        w.add_q_lora_rank(cfg.q_lora_rank)
    w.add_kv_lora_rank(cfg.kv_lora_rank)
    w.add_key_length(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    w.add_value_length(cfg.v_head_dim)
    w.add_rope_dimension_count(cfg.qk_rope_head_dim)
    w.add_rope_freq_base(rp["rope_theta"])
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(rp["factor"])
    w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_log_mul(0.1 * rp["mscale_all_dim"])
    w.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
    if rp.get("llama_4_scaling_beta"):
        w.add_attn_temperature_scale(rp["llama_4_scaling_beta"])
        w.add_attn_temperature_length(rp["original_max_position_embeddings"])
    w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
    w.add_expert_count(cfg.n_routed_experts)
    w.add_expert_used_count(cfg.num_experts_per_tok)
    w.add_expert_shared_count(cfg.n_shared_experts)
    w.add_expert_weights_scale(cfg.routed_scaling_factor)
    w.add_expert_weights_norm(bool(cfg.norm_topk_prob))
    w.add_expert_gating_func(gating)
    w.add_expert_group_count(cfg.n_group)
    w.add_expert_group_used_count(cfg.topk_group)


def write_mla(path, arch, model, gating):
    """deepseek2-style GGUF (llama.cpp's keys). kv_b is kept whole as attn_kv_b [n_head*(nope+v), kv_lora_rank];
    the rope parts of q and of kv_a_mqa stay in their stored order, which is the interleaved-pair order that
    ggml's normal RoPE rotates (transformers' rope_interleave=True), so nothing is permuted."""
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    write_mla_keys(w, arch, cfg, gating)
    sink = TensorSink(w, gguf.GGMLQuantizationType.F16)
    sd = sd_numpy(model)
    add_globals(sink, sd, cfg.tie_word_embeddings)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        sink.add(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        if cfg.q_lora_rank is None:
            sink.add(f"blk.{i}.attn_q.weight", sd[a + "q_proj.weight"])
        else:
            sink.add(f"blk.{i}.attn_q_a.weight", sd[a + "q_a_proj.weight"])
            sink.add(f"blk.{i}.attn_q_a_norm.weight", sd[a + "q_a_layernorm.weight"])
            sink.add(f"blk.{i}.attn_q_b.weight", sd[a + "q_b_proj.weight"])
        sink.add(f"blk.{i}.attn_kv_a_mqa.weight", sd[a + "kv_a_proj_with_mqa.weight"])
        sink.add(f"blk.{i}.attn_kv_a_norm.weight", sd[a + "kv_a_layernorm.weight"])
        sink.add(f"blk.{i}.attn_kv_b.weight", sd[a + "kv_b_proj.weight"])
        sink.add(f"blk.{i}.attn_output.weight", sd[a + "o_proj.weight"])
        sink.add(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        if i < cfg.first_k_dense_replace:
            add_dense_ffn(sink, sd, i)
            continue
        add_experts(sink, sd, i, cfg.moe_intermediate_size)
        if p + "mlp.gate.e_score_correction_bias" in sd:
            sink.add(f"blk.{i}.exp_probs_b.bias", sd[p + "mlp.gate.e_score_correction_bias"])
        m = p + "mlp.shared_experts."
        sink.add(f"blk.{i}.ffn_gate_shexp.weight", sd[m + "gate_proj.weight"])
        sink.add(f"blk.{i}.ffn_up_shexp.weight", sd[m + "up_proj.weight"])
        sink.add(f"blk.{i}.ffn_down_shexp.weight", sd[m + "down_proj.weight"])
    finish(w)
    return sink


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------------------------------
# Reference runs
# ---------------------------------------------------------------------------------------------------------------

class RouterMargins:
    """Records, over every MoE layer and position, the smallest gap between the k-th and (k+1)-th routing score:
    a tiny gap would let float rounding pick a different expert, so the script refuses seeds that make one."""

    def __init__(self, model):
        self.min_gap = math.inf
        self.hooks = []
        for name, mod in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(mod, "top_k"):
                self.hooks.append(mod.register_forward_hook(self.hook))

    def hook(self, mod, inputs, outputs):
        router_logits = outputs[0].to(torch.float64)
        if hasattr(mod, "e_score_correction_bias"):
            scores = router_logits.sigmoid() + mod.e_score_correction_bias.to(torch.float64)
        else:
            scores = router_logits.softmax(-1)
        if getattr(mod, "num_group", 1) and getattr(mod, "num_group", 1) > 1:
            grouped = scores.view(scores.shape[0], mod.num_group, -1)
            gs = grouped.topk(2, dim=-1)[0].sum(-1).sort(-1, descending=True)[0]
            self.min_gap = min(self.min_gap, float((gs[:, mod.topk_group - 1] - gs[:, mod.topk_group]).min()))
            # Only experts in the chosen groups compete.
            keep = torch.zeros_like(gs, dtype=torch.bool)
            idx = grouped.topk(2, dim=-1)[0].sum(-1).topk(mod.topk_group, dim=-1)[1]
            keep.scatter_(1, idx, True)
            mask = keep.unsqueeze(-1).expand_as(grouped).reshape(scores.shape)
            scores = scores.masked_fill(~mask, -math.inf)
        s = scores.sort(-1, descending=True)[0]
        self.min_gap = min(self.min_gap, float((s[:, mod.top_k - 1] - s[:, mod.top_k]).min()))

    def remove(self):
        for h in self.hooks:
            h.remove()


def reference_logits(model, tokens, dtype):
    model = model.to(dtype)
    with torch.no_grad():
        out = model(torch.tensor([tokens]), use_cache=False).logits[0]
    return out.to(torch.float64).numpy()


def write_json(path, obj):
    """JSON with one line per key (nested objects indented), lists of numbers kept on one line."""
    text = json.dumps(obj, indent=1, ensure_ascii=False)
    text = re.sub(r"\[\s*([-0-9.e,\s]+?)\s*\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]",
                  text)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def rel_error(a, b):
    """max over positions of max|a-b| / max|b| (per position): the bar the C++ test applies."""
    return float(max(np.abs(a[i] - b[i]).max() / np.abs(b[i]).max() for i in range(b.shape[0])))


def make_fixture(name, model, write, seed, notes, tokens_seed=1234):
    model.config._experts_implementation = "eager"  # the plain per-expert loop; grouped_mm has no float64
    randomize(model, seed)
    model.eval()
    path = os.path.join(OUT_DIR, name + ".gguf")
    sink = write(path, model)
    if sink.dequantized:
        # Quantized fixture: the reference runs on the dequantized weights (GGUF names mapped back by value).
        load_dequantized(model, sink)
    rng = np.random.default_rng(tokens_seed)
    tokens = [int(t) for t in rng.integers(0, model.config.vocab_size, N_TOKENS)]
    margins = RouterMargins(model)
    ref64 = reference_logits(model, tokens, torch.float64)
    margins.remove()
    ref32 = reference_logits(model, tokens, torch.float32)
    model.to(torch.float64)
    ref64.astype("<f4").tofile(os.path.join(OUT_DIR, name + ".logits.f32"))
    manifest = {
        "gguf": name + ".gguf",
        "logits": name + ".logits.f32",
        "architecture": write.arch,
        "reference": f"transformers {tf.__version__} {type(model).__name__}, float64, torch {torch.__version__}",
        "n_tokens": len(tokens),
        "n_vocab": model.config.vocab_size,
        "tokens": tokens,
        "positions": "0..n_tokens-1, one sequence, causal",
        "reference_f32_vs_f64_rel": rel_error(ref32, ref64),
        "seed": seed,
        "notes": notes,
    }
    if margins.hooks:
        manifest["min_router_margin"] = margins.min_gap
        assert margins.min_gap > 2e-4, f"{name}: routing near a tie ({margins.min_gap}); pick another seed"
    write_json(os.path.join(OUT_DIR, name + ".json"), manifest)
    print(f"{name}: {os.path.getsize(path)} bytes, f32-vs-f64 rel {manifest['reference_f32_vs_f64_rel']:.2e}"
          + (f", router margin {margins.min_gap:.3g}" if margins.hooks else ""))


def load_dequantized(model, sink):
    """Puts the dequantized GGUF matrices back into the transformers model (llama layout only)."""
    cfg = model.config
    sd = model.state_dict()
    inv = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight"}
    for i in range(cfg.num_hidden_layers):
        for g, h in (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"),
                     ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"),
                     ("ffn_down", "mlp.down_proj")):
            inv[f"blk.{i}.{g}.weight"] = f"model.layers.{i}.{h}.weight"
    with torch.no_grad():
        for gname, values in sink.dequantized.items():
            if gname.endswith("attn_q.weight") or gname.endswith("attn_k.weight"):
                n = cfg.num_attention_heads if "attn_q" in gname else cfg.num_key_value_heads
                values = unpermute_rope_rows(values, n)
            sd[inv[gname]].copy_(torch.from_numpy(values))


def unpermute_rope_rows(w, n_head):
    rows, cols = w.shape
    head_dim = rows // n_head
    return w.reshape(n_head, head_dim // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def writer(arch, fn):
    fn.arch = arch
    return fn


def tiny_fixtures(only):
    f16 = gguf.GGMLQuantizationType.F16
    specs = {}

    def llama_model(tied=False):
        return tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=tied))

    specs["llama"] = lambda: make_fixture(
        "llama", llama_model(),
        writer("llama", lambda p, m: write_llama_family(p, "llama", m, f16, True, False)), 11,
        "llama: GQA 4 q heads / 2 kv heads, head_dim 16, untied output; q/k rows permuted for adjacent-pair RoPE")

    specs["llama_q8_0"] = lambda: make_fixture(
        "llama_q8_0", llama_model(tied=True),
        writer("llama", lambda p, m: write_llama_family(p, "llama", m, gguf.GGMLQuantizationType.Q8_0, True, False)),
        12, "llama with Q8_0 matrices (reference on the dequantized values), tied embeddings (no output.weight)")

    specs["llama_q4_1"] = lambda: make_fixture(
        "llama_q4_1", tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=VOCAB, hidden_size=192, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=3, num_key_value_heads=1, rms_norm_eps=1e-5, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True)),
        writer("llama", lambda p, m: write_llama_family(p, "llama", m, gguf.GGMLQuantizationType.Q4_1, True, False)),
        13, "llama with Q4_1 matrices (reference on the dequantized values), tied embeddings, the default model's "
        "attention shape: head_dim 64, 3 q heads per kv head, theta 1e5")

    specs["qwen2"] = lambda: make_fixture(
        "qwen2", tf.Qwen2ForCausalLM(tf.Qwen2Config(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=256,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, use_sliding_window=False,
            tie_word_embeddings=False)),
        writer("qwen2", lambda p, m: write_llama_family(p, "qwen2", m, f16, False, False)), 61,
        "qwen2: llama blocks with q/k/v biases (N(0, 0.5^2)), GQA 4 q / 2 kv heads, head_dim 16, NEOX RoPE "
        "(no permutation), theta 1e6, untied output")

    specs["qwen3"] = lambda: make_fixture(
        "qwen3", tf.Qwen3ForCausalLM(tf.Qwen3Config(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
            max_position_embeddings=256, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            tie_word_embeddings=True)),
        writer("qwen3", lambda p, m: write_llama_family(p, "qwen3", m, f16, False, False)), 21,
        "qwen3: head_dim 32 (q width 128 != hidden 64), q/k RMSNorm per head, NEOX RoPE (no permutation), tied")

    specs["mixtral"] = lambda: make_fixture(
        "mixtral", tf.MixtralForCausalLM(tf.MixtralConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
            rms_norm_eps=1e-5, max_position_embeddings=256, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
        writer("llama", lambda p, m: write_llama_family(p, "llama", m, f16, True, True)), 31,
        "mixtral as llama.cpp writes it (arch llama + expert keys): 8 experts, top-2, softmax then renormalised top-k")

    mla_common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=96, moe_intermediate_size=32,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
                      qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=24, first_k_dense_replace=1,
                      n_shared_experts=1, n_routed_experts=8, rms_norm_eps=1e-6,
                      norm_topk_prob=True, rope_interleave=True)

    specs["mistral4"] = lambda: make_fixture(
        "mistral4", tf.Mistral4ForCausalLM(tf.Mistral4Config(
            **mla_common, max_position_embeddings=128, q_lora_rank=48, num_experts_per_tok=3, n_group=1, topk_group=1, routed_scaling_factor=1.0,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 8.0,
                             "original_max_position_embeddings": 16, "beta_fast": 32.0, "beta_slow": 1.0,
                             "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1,
                             "partial_rotary_factor": 0.5})),
        writer("deepseek2", lambda p, m: write_mla(p, "deepseek2", m, gguf.ExpertGatingFuncType.SOFTMAX)), 41,
        "Mistral-4 / Leanstral shape: MLA with q_lora 48, kv_lora 32, rope 16 + nope 16, v 24; YaRN factor 8 over 16 "
        "positions with mscale_all_dim 1 (softmax scale x mscale^2); Llama-4 query temperature beta 0.1 per 16 "
        "positions (positions 16..31 scaled by 1+0.1*ln 2); layer 0 dense FFN, layer 1 MoE: softmax router, top-3 of "
        "8, renormalised, 1 shared expert")

    specs["deepseek_v3"] = lambda: make_fixture(
        "deepseek_v3", tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(
            **mla_common, max_position_embeddings=256, q_lora_rank=None, num_experts_per_tok=2, n_group=4, topk_group=2,
            routed_scaling_factor=2.5,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0,
                             "mscale": 0.707, "mscale_all_dim": 0.707})),
        writer("deepseek2", lambda p, m: write_mla(p, "deepseek2", m, gguf.ExpertGatingFuncType.SIGMOID)), 51,
        "DeepSeek-V3 shape: MLA with plain q (no q_lora), YaRN factor 4, mscale_all_dim 0.707; layer 1 MoE: sigmoid "
        "router + exp_probs_b bias for the choice only, 4 groups of 2 choose 2 groups, top-2, renormalised, x2.5, "
        "1 shared expert")

    specs["leanstral_config"] = leanstral_config
    for name, make in specs.items():
        if only is None or name in only:
            make()


def leanstral_config():
    """Metadata only: transformers' Mistral4Config() defaults (the Leanstral-2603 / Mistral Small 4 shape) as
    deepseek2 keys, and a token_embd of one row (a real one would be 1 GiB), so the config parser can be tested on
    the full-size shape. Its vocab_size key still says 131072."""
    cfg = tf.Mistral4Config()
    path = os.path.join(OUT_DIR, "leanstral_config.gguf")
    w = gguf.GGUFWriter(path, "deepseek2")
    write_mla_keys(w, "deepseek2", cfg, gguf.ExpertGatingFuncType.SOFTMAX)
    w.add_tensor("token_embd.weight", np.zeros((1, cfg.hidden_size), dtype=np.float16))
    finish(w)
    print(f"leanstral_config: {os.path.getsize(path)} bytes")


# ---------------------------------------------------------------------------------------------------------------
# The real default model
# ---------------------------------------------------------------------------------------------------------------

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Chosen among 14 candidates for a clear margin: every greedy step's best logit leads the second by > 0.1, so a
# runner whose logits are within ~0.05 must produce the same tokens.
PROMPTS = [
    "The Fundamental Theorem of Arithmetic states that",
    "import Mathlib\n\ntheorem two_add_two : 2 + 2 = 4 := by\n",
    "The Pythagorean theorem says that in a right triangle,",
]
GREEDY_TOKENS = 32
PPL_TEXT = "/usr/share/common-licenses/GPL-3"
PPL_WINDOW = 512
PPL_WINDOWS = 4
TOP_N = 20


def smollm2_reference():
    torch.manual_seed(0)
    model_dir = os.path.join(ROOT, "models")
    tok = tf.AutoTokenizer.from_pretrained(model_dir, gguf_file=SMOLLM2)
    model = tf.AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=SMOLLM2, dtype=torch.float32)
    model.eval()
    out = {
        "gguf": "models/" + SMOLLM2,
        "reference": f"transformers {tf.__version__} (GGUF dequantized to float32), torch {torch.__version__}",
        "greedy": [],
    }
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            seq = list(ids)
            gaps = []
            last_top = None
            for step in range(GREEDY_TOKENS):
                logits = model(torch.tensor([seq])).logits[0, -1].to(torch.float64)
                if step == 0:
                    vals, idx = logits.topk(TOP_N)
                    last_top = {"ids": [int(i) for i in idx], "logits": [float(v) for v in vals]}
                top2 = logits.topk(2)[0]
                gaps.append(float(top2[0] - top2[1]))
                seq.append(int(logits.argmax()))
            out["greedy"].append({
                "prompt": prompt,
                "prompt_ids": ids,
                "continuation_ids": seq[len(ids):],
                "continuation_text": tok.decode(seq[len(ids):]),
                "min_top1_gap": min(gaps),
                "last_prompt_position_top": last_top,
            })
            print(f"greedy: {prompt!r} -> {tok.decode(seq[len(ids):])!r} (min gap {min(gaps):.3f})")

        text = open(PPL_TEXT, encoding="utf-8").read()
        ids = tok(text, add_special_tokens=False)["input_ids"]
        need = PPL_WINDOW * PPL_WINDOWS
        assert len(ids) >= need, f"{PPL_TEXT} gives only {len(ids)} tokens"
        ids = ids[:need]
        windows = []
        total_nll, total_n = 0.0, 0
        first = PPL_WINDOW // 2
        for w in range(PPL_WINDOWS):
            chunk = ids[w * PPL_WINDOW:(w + 1) * PPL_WINDOW]
            logits = model(torch.tensor([chunk])).logits[0].to(torch.float64)
            logp = logits.log_softmax(-1)
            nll = 0.0
            for j in range(first, PPL_WINDOW - 1):
                nll -= float(logp[j, chunk[j + 1]])
            n = PPL_WINDOW - 1 - first
            windows.append({"nll_sum": nll, "n_scored": n, "ppl": math.exp(nll / n)})
            total_nll += nll
            total_n += n
        out["perplexity"] = {
            "text": PPL_TEXT,
            "tokens": ids,
            "window": PPL_WINDOW,
            "n_windows": PPL_WINDOWS,
            "rule": ("tokens = tokenizer(text) without BOS/EOS, first window*n_windows of them; window w is "
                     "tokens[w*window:(w+1)*window], run from an empty cache at position 0; the logits at positions "
                     "j = window/2 .. window-2 score the token at j+1 (window/2 - 1 tokens per window); "
                     "ppl = exp(sum of -log p / count) over all windows"),
            "windows": windows,
            "ppl": math.exp(total_nll / total_n),
        }
        print(f"perplexity over {PPL_WINDOWS} windows of {PPL_WINDOW}: {out['perplexity']['ppl']:.4f}")
    write_json(os.path.join(OUT_DIR, "smollm2_reference.json"), out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated fixture names (llama, llama_q8_0, llama_q4_1, qwen3, mixtral, mistral4, "
                    "deepseek_v3, leanstral_config, smollm2)")
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.set_num_threads(2)
    tiny_fixtures(only)
    if not args.skip_smollm2 and (only is None or "smollm2" in only):
        smollm2_reference()


if __name__ == "__main__":
    sys.exit(main())
