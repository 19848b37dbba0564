#!/usr/bin/env bash
# Session 18, call 1: the grid CUDA top-p with barrier A as an all-gather of per-CTA histograms (every CTA scans the
# row's level 1 itself) and the candidates gathered by per-thread bit masks and one block scan into per-CTA lists.
# GPU tests, phase timelines and probe timings of the new kernel and of the seventeenth session's (ab_old/, an
# untracked copy of HEAD's package), and the issue's `bench topp` command.
R=/tmp/s18a; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
SIZES=16384,32768,65536,131072
timeout 240 python3 -m pytest -q -m gpu tests/test_topp.py -k "cuda_grid or auto" > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; grep -v "^$" $R/gpu_tests.txt | tail -6 | cut -c1-300
for tree in new old; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/ab_old; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 60 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline_$tree \
    --timeline --sizes $SIZES --ctas 4 --threads 512,1024) > $R/timeline_$tree.log 2>&1
  echo "timeline $tree rc $?"; grep -vi warn $R/timeline_$tree.log | cut -c1-420
done
for tree in new old; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/ab_old; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 120 python3 benchmarks/device/topp_grid_probe.py --out $R/grid_$tree \
    --sizes $SIZES --ctas 4 --threads 512,1024) > $R/grid_$tree.log 2>&1
  echo "grid $tree rc $?"; grep -vi warn $R/grid_$tree.log | cut -c1-150
done
timeout 120 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp.log 2>&1; echo "bench rc $?"; grep -i "cuda \|N= " $R/topp.log | cut -c1-150
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
