#!/usr/bin/env bash
# Session 16, call 5 (another machine start): `bench attention --layers 30` at 32K / 128K, two rounds by default
# around one round with programmatic dependent launch off in the Triton kernels (--triton-config pdl=0), to see whether
# the in-step ratio rests on consecutive layers' launches overlapping.
R=${R:-/tmp/s16layers2}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
layers_run() {  # layers_run NAME [TRITON_CONFIG]
  local d=$R/$1 cfg=${2:-}; mkdir -p $d
  timeout 200 python3 -m sparsebench.cli bench attention --out $d --contexts 32768,131072 --layers 30 \
    --methods triton-indices --selections topk-layers ${cfg:+--triton-config "$cfg"} --repeats 50 --flush read --check \
    > $d/log.txt 2>&1
  echo "$1 [$cfg] rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
      | awk -F'|' '{printf "%s %s %s step %s x %s err %s / ", $2, $3, $4, $10, $11, $16}' \
      | sed 's/dense flashinfer (tensor cores)/FI/g')"
}
layers_run layers30_run1
layers_run layers30_nopdl pdl=0
layers_run layers30_run2
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
