#!/usr/bin/env bash
# Session 13, call 4: the CUDA top-p's entries in shared memory instead of registers (SMEM_KEYS; no spills at 32
# entries a thread, and the first-pass window at 1024 threads too), swept against registers at 8K-128K entries over
# 1-8 CTAs a row and 512 / 1024 threads, temperature 2 and p 0.9 (bench topp's rows). Each variant is checked against
# the exact reference first (bad rows), then timed as bench topp's steady state.
R=/tmp/smemkeys; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 500 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R --sizes 8192,16384,32768,65536,131072 \
  --temperatures 2.0 --threads 512,1024 --bins 2048 --clusters 1,2,4,8 --smem-keys 0,1 --p 0.9 > $R/probe.log 2>&1
echo "probe rc $?"; grep -E "best|no exact|Error|error" $R/probe.log | head -20
cut -c1-100 $R/probe.log | grep "^N="
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
