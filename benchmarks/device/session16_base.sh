#!/usr/bin/env bash
# Session 16, call 1: the NVRTC cp.async kernel (cuda-indices) against the Triton kernel (triton-indices) at today's
# main, 32K and 128K, top-k over every layer, read flush, two rounds: is the CUDA kernel a fair base for a
# dynamically scheduled variant?
R=${R:-/tmp/s16base}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
for run in 1 2; do
  d=$R/run$run; mkdir -p $d
  timeout 200 python3 -m sparsebench.cli bench attention --out $d --contexts 32768,131072 \
    --methods triton-indices,cuda-indices --selections topk-layers --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "run $run rc $?"; grep -E '^\| [0-9]+ \|' $d/bench_attention.md
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
