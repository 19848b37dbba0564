#!/usr/bin/env bash
# Session 9, third call: the two-launch merge with each row's head dim split over 1, 2, 4 or 8 programs
# (KernelConfig.merge_d_parts) at 128K (22% kept, top-k over every layer, L2 flushed by reading)
# and the GPU tests of the Triton backend and the fused step.   bash benchmarks/device/merge_parts.sh
R=/tmp/mp; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py tests/test_fused_attention.py \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -2 $R/gpu_tests.txt
att() {  # att NAME LAYERS [args]
  d=$R/att_$1_l$2; mkdir -p $d; name=$1; layers=$2; shift 2
  timeout 60 python3 -m sparsebench.cli bench attention --out $d --contexts 131072 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read --layers $layers "$@" \
    > $d/log.txt 2>&1
  echo "$name l$layers rc $? $(grep -E '^\| 131072 \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s %s %s / ", $3, $9, $10, $11}')"
}
for p in 1 2 4 8; do att parts$p 1 --triton-config merge_d_parts=$p; done
for p in 1 4; do att parts$p 4 --triton-config merge_d_parts=$p; done
for p in 2 4 8; do att parts${p}_check 1 --triton-config merge_d_parts=$p --contexts 8192,32768,131072 --check; done
tar czf $OUT/results.tar.gz -C /tmp mp
