#!/usr/bin/env bash
# Session 18: GPU tests of the grid CUDA top-p, its phase timeline and probe timings for the working tree and for
# untracked copies of earlier trees (A/B in one call), and the issue's `bench topp` command.
#   bash benchmarks/device/session18_ab.sh NAME "new ab_v1 ..." [SIZES [CTAS [THREADS]]]   (new = the working tree)
# TESTS: the pytest -k expression (default: the grid kernel and auto); BENCH_RUNS: runs of `bench topp` (default 1).
# The timeline runs at TL_SIZES (default: SIZES from 16K up), TL_CTAS (default 4) and TL_THREADS (default 512,1024);
# the probe at SIZES, CTAS and THREADS.
NAME=$1; TREES=$2; SIZES=${3:-16384,32768,65536,131072}; CTAS=${4:-4}; THREADS=${5:-512,1024}
R=/tmp/$NAME; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 300 python3 -m pytest -q -m gpu tests/test_topp.py -k "${TESTS:-cuda_grid or auto}" > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; grep -v "^$" $R/gpu_tests.txt | tail -6 | cut -c1-300
for tree in $TREES; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 120 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline_$tree \
    --timeline --sizes ${TL_SIZES:-$(echo $SIZES | tr , '\n' | awk '$1 >= 16384' | paste -sd,)} --ctas ${TL_CTAS:-4} \
    --threads ${TL_THREADS:-512,1024}) > $R/timeline_$tree.log 2>&1
  echo "timeline $tree rc $?"; grep -vi warn $R/timeline_$tree.log | cut -c1-420
done
for tree in $TREES; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 240 python3 benchmarks/device/topp_grid_probe.py --out $R/grid_$tree \
    --sizes $SIZES --ctas $CTAS --threads $THREADS) > $R/grid_$tree.log 2>&1
  echo "grid $tree rc $?"; grep -vi warn $R/grid_$tree.log | cut -c1-120
done
for run in $(seq 1 ${BENCH_RUNS:-1}); do
  timeout 120 python3 -m sparsebench.cli bench topp --out $R/topp_$run --suites main --calls-per-replay 20 --no-flush \
    > $R/topp_$run.log 2>&1; echo "bench $run rc $?"; grep -i "cuda \|N= " $R/topp_$run.log | cut -c1-110
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
