#!/usr/bin/env bash
# Perplexity and KL divergence vs an f16 KV cache for every KV format, as a Markdown table.
#   scripts/kv_ppl_table.sh [LEANROTOR] [CTX] [extra leanrotor perplexity flags...]
# Defaults: build/leanrotor, windows of 2048 tokens, the default model on /usr/share/common-licenses/GPL-3.
# One `leanrotor perplexity` run scores every row (each window's f16 reference is computed once). Rows: every format
# for K and V, then K/V splits, then formats with f16 sink rows (the first tokens) and window rows (the last tokens
# before each one, f16 or q8_0), among them the 4.5-bit (hx4 rows) and 3.5-bit budgets. bits/value counts the sink
# and window rows at the context length. The first row after f16 reads every position from f16 window rows: f16 with
# another summation order, i.e. the noise floor of the KL and perplexity columns (docs/RESULTS.md). The ± columns are one standard error over the scored tokens (the
# perplexity ratio's as a paired mean against the f16 run; cli/cmd_perplexity.cc).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-build/leanrotor}
ctx=${2:-2048}
shift $(( $# < 2 ? $# : 2 ))
formats=(f16 q8_0 q4_0 q4_0h tq4 hx4 planar4 iso4 tq3 hx3 hx3s planar3 iso3 tq2)
# K V sinks window window-format
rows=("q8_0 q8_0 0 $ctx f16"
      "q8_0 hx3 0 0 f16" "q8_0 tq3 0 0 f16" "q8_0 tq2 0 0 f16" "tq4 hx3 0 0 f16" "hx3 tq4 0 0 f16"
      "tq4 tq4 4 0 f16" "hx3 hx3 1 0 f16"
      "q4_0h q4_0h 4 32 f16" "tq4 tq4 4 32 f16" "tq4 tq4 4 64 f16" "tq4 tq4 4 128 q8_0" "tq4 tq4 4 256 q8_0"
      "hx3 hx3 1 15 f16" "hx3 hx3 1 32 f16" "hx3 tq2 1 63 f16" "hx3 tq2 1 119 q8_0" "hx3 iso3 1 15 f16"
      "hx4 hx4 1 31 f16" "hx4 hx4 1 58 q8_0" "hx4 hx4 4 52 q8_0"
      "hx3 hx3s 1 15 f16" "hx3 hx3s 1 27 q8_0" "hx3s hx3s 1 58 q8_0")
args=()
for f in "${formats[@]}"; do args+=(--ctk "$f" --ctv "$f" --kv-sinks 0 --kv-window 0 --kv-window-format f16); done
for r in "${rows[@]}"; do
  read -r k v s w wf <<<"$r"
  args+=(--ctk "$k" --ctv "$v" --kv-sinks "$s" --kv-window "$w" --kv-window-format "$wf")
done
out=$("$bin" perplexity -c "$ctx" --json "${args[@]}" "$@")
echo "| K | V | f16 sinks | window | bits/value | perplexity | vs f16 | ± | mean KL vs f16 | ± |"
echo "|---|---|---|---|---|---|---|---|---|---|"
python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
base = next(r["ppl"] for r in rows if r["ctk"] == "f16" and r["ctv"] == "f16")
for r in rows:
    window = "%d %s" % (r["window"], r["window_format"]) if r["window"] else "0"
    print("| %s | %s | %d | %s | %.3f | %.4f | %+.2f%% | %.2f%% | %.5f | %.5f |" % (r["ctk"], r["ctv"], r["sinks"],
          window, r["bits_per_value"], r["ppl"], 100 * (r["ppl"] / base - 1), 100 * r["ln_ppl_ratio_se"], r["kld"],
          r["kld_se"]))
print("\n(%d scored tokens, windows of %s)" % (rows[0]["tokens"], sys.argv[1]))
' "$ctx" <<<"$out"
