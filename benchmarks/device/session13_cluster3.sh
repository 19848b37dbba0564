#!/usr/bin/env bash
# Session 13, call 10: where 32 four-CTA clusters of 1024 threads do not all run at once (128K entries, 32 rows), the
# CUDA top-p takes three CTAs a row holding 43 entries a thread in shared memory; against main's kernel
# (old_kernel/: `git show main:sparsebench/kernels/{cuda_topp,nvrtc}.py`, main = 3d0a25b) in the same call: GPU
# tests first, `bench topp --suites main --calls-per-replay 20 --no-flush` twice each, then the rows probe at 128K.
R=/tmp/cluster3 TESTS="tests/test_topp.py -k cuda" VARIANTS="main=old_kernel" bash benchmarks/device/topp_ab.sh
mkdir -p $OUT/rows
timeout 60 python3 benchmarks/device/topp_rows_probe.py --n 131072 --rows 16,29,30,31,32 --out $OUT/rows
