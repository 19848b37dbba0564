#!/usr/bin/env bash
# Session 12, last device minutes: launch shapes of the merged CUDA top-p at 1K-4K on bench topp's rows
# (softmax(randn x 2), p 0.9), bins 512-2048 and 256-1024 threads: does a smaller histogram win at 4K (9.3x over sort,
# 10x asked)? Session 11's sweep (temperature 1, p 0.95) had 1024 bins 3% faster than 2048 at 4K.
. benchmarks/device/device_env.sh $OUT/env.txt
timeout 170 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $OUT --sizes 1024,2048,4096 \
  --temperatures 2.0 --p 0.9 --threads 256,512,1024 --bins 512,1024,2048 --clusters 1 2>&1 | tee $OUT/probe.log
