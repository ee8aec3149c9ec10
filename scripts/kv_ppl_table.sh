#!/usr/bin/env bash
# Perplexity and KL divergence vs an f16 KV cache for every KV format, as a Markdown table.
#   scripts/kv_ppl_table.sh [LEANROTOR] [CTX] [extra leanrotor perplexity flags...]
# Defaults: build/leanrotor, windows of 2048 tokens, the default model on /usr/share/common-licenses/GPL-3.
# One `leanrotor perplexity` run scores every pair (each window's f16 reference is computed once). Rows: every
# format for K and V, then K/V splits (keys at 8 bits, values compressed harder).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/leanrotor}
ctx=${2:-2048}
shift $(( $# < 2 ? $# : 2 ))
formats=(f16 q8_0 q4_0 q4_0h tq4 planar4 iso4 tq3 hx3 planar3 iso3 tq2)
splits=("q8_0 hx3" "q8_0 tq3" "q8_0 tq2" "tq4 hx3" "hx3 tq4")
args=()
for f in "${formats[@]}"; do args+=(--ctk "$f" --ctv "$f"); done
for s in "${splits[@]}"; do read -r k v <<<"$s"; args+=(--ctk "$k" --ctv "$v"); done
out=$("$bin" perplexity -c "$ctx" --json "${args[@]}" "$@")
echo "| K | V | bits/value | perplexity | vs f16 | mean KL vs f16 |"
echo "|---|---|---|---|---|---|"
python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
base = next(r["ppl"] for r in rows if r["ctk"] == "f16" and r["ctv"] == "f16")
for r in rows:
    print("| %s | %s | %.3f | %.4f | %+.2f%% | %.5f |" % (r["ctk"], r["ctv"], r["bits_per_value"], r["ppl"],
          100 * (r["ppl"] / base - 1), r["kld"]))
print("\n(%d scored tokens, windows of %s)" % (rows[0]["tokens"], sys.argv[1]))
' "$ctx" <<<"$out"
