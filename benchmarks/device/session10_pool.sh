#!/usr/bin/env bash
# Session 10, third call: the split kernel's tail pool (KernelConfig.tail_pool percent of each list, claimed in
# chunks of pool_chunk blocks) against the default, interleaved, at 128K (22% kept, top-k over every layer, L2
# flushed by reading); a --check run at 8K-128K; the GPU tests of the kernels.   bash benchmarks/device/session10_pool.sh
# Ran at commit ff578a3; KernelConfig.tail_pool was removed after this call (measured slower; benchmarks/RESULTS.md, tenth session).
R=/tmp/s10p; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py tests/test_fused_attention.py \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -3 $R/gpu_tests.txt
att() {  # att NAME [args]
  d=$R/att_$1; mkdir -p $d; name=$1; shift
  timeout 60 python3 -m sparsebench.cli bench attention --out $d --contexts 131072 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read "$@" > $d/log.txt 2>&1
  echo "$name rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s %s %s %s / ", $2, $3, $9, $10, $11}')"
}
for r in 1 2; do
  att default_r$r
  for pc in 8,4 12,4 12,8 16,4 24,8; do
    p=${pc%,*}; c=${pc#*,}; att pool${p}_c${c}_r$r --triton-config tail_pool=$p,pool_chunk=$c
  done
done
att pool12_check --triton-config tail_pool=12,pool_chunk=4 --contexts 8192,32768,131072 --check
tar czf $OUT/results.tar.gz -C /tmp s10p
