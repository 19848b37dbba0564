#!/usr/bin/env bash
# The 128K attention step (22% kept, top-k over every layer at once, L2 flushed by reading) under a few Triton
# kernel configurations, one layer and four layers per replay; then the radix top-k's many-rows test.
#   bash benchmarks/device/attention_128k_configs.sh   (writes $OUT/results.tar.gz)
R=/tmp/cfg; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topk.py -k "many_rows or in_a_graph" \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -2 $R/gpu_tests.txt
for cfg in default splits=49 blocks_per_tile=2,num_stages=4,splits=66 blocks_per_tile=8,num_stages=2 num_warps=8; do
  for layers in 1 4; do
    d=$R/${cfg//[=,]/_}_l$layers; mkdir -p $d
    extra=""; [ "$cfg" != default ] && extra="--triton-config $cfg"
    timeout 45 python3 -m sparsebench.cli bench attention --out $d --contexts 131072 --methods triton-indices \
      --selections topk-layers --repeats 50 --flush read --layers $layers $extra > $d/log.txt 2>&1
    echo "$cfg layers $layers rc $? $(grep -E '^\| 131072 \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md | awk -F'|' '{printf "%s %s %s / ", $3, $10, $11}')"
  done
done
tar czf $OUT/results.tar.gz -C /tmp cfg
