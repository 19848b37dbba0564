#!/usr/bin/env bash
# Session 14, call 8: the one-launch merge (KernelConfig.fused_merge: the last split program of a head merges) against
# the two-launch default with programmatic dependent launch, at 32K / 128K (22% kept, top-k over every layer, read
# flush), two runs.
R=/tmp/s14fused; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
for round in 1 2; do
  d=$R/att_$round; mkdir -p $d
  timeout 90 python3 -m sparsebench.cli bench attention --out $d --contexts 32768,131072 \
    --methods triton-indices,triton-fused --selections topk-layers --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "$round rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md | awk -F'|' '{printf "%s %s %s %s /", $2, $3, $10, $11}' | sed 's/dense flashinfer (tensor cores)/FI/g')"
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
