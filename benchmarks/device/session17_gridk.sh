#!/usr/bin/env bash
# Ran the kernel of its call (options reread / fast_sync, since removed: RESULTS.md, seventeenth session).
# Session 17, calls 3-5: the grid CUDA top-p kernel (sparsebench/kernels/cuda_topp_grid.py): its GPU tests, then its
# timing at 8K-128K (2 / 4 CTAs a row of 512 / 1024 threads) against the radix kernel's default and torch sum.
R=/tmp/s17gridk; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 250 python3 -m pytest -q -m gpu tests/test_topp.py -k "cuda_grid" -x > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; grep -v "^$" $R/gpu_tests.txt | tail -25 | cut -c1-300
timeout 280 python3 benchmarks/device/topp_grid_probe.py --out $R --ctas 2,3,4 > $R/grid.log 2>&1
echo "grid rc $?"; grep -vi warn $R/grid.log | cut -c1-230
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
