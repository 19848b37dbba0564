#!/usr/bin/env bash
# Session 16, call 4: the attention step inside a decode step. `bench attention --layers 30` times 30 distinct layers
# (each its own 8K / 32K / 128K cache, query and scores) back to back in one CUDA-graph replay and reports the time per
# layer, dense FlashInfer the same way; topk-layers is one top-k launch for the 30 layers, as in the single-layer rows.
# Two rounds, then one single-layer round on the same machine start for comparison.
R=${R:-/tmp/s16layers}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
for run in 1 2; do
  d=$R/layers30_run$run; mkdir -p $d
  timeout 200 python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 --layers 30 \
    --methods triton-indices --selections topk-layers,topk-fused --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "layers30 run $run rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
      | awk -F'|' '{printf "%s %s %s step %s x %s / ", $2, $3, $4, $10, $11}' | sed 's/dense flashinfer (tensor cores)/FI/g')"
done
. benchmarks/device/attention_rounds.sh
attention_rounds $R 1 topk-layers
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
