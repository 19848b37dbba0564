#!/usr/bin/env bash
# Ran the kernel of its call (options reread / fast_sync, since removed: RESULTS.md, seventeenth session).
# Session 17, call 6: the grid CUDA top-p with cooperative-groups-style row barriers (FAST_SYNC: thread 0 fences, one
# atomic a CTA, no sleep) against the first barriers (legacy) and the re-reading variant; its GPU tests; the phase
# timeline at 8K / 32K / 128K.
R=/tmp/s17gridopt; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -m gpu tests/test_topp.py -k "cuda_grid" -x > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; grep -v "^$" $R/gpu_tests.txt | tail -4 | cut -c1-300
timeout 120 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline --timeline --sizes 8192,32768,131072 \
  --ctas 4 --threads 512,1024 > $R/timeline.log 2>&1
echo "timeline rc $?"; grep -vi warn $R/timeline.log | cut -c1-400
timeout 240 python3 benchmarks/device/topp_grid_probe.py --out $R --ctas 3,4 --threads 1024 > $R/grid.log 2>&1
echo "grid rc $?"; grep -vi warn $R/grid.log | cut -c1-250
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
