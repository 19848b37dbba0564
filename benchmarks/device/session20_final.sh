#!/usr/bin/env bash
# Session 20, the last call: every GPU test of tests/test_topp.py on the merged grid kernel (candidates gathered from
# the row in registers where it fits, warp-reserved list slots), the issue's `bench topp` command three times (main
# suite) and once on SpecAttn's shapes, and the kernel's phase timeline at 16K-32K.
R=/tmp/s20final; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp s20final; }  # after each step: a call cut short keeps what ran
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -1 $R/gpu_tests_topp.txt; save
for run in 1 2 3; do
  timeout 60 python3 -m sparsebench.cli bench topp --out $R/topp_$run --suites main --calls-per-replay 20 --no-flush \
    > $R/topp_$run.log 2>&1; echo "bench $run rc $?"; grep -i "cuda " $R/topp_$run.log | cut -c1-100; save
done
timeout 40 python3 -m sparsebench.cli bench topp --out $R/topp_specattn --suites specattn --calls-per-replay 20 \
  --no-flush > $R/topp_specattn.log 2>&1; echo "bench rc $?"; grep -ci "bad rows 0\|ok" $R/topp_specattn.log; save
timeout 40 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline --timeline --sizes 16384,32768 --ctas 4 \
  --threads 512 > $R/timeline.log 2>&1; echo "timeline rc $?"
save
