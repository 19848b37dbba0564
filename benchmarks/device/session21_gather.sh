#!/usr/bin/env bash
# Session 21, last call: the grid top-p placing its register-held candidates through one shared-space address (3
# instructions a candidate slot instead of 9): the grid GPU tests, the probe at 16K-32K against an untracked copy of
# main (ab_main), and the issue's `bench topp` command twice. Saves after each step.
R=/tmp/s21g; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp s21g; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k "cuda_grid or auto" \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -1 $R/gpu_tests.txt; save
for tree in new ab_main; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 60 python3 benchmarks/device/topp_grid_probe.py --out $R/grid_$tree \
    --sizes 16384,32768 --ctas 4 --threads 512) > $R/grid_$tree.log 2>&1
  echo "grid $tree rc $?"; grep -vi warn $R/grid_$tree.log | cut -c1-64; save
done
. benchmarks/device/topp_bench_runs.sh
topp_bench_runs 2  # (call 7 ran this loop inline, with a 45 s timeout a run)
