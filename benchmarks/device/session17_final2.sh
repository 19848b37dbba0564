#!/usr/bin/env bash
# Session 17, call 8: the grid CUDA top-p with a barrier before its mask write (the p >= 1 path read entries other
# threads loaded without one: call 7's two failures) and the candidates gathered four entries a step: GPU tests,
# the phase timeline at 32K / 128K, and the issue's `bench topp` command.
R=/tmp/s17final2; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_topp.py -k "cuda_grid or cuda_radix_kernel or auto" \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; grep -v "^$" $R/gpu_tests.txt | tail -4 | cut -c1-300
timeout 40 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline --timeline --sizes 32768,131072 \
  --ctas 4 --threads 512,1024 > $R/timeline.log 2>&1
echo "timeline rc $?"; grep -vi warn $R/timeline.log | cut -c1-420
timeout 90 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp.log 2>&1; echo "bench rc $?"; grep -i "cuda " $R/topp.log | cut -c1-120
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
