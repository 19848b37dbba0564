#!/usr/bin/env bash
# Cross-tokenizer SpecAttn at full length on the H200 (issue 8, part 2): TARGET (gemma3-270m by default, or
# qwen2.5-coder-0.5b) with smollm2-135m, another model family with its own tokenizer, as the draft.
#
#   TARGET=gemma3-270m DOCS=3 TOKENIZER=.device/gemma_tok bash benchmarks/device/crosstok_session.sh "$OUT"
#
# 1. Table 1 on DOCS held-out-style PG-19 books (2048 tokens, 10% prefill, block 16, first 2 layers dense, fp32,
#    torch backend): dense and SpecAttn p=0.95 with the cross-tokenizer draft (its attention mapped onto the
#    target's blocks through character offsets; layer map calibrated on the mapped distributions on first use).
# 2. Quest and StreamingLLM at SpecAttn's measured KV reduction. Their reads depend only on the lengths, so
#    their budgets are read off benchmarks/results/length_budget_2048.json (measured once on a tiny model by
#    benchmarks/length_budget_table.py) instead of bisecting with the real model; the table shows the
#    reduction each actually reached.
# 3. Cross-tokenizer speculative decoding (greedy, gamma 4): acceptance in target tokens, and the check that
#    every output equals the target's own greedy decoding (benchmarks/device/crosstok_specdec.py).
#
# Needs, in this warm machine: smollm2-135m fetched into $SPARSEBENCH_CACHE, the corpora in $SPARSEBENCH_DATA
# and the wheels in /tmp/site (benchmarks/device/smollm2_session.sh train did all three), and TARGET's GGUF
# pieces (*.part.*, from .device/<gemma|qwen>/cNN) copied to /tmp/stash/$TARGET by earlier calls.
set -uo pipefail
out=${1:?usage: crosstok_session.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSEBENCH_CACHE=${SPARSEBENCH_CACHE:-/tmp/sbcache}
export SPARSEBENCH_DATA=${SPARSEBENCH_DATA:-/tmp/data}
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
TARGET=${TARGET:-gemma3-270m}
DOCS=${DOCS:-3}
DEVICE=${DEVICE:-cuda}
gguf=$(python3 -c "from sparsebench.models.registry import ALIASES; print(ALIASES['$TARGET'].gguf_name)") || exit 1
if ls /tmp/stash/"$TARGET"/*.part.* > /dev/null 2>&1; then
  mkdir -p "$SPARSEBENCH_CACHE/models/$TARGET"
  cat /tmp/stash/"$TARGET"/*.part.* > "$SPARSEBENCH_CACHE/models/$TARGET/$gguf"
fi
# TOKENIZER=DIR (tokenizer.json or tokenizer.json.gz, tokenizer_config.json): the target's tokenizer files, for a
# transformers whose GGUF tokenizer conversion is wrong for it (the device's 5.17 for gemma3; fetch says so).
tok=()
if [ -n "${TOKENIZER:-}" ]; then
  mkdir -p /tmp/tokenizer-"$TARGET" && cp "$TOKENIZER"/tokenizer_config.json /tmp/tokenizer-"$TARGET"/
  if [ -f "$TOKENIZER/tokenizer.json.gz" ]; then gunzip -c "$TOKENIZER/tokenizer.json.gz" > /tmp/tokenizer-"$TARGET"/tokenizer.json
  else cp "$TOKENIZER/tokenizer.json" /tmp/tokenizer-"$TARGET"/; fi
  tok=(--tokenizer /tmp/tokenizer-"$TARGET")
fi
python3 -m sparsebench.cli fetch "$TARGET" ${tok[@]+"${tok[@]}"} 2>&1 | tail -2

base=(--model "$TARGET" --dataset pg19 --data-source offline --seq-len 2048 --prefill-frac 0.1 --docs "$DOCS"
      --batch-size "$DOCS" --block-size 16 --dense-layers 2 --device "$DEVICE" --dtype fp32 --no-progress
      --out "$out/table1.jsonl")
start=$(date +%s)
timeout "${TABLE_S:-330}" python3 -m sparsebench.cli compare "${base[@]}" --policies dense,specattn:p=0.95 \
  --draft smollm2-135m 2>&1 | tee "$out/table1_specattn.txt" | tail -8
echo "dense + specattn: $(( $(date +%s) - start )) s"
reduction=$(python3 - "$out/table1.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r["policy"] == "specattn"]
read = sum(r["metrics"]["kv_read_sparse"] for r in rows)
full = sum(r["metrics"]["kv_dense_sparse"] for r in rows)
print(f"{1 - read / full:.4f}" if rows and full else "")
PY
)
if [ -n "$reduction" ]; then
  budgets=$(python3 benchmarks/length_budget_table.py --lookup benchmarks/results/length_budget_2048.json \
            --reduction "$reduction")
  echo "SpecAttn KV reduction $reduction -> $budgets" | tee "$out/matched_budgets.txt"
  timeout "${MATCHED_S:-120}" python3 -m sparsebench.cli compare "${base[@]}" --policies "${budgets// /,}" 2>&1 \
    | tee "$out/table1_matched.txt" | tail -3
  python3 -m sparsebench.cli report "$out/table1.jsonl" --format markdown 2>&1 | tee "$out/table1.md"
else
  echo "no SpecAttn rows in $out/table1.jsonl: the matched runs are skipped"
fi
timeout "${SPECDEC_S:-150}" python3 benchmarks/device/crosstok_specdec.py --device "$DEVICE" --targets "$TARGET" \
  --docs "${SPECDEC_DOCS:-3}" --context-tokens 1024 --max-new-tokens 128 --gamma 4 \
  --out "$out/crosstok_specdec.jsonl" 2>&1 | tail -3
