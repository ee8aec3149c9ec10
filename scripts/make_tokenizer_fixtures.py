#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/*.json: reference token ids from the reference tokenizers.

Run by hand (CI only reads the outputs), in a virtual environment with the references installed:
  python3 -m venv .venv-ref
  .venv-ref/bin/pip install transformers tokenizers gguf sentencepiece mistral-common
  .venv-ref/bin/python scripts/make_tokenizer_fixtures.py

- smollm2.json: the default model's tokenizer as transformers builds it from the GGUF file (with SmolLM2's
  pre-tokenizer restored, see smollm2()), for every test string:
  ids with special tokens recognised (transformers' default) and with them split as plain text; plus ChatML prompts
  from the model's chat template (apply_chat_template).
- tekken.json: mistral-common's Tekkenizer on tekken_240911.json (special tokens are never parsed from text there).
- pretokenizers.json: the split patterns of the other byte-level pre-tokenizers (tokenizer.ggml.pre "llama-bpe",
  "qwen2", "deepseek-llm", "deepseek-v3", "tekken"), each as its model's tokenizer.json applies it (Split with
  behavior "isolated", then ByteLevel without its own regex) in the tokenizers library, over SmolLM2's vocabulary and
  merges: a check of the split semantics and PCRE2's Unicode classes against the library's Oniguruma.
- sentencepiece_v1.json: the sentencepiece library on mistral-common's tokenizer.model.v1 (Mistral 7B v0.1's
  SentencePiece BPE vocabulary, with byte fallback), the reference for GGUF tokenizer.ggml.model "llama".
