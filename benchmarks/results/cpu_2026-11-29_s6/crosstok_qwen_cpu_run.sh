#!/usr/bin/env bash
# Wait for dense's rows, then run only StreamingLLM (Quest and SpecAttn have GPU rows; the CPU is too slow for all).
while [ "$(grep -c '"policy": "dense"' table1.jsonl 2>/dev/null || echo 0)" -lt 2 ]; do sleep 20; done
pkill -f "run.sh"; pkill -f "sparsebench.cli compare"; sleep 3
echo "dense done $(date)" >> times.txt
export SPARSEBENCH_DATA=/work/shared/data
start=$(date +%s)
python -m sparsebench.cli compare --model qwen2.5-coder-0.5b --dataset pg19 --data-source offline --seq-len 2048 \
  --prefill-frac 0.1 --docs 2 --block-size 16 --dense-layers 2 --device cpu --dtype fp32 --backend torch \
  --out table1.jsonl --no-progress --batch-size 2 --policies dense,streamingllm:window_frac=0.2862 > log_streaming.txt 2>&1
echo "streaming rc=$? $(( $(date +%s) - start )) s" >> times.txt
python -m sparsebench.cli report table1.jsonl --format markdown > table1.md 2>&1
