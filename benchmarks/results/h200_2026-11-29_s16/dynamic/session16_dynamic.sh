#!/usr/bin/env bash
# Session 16, call 2: the CUDA decode kernel with dynamic shares (chunks claimed from a per-head counter) and
# programmatic dependent launch. GPU tests first, then `bench attention` at 32K / 128K (top-k over every layer, read
# flush) with the Triton kernel in the same run, for several CUDA configurations.
R=${R:-/tmp/s16dyn}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 240 python3 -m pytest -q -m gpu tests/test_cuda_decode.py -x > $R/gpu_tests.txt 2>&1
echo "tests rc $? $(tail -1 $R/gpu_tests.txt)"
i=0
for cfg in ${CONFIGS:-"pdl=0" "pdl=1" "chunk_blocks=8" "chunk_blocks=16" "chunk_blocks=8,programs_per_sm=3"}; do
  i=$((i+1)); d=$R/cfg$i; mkdir -p $d; echo "$cfg" > $d/config.txt
  timeout 150 python3 -m sparsebench.cli bench attention --out $d --contexts 32768,131072 \
    --methods triton-indices,cuda-indices --cuda-config "$cfg" --selections topk-layers --repeats 50 --flush read \
    --check > $d/log.txt 2>&1
  echo "cfg $cfg rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton|cuda)' $d/bench_attention.md \
      | awk -F'|' '{printf "%s %s step %s x %s err %s / ", $2, $3, $10, $11, $16}' \
      | sed 's/dense flashinfer (tensor cores)/FI/g')"
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
