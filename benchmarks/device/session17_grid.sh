#!/usr/bin/env bash
# Ran the probe before the grid kernel existed: its passes were then timed by default (now --parts).
# Session 17, call 2: the grid-wide top-p's two data passes (benchmarks/device/topp_grid_probe.py) at 8K-128K, 2-16
# CTAs a row of 256 / 512 threads, against torch sum; then the one-CTA launch at 16K with 1024 threads and the
# entries in shared memory (call 1's fastest 16K shape) against the default, twice each.
R=/tmp/s17grid; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 300 python3 benchmarks/device/topp_grid_probe.py --out $R > $R/grid.log 2>&1
echo "grid rc $?"; grep -vi warn $R/grid.log | cut -c1-175
timeout 120 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R/shapes --sizes 16384,16384 \
  --temperatures 2.0 --threads 512,1024 --bins 2048 --p 0.9 --smem-keys 0,1 > $R/shapes.log 2>&1
echo "shapes rc $?"; grep -vi warn $R/shapes.log | cut -c1-170
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
