#!/usr/bin/env bash
# The CUDA radix top-p (sparsebench/kernels/cuda_topp.py) on the H200, in one device call:
#   bash benchmarks/device/cuda_topp.sh   (writes under $OUT)
# 1. GPU tests of tests/test_topp.py (Triton and CUDA kernels against the exact reference).
# 2. `bench topp` twice: steady state (20 calls a replay, warm L2; the main suite up to 32K) and the default
#    (one call a replay, L2 flushed; main and SpecAttn suites). Both time Triton, CUDA radix, sort and one read.
# 3. `bench attention` at 8K/32K/128K with the selections now on the CUDA top-k/top-p (write and read flush).
. benchmarks/device/device_env.sh $OUT/env.txt
timeout 200 python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_topp.py > $OUT/gpu_tests.txt 2>&1
rc=$?; echo "tests rc $rc"; tail -4 $OUT/gpu_tests.txt
mkdir -p $OUT/steady $OUT/flushed $OUT/att
timeout 150 python3 -m sparsebench.cli bench topp --out $OUT/steady --suites main \
  --sizes 1024,2048,4096,8192,16384,32768 --calls-per-replay 20 --no-flush > $OUT/steady.log 2>&1
echo "steady rc $?"; grep -E "^\[|cuda radix" $OUT/steady.log
timeout 150 python3 -m sparsebench.cli bench topp --out $OUT/flushed > $OUT/flushed.log 2>&1
echo "flushed rc $?"; grep -E "^\[|cuda radix" $OUT/flushed.log
timeout 120 python3 -m sparsebench.cli bench attention --out $OUT/att --check --contexts 8192,32768,131072 \
  --methods triton-indices --selections topk-fused,topk-layers,topp,quest-fused --repeats 30 --flush read \
  > $OUT/att.log 2>&1
echo "att rc $?"; grep -E "^\| [0-9]" $OUT/att/bench_attention.md | grep -v "dense sdpa" | cut -c1-170
