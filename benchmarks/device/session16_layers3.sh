#!/usr/bin/env bash
# Session 16, call 7 (a third machine start, at the commit that documents the method): `bench attention --layers 30`
# at 32K / 128K, top-k over the 30 layers in one launch, two rounds.
R=${R:-/tmp/s16layers3}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
git log --oneline -1 > $R/commit.txt 2>/dev/null || true
for run in 1 2; do
  d=$R/layers30_run$run; mkdir -p $d
  timeout 170 python3 -m sparsebench.cli bench attention --out $d --contexts 32768,131072 --layers 30 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "run $run rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
      | awk -F'|' '{printf "%s %s %s step %s x %s err %s / ", $2, $3, $4, $10, $11, $16}' \
      | sed 's/dense flashinfer (tensor cores)/FI/g')"
  tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
done
