#!/usr/bin/env bash
# Ran with results/h200_2026-11-29_s17/sample/kernel.patch applied (its --samples option and the SAMPLE kernel), not merged.
# Session 17, call 1: the sampled bracket in the CUDA top-p (one CTA a row). GPU tests of the new path (rows built so
# that the sample misses on either side included), then the launch probe at 8K-32K with 0 / 1 / 2 / 4 sampled
# entries a thread, registers and shared memory, 512 and 1024 threads (32 rows, temperature 2, p 0.9, as bench
# topp), then bench topp with the default kernel (for the read and sort columns of the same machine start).
R=/tmp/s17sample; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_topp.py -k "sampled or cuda_radix_kernel or window" -x \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -5 $R/gpu_tests.txt
timeout 200 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R --sizes 8192,16384,32768 \
  --temperatures 2.0 --threads 512,1024 --bins 2048 --p 0.9 --smem-keys 0,1 --samples 0,1,2,4 > $R/probe.log 2>&1
echo "probe rc $?"; grep -vi warn $R/probe.log | cut -c1-170
timeout 120 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp.log 2>&1; echo "bench rc $?"; grep -i "cuda radix\|read\|sort" $R/topp.log | head -20
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