"""
import glob
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")
MODEL_DIR = os.path.join(ROOT, "models")
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FEW_SHOT = os.path.join(ROOT, "..", "shared", "data", "minif2f_valid_few_shot.jsonl")


def test_strings():
    s = [
        "",
        " ",
        "a",
        "Hello, world!",
        "hello world  ",
        "   leading and trailing spaces   ",
        "tabs\tand\nnewlines\n\n\nend",
        "CRLF line one\r\nline two\r\n",
        "numbers 1 12 123 1234 12345 3.14159 -42 1e10 0x1F",
        "x₁ + x₂ = 2⁵",
        "∀ n : ℕ, n + 0 = n",
        "theorem foo (h : a ≤ b) : ¬ (b < a) := by\n  exact not_lt.mpr h",
        "fun x ↦ x * 2 ∘ λ y => y ⊢ ∃ z, z ∈ Set.univ ∧ z ≠ 0",
        "Nat.succ_le_of_lt_succ_of_ne_zero_of_really_long_identifier_name_that_goes_on",
        "emoji 🙂🚀 and CJK 数学定理 and accents éàü ñ",
        "don't we'll I'M you're they've it'd",
        "<|im_start|>user\nProve it.<|im_end|>\n<|im_start|>assistant\n",
        "text with <|endoftext|> inside and <|im_end|>",
        "[INST] mistral markers [/INST] <s> </s>",
        "                                                                    many spaces",
        "a\u00a0non-breaking space and a zero\u200bwidth",
        "```lean\nexample : 2 + 2 = 4 := by norm_num\n```",
    ]
    with open(FEW_SHOT, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    for r in rows[:12]:
        s.append(r["informal_prefix"] + r["formal_statement"] + r["formal_proof"])
    return s


def smollm2(strings):
    from transformers import AutoTokenizer

    from tokenizers import pre_tokenizers

    tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
    # transformers' GGUF conversion gives every "gpt2" model a plain ByteLevel pre-tokenizer, dropping the
    # individual-digit split that SmolLM2's own tokenizer.json has before it (and that llama.cpp applies for
    # tokenizer.ggml.pre "smollm"): "}\n  7" would come out as "}", "\n ", " ", "7" instead of "}", "\n  ", "7".
    # Restore the model's pre-tokenizer so that the reference is the model's real tokenizer.
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    cases = []
    for text in strings:
        ids = tok.encode(text, add_special_tokens=False)
        plain = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tok.decode(ids) == text, text
        cases.append({"text": text, "ids": ids, "ids_no_special": plain})
    conversations = [
        [{"role": "user", "content": "Prove that 1 + 1 = 2."}],
        [
            {"role": "system", "content": "You are a Lean 4 prover."},
            {"role": "user", "content": "theorem t : ∀ n : ℕ, n + 0 = n := by"},
            {"role": "assistant", "content": "  intro n\n  simp"},
            {"role": "user", "content": "Now without simp."},
        ],
    ]
    chat = []
    for messages in conversations:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chat.append({"messages": messages, "add_generation_prompt": True, "text": text})
    return {
        "model": MODEL_FILE,
        "reference": "transformers AutoTokenizer from the GGUF",
        "cases": cases,
        "chat_template": tok.chat_template,
        "chat": chat,
    }


# Split patterns as the models' tokenizer.json files give them (pattern lists are applied one after another).
PRE_TOKENIZERS = {
    "llama-bpe": (
        [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
        True,
    ),
    "qwen2": (
        [r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
        False,
    ),
    "deepseek-llm": (
        [
            "[\r\n]",
            (
                "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
            ),
            "\\s?[!-/:-~！-／：-～‘-‟　-。]+",
            "\\s+$",
            "[一-龥ࠀ-一가-퟿]+",
            "\\p{N}+",
        ],
        False,
    ),
    "deepseek-v3": (
        [
            r"\p{N}{1,3}",
            "[一-龥぀-ゟ゠-ヿ]+",
            r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        False,
    ),
    "tekken": (
        [r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
        False,
    ),
}


def pretokenizers(strings):
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    out = {"vocabulary": MODEL_FILE, "reference": "tokenizers Split(isolated) + ByteLevel(use_regex=False)"}
    for name, (patterns, ignore_merges) in PRE_TOKENIZERS.items():
        tok = AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=MODEL_FILE)
        backend = tok.backend_tokenizer
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in patterns]
            + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        backend.model.ignore_merges = ignore_merges
        out[name] = [{"text": t, "ids": backend.encode(t, add_special_tokens=False).ids} for t in strings]
    return out


def tekken(strings):
    import mistral_common
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_240911.json")
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    tok = Tekkenizer.from_file(path)
    cases = []
    for text in strings:
        ids = tok.encode(text, bos=False, eos=False)
        cases.append({"text": text, "ids": ids})
    return {
        "file": "tekken_240911.json",
        "sha256": sha,
        "reference": "mistral-common %s Tekkenizer.encode(bos=False, eos=False)" % mistral_common.__version__,
        "bos": tok.bos_id,
        "eos": tok.eos_id,
        "vocab_size": tok.n_words,
        "special": {s: tok.get_special_token(s) for s in ["[INST]", "[/INST]", "[TOOL_CALLS]", "[SYSTEM_PROMPT]"]},
        "cases": cases,
    }


def sentencepiece_v1(strings):
    import mistral_common
    import sentencepiece

    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    sp = sentencepiece.SentencePieceProcessor(model_file=path)
    cases = []
    for text in strings:
        ids = sp.encode(text)
        cases.append({"text": text, "ids": ids})
    return {
        "file": "tokenizer.model.v1",
        "sha256": sha,
        "reference": "sentencepiece %s SentencePieceProcessor.encode" % sentencepiece.__version__,
        "cases": cases,
    }


def write(name, data):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print("wrote", path, os.path.getsize(path), "bytes")


def main():
    strings = test_strings()
    write("smollm2.json", smollm2(strings))
    write("tekken.json", tekken(strings))
    write("sentencepiece_v1.json", sentencepiece_v1(strings))
    write("pretokenizers.json", pretokenizers(strings))


if __name__ == "__main__":
    sys.exit(main())
