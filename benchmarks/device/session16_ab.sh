#!/usr/bin/env bash
# Session 16, call 3: dynamic shares against the CUDA kernel's static shares on a level field. Tree `main` (the
# checkout: static shares, no PDL, the build without spills) and tree `alt/` (branch cuda-dynamic-shares, untracked
# copy of its package) in the same call, each run from its own directory, Triton in every run as the reference.
R=${R:-/tmp/s16ab}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
ROOT=$PWD
bench() {  # bench TREE NAME CONFIG
  local d=$R/$2; mkdir -p $d; echo "$3" > $d/config.txt
  (cd $1 && PYTHONPATH=/tmp/site:$PWD timeout 150 python3 -m sparsebench.cli bench attention --out $d \
    --contexts 32768,131072 --methods triton-indices,cuda-indices ${3:+--cuda-config "$3"} --selections topk-layers \
    --repeats 50 --flush read --check > $d/log.txt 2>&1)
  echo "$2 [$3] rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton|cuda)' $d/bench_attention.md \
      | awk -F'|' '{printf "%s %s step %s x %s / ", $2, $3, $10, $11}' | sed 's/dense flashinfer (tensor cores)/FI/g')"
}
for round in 1 2; do
  bench $ROOT static$round ""
  bench $ROOT/alt dyn8_$round "chunk_blocks=8,pdl=0"
  bench $ROOT/alt dyn16t4_$round "tile_blocks=4,chunk_blocks=16,programs_per_sm=2,pdl=0"
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
