#!/usr/bin/env bash
# Session 22, call 1: every GPU test of tests/test_topp.py (the all_subnormal row kind's first GPU run); the issue's
# `bench topp` command twice with the new read floor (sparsebench.bench.read_floor: the fastest of several reading
# kernels, each one's time reported); the radix kernel's phase timeline and floor kernel at 1K-8K; then the
# radix-shared-addr change (an untracked copy of the working tree with the branch's cuda_topp.py diff, ab_rsa)
# against the working tree at 1K-8K, alternating, two runs each.
#   bash benchmarks/device/session22_call1.sh [NAME]
NAME=${1:-s22c1}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -1 $R/gpu_tests_topp.txt; save
. benchmarks/device/topp_bench_runs.sh
topp_bench_runs 2
grep -h "read " $R/topp_1.log | cut -c1-150
timeout 90 python3 benchmarks/device/topp_timeline_probe.py --out $R/timeline --sizes 1024,2048,4096,8192 \
  > $R/timeline.log 2>&1; echo "timeline rc $?"; save
for run in 1 2; do
  for tree in ab_rsa new; do
    if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
    (cd $D && PYTHONPATH=/tmp/site:$D timeout 60 python3 -m sparsebench.cli bench topp --out $R/ab_${tree}_$run \
      --suites main --sizes 1024,2048,4096,8192 --calls-per-replay 20 --no-flush) > $R/ab_${tree}_$run.log 2>&1
    echo "ab $tree $run rc $?"; grep -i "cuda " $R/ab_${tree}_$run.log | cut -c1-100; save
  done
done
