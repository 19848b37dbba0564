#!/usr/bin/env bash
# Sourced by device scripts after device_env.sh: `attention_rounds DIR ROUNDS SELECTIONS` runs `bench attention` at
# 8K / 32K / 128K ROUNDS times (triton-indices, read flush, --check, one layer) into DIR/att_run1.., and prints for
# each round the dense FlashInfer (tensor cores) and sparse rows: context, method, selection, selection launch µs,
# step µs, x dense.
attention_rounds() {
  local dir=$1 rounds=$2 selections=$3
  for run in $(seq 1 "$rounds"); do
    local d=$dir/att_run$run; mkdir -p "$d"
    timeout 120 python3 -m sparsebench.cli bench attention --out "$d" --contexts 8192,32768,131072 \
      --methods triton-indices --selections "$selections" --repeats 50 --flush read --check > "$d/log.txt" 2>&1
    echo "run $run rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' "$d/bench_attention.md" \
      | awk -F'|' '{printf "%s %s %s sel %s step %s x %s / ", $2, $3, $4, $7, $10, $11}' \
      | sed 's/dense flashinfer (tensor cores)/FI/g')"
  done
}
