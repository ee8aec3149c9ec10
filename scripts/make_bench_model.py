#!/usr/bin/env python3
"""Writes a random-weight GGUF with the per-layer shapes of a large MoE + MLA model, for `leanrotor bench -m`.

Speed of a MoE/MLA model depends on its shapes and weight types, not on its values, so a bench needs no downloaded
model: this writes a real GGUF (version 3, llama.cpp's `deepseek2` keys and tensor names, readable by llama.cpp's
llama-bench too) whose weights are pseudo-random from a fixed seed, scaled so that activations keep their size
through the layers (weight std ~ 1/sqrt(fan_in)); norms are 1. No vocabulary (tokenizer.ggml.model "none": bench
feeds token ids).

Preset `leanstral-slice` (default): Leanstral's layer shapes (hidden 4096, MLA q_lora 1024 / kv_lora 256 /
rope 64 / nope 64 / v 128, 32 heads, 128 routed experts top-4 + 1 shared, expert FFN 2048), 2 layers, vocab 32768.
Experts (routed and shared) are Q4_0; attention, embedding and output Q8_0. About 4 GB.
Preset `tiny`: the same structure at toy size (hidden 64, 8 experts top-2 + 1 shared), the test fixture
tests/fixtures/models/moe_mla_q4_0.gguf.

Usage: python3 scripts/make_bench_model.py [--preset leanstral-slice] [--layers N] [--vocab N] OUT.gguf
Pure Python (no numpy): about a minute for the default preset.
"""

import argparse
import os
import random
import struct
import sys

GGUF_U32, GGUF_F32, GGUF_BOOL, GGUF_STRING = 4, 6, 7, 8
F32, Q4_0, Q8_0 = 0, 2, 8
BLOCK = {Q4_0: (32, 18), Q8_0: (32, 34)}  # values and bytes per block
ALIGN = 32

PRESETS = {
    "leanstral-slice": dict(n_embd=4096, n_head=32, q_lora=1024, kv_lora=256, rope=64, nope=64, v=128,
                            n_expert=128, n_used=4, n_shared=1, ff_expert=2048, layers=2, vocab=32768),
    # The same structure at toy size, for tests (tests/fixtures/models/moe_mla_q4_0.gguf, 100 KB).
    "tiny": dict(n_embd=64, n_head=4, q_lora=32, kv_lora=32, rope=16, nope=16, v=16,
                 n_expert=8, n_used=2, n_shared=1, ff_expert=32, layers=2, vocab=256),
}


def f16_bytes(x):
    return struct.pack("<e", x)


def quantized(rows, cols, ttype, std, rng):
    """rows x cols values of `ttype` with random quants and one scale giving values of standard deviation ~std."""
    per, size = BLOCK[ttype]
    assert cols % per == 0, (rows, cols)
    n_blocks = rows * cols // per
    data = bytearray()
    for begin in range(0, n_blocks * size, 1 << 26):  # randbytes takes at most 2^28 bytes
        data += rng.randbytes(min(1 << 26, n_blocks * size - begin))
    # Uniform quants: q4_0's (q - 8) has std ~4.6, q8_0's int8 ~73.9.
    d = f16_bytes(std / (4.6 if ttype == Q4_0 else 73.9))
    data[0::size] = d[0:1] * n_blocks
    data[1::size] = d[1:2] * n_blocks
    return data


class Writer:
    def __init__(self, arch):
        self.kv = []  # encoded entries
        self.tensors = []  # (name, dims ggml order, type, bytes-producer)
        self.string("general.architecture", arch)
        self.arch = arch

    def _key(self, k, t):
        kb = k.encode()
        return struct.pack("<Q", len(kb)) + kb + struct.pack("<I", t)

    def string(self, k, v):
        vb = v.encode()
        self.kv.append(self._key(k, GGUF_STRING) + struct.pack("<Q", len(vb)) + vb)

    def u32(self, k, v):
        self.kv.append(self._key(self.arch_key(k), GGUF_U32) + struct.pack("<I", v))

    def f32(self, k, v):
        self.kv.append(self._key(self.arch_key(k), GGUF_F32) + struct.pack("<f", v))

    def bool(self, k, v):
        self.kv.append(self._key(self.arch_key(k), GGUF_BOOL) + struct.pack("<B", 1 if v else 0))

    def arch_key(self, k):
        return self.arch + "." + k

    def tensor(self, name, dims, ttype, make):
        self.tensors.append((name, dims, ttype, make))

    def write(self, path):
        def nbytes(dims, ttype):
            n = 1
            for d in dims:
                n *= d
            if ttype == F32:
                return 4 * n
            per, size = BLOCK[ttype]
            return n // per * size

        infos, offset = [], 0
        for name, dims, ttype, _ in self.tensors:
            nb = name.encode()
            infos.append(struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(dims)) +
                         b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ttype, offset))
            offset += (nbytes(dims, ttype) + ALIGN - 1) // ALIGN * ALIGN
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(b"GGUF" + struct.pack("<IQQ", 3, len(self.tensors), len(self.kv)))
            for e in self.kv:
                f.write(e)
            for i in infos:
                f.write(i)
            f.write(b"\0" * (-f.tell() % ALIGN))
            for name, dims, ttype, make in self.tensors:
                data = make()
                assert len(data) == nbytes(dims, ttype), name
                f.write(data)
                f.write(b"\0" * (-len(data) % ALIGN))
                print(f"  {name} {dims}", file=sys.stderr)
        os.replace(tmp, path)


