#!/usr/bin/env bash
# Session 15, last call (a fresh machine start): the attention step at 8K / 32K / 128K three times (top-k over every
# layer, read flush, default configuration), for the run-to-run and start-to-start spread at 128K.
R=${R:-/tmp/s15spread}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
for run in 1 2 3; do
  d=$R/att_run$run; mkdir -p $d
  timeout 120 python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "run $run rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s sel %s step %s x %s / ", $2, $3, $7, $10, $11}' | sed 's/dense flashinfer (tensor cores)/FI/g')"
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
