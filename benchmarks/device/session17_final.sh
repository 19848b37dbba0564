#!/usr/bin/env bash
# Session 17, call 7: the grid CUDA top-p with acquire/release row barriers (the crossing published with the
# generation), warp-private candidate slots and packed mask stores, the default for rows over 32K entries: GPU tests
# of both CUDA top-p kernels, its phase timeline, the probe at 8K-128K, and the issue's `bench topp` command.
R=/tmp/s17final; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 230 python3 -m pytest -q -m gpu tests/test_topp.py -k "cuda_grid or cuda_radix or auto" > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; grep -v "^$" $R/gpu_tests.txt | tail -6 | cut -c1-300
timeout 60 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline --timeline --sizes 8192,32768,131072 \
  --ctas 4 --threads 1024 > $R/timeline.log 2>&1
echo "timeline rc $?"; grep -vi warn $R/timeline.log | cut -c1-420
timeout 100 python3 benchmarks/device/topp_grid_probe.py --out $R --ctas 4 --threads 512,1024 > $R/grid.log 2>&1
echo "grid rc $?"; grep -vi warn $R/grid.log | cut -c1-200
timeout 100 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp.log 2>&1; echo "bench rc $?"; grep -i "cuda \|N= " $R/topp.log | cut -c1-150
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