def build(p, seed):
    rng = random.Random(seed)
    w = Writer("deepseek2")
    e, heads, kd = p["n_embd"], p["n_head"], p["nope"] + p["rope"]
    w.u32("block_count", p["layers"])
    w.u32("context_length", 32768)
    w.u32("embedding_length", e)
    w.u32("feed_forward_length", p["ff_expert"])
    w.u32("attention.head_count", heads)
    w.u32("attention.head_count_kv", heads)
    w.u32("attention.key_length", kd)
    w.u32("attention.value_length", p["v"])
    w.f32("attention.layer_norm_rms_epsilon", 1e-6)
    w.u32("attention.q_lora_rank", p["q_lora"])
    w.u32("attention.kv_lora_rank", p["kv_lora"])
    w.f32("rope.freq_base", 10000.0)
    w.u32("rope.dimension_count", p["rope"])
    w.f32("rope.scaling.yarn_log_multiplier", 0.0)  # no YaRN; llama.cpp's deepseek2 loader requires the key
    w.u32("leading_dense_block_count", 0)
    w.u32("expert_count", p["n_expert"])
    w.u32("expert_used_count", p["n_used"])
    w.u32("expert_shared_count", p["n_shared"])
    w.u32("expert_feed_forward_length", p["ff_expert"])
    w.u32("expert_gating_func", 1)  # softmax
    w.bool("expert_weights_norm", True)
    w.f32("expert_weights_scale", 1.0)
    w.u32("vocab_size", p["vocab"])
    w.string("tokenizer.ggml.model", "none")  # no vocabulary: llama.cpp then makes vocab_size dummy tokens

    def q(rows, cols, ttype, std=None):
        return lambda: quantized(rows, cols, ttype, std if std else cols ** -0.5, rng)

    def ones(n):
        return lambda: struct.pack("<f", 1.0) * n

    ne, ff, vocab = p["n_expert"], p["ff_expert"], p["vocab"]
    w.tensor("token_embd.weight", [e, vocab], Q8_0, q(vocab, e, Q8_0, 1.0))
    w.tensor("output_norm.weight", [e], F32, ones(e))
    w.tensor("output.weight", [e, vocab], Q8_0, q(vocab, e, Q8_0))
    for i in range(p["layers"]):
        b = f"blk.{i}."
        w.tensor(b + "attn_norm.weight", [e], F32, ones(e))
        w.tensor(b + "attn_q_a.weight", [e, p["q_lora"]], Q8_0, q(p["q_lora"], e, Q8_0))
        w.tensor(b + "attn_q_a_norm.weight", [p["q_lora"]], F32, ones(p["q_lora"]))
        w.tensor(b + "attn_q_b.weight", [p["q_lora"], heads * kd], Q8_0, q(heads * kd, p["q_lora"], Q8_0))
        w.tensor(b + "attn_kv_a_mqa.weight", [e, p["kv_lora"] + p["rope"]], Q8_0, q(p["kv_lora"] + p["rope"], e, Q8_0))
        w.tensor(b + "attn_kv_a_norm.weight", [p["kv_lora"]], F32, ones(p["kv_lora"]))
        kv_b_rows = heads * (p["nope"] + p["v"])
        w.tensor(b + "attn_kv_b.weight", [p["kv_lora"], kv_b_rows], Q8_0, q(kv_b_rows, p["kv_lora"], Q8_0))
        w.tensor(b + "attn_output.weight", [heads * p["v"], e], Q8_0, q(e, heads * p["v"], Q8_0))
        w.tensor(b + "ffn_norm.weight", [e], F32, ones(e))
        w.tensor(b + "ffn_gate_inp.weight", [e, ne], F32,
                 lambda: struct.pack(f"<{e * ne}f", *(rng.gauss(0.0, e ** -0.5) for _ in range(e * ne))))
        w.tensor(b + "ffn_gate_exps.weight", [e, ff, ne], Q4_0, q(ne * ff, e, Q4_0))
        w.tensor(b + "ffn_up_exps.weight", [e, ff, ne], Q4_0, q(ne * ff, e, Q4_0))
        w.tensor(b + "ffn_down_exps.weight", [ff, e, ne], Q4_0, q(ne * e, ff, Q4_0))
        sh = ff * p["n_shared"]
        w.tensor(b + "ffn_gate_shexp.weight", [e, sh], Q4_0, q(sh, e, Q4_0))
        w.tensor(b + "ffn_up_shexp.weight", [e, sh], Q4_0, q(sh, e, Q4_0))
        w.tensor(b + "ffn_down_shexp.weight", [sh, e], Q4_0, q(e, sh, Q4_0))
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--preset", default="leanstral-slice", choices=sorted(PRESETS))
    ap.add_argument("--layers", type=int, help="override the preset's layer count")
    ap.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    ap.add_argument("--seed", type=int, default=23)
    a = ap.parse_args()
    p = dict(PRESETS[a.preset])
    if a.layers:
        p["layers"] = a.layers
    if a.vocab:
        p["vocab"] = a.vocab
    build(p, a.seed).write(a.out)


if __name__ == "__main__":
    main()
