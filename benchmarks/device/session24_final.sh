#!/usr/bin/env bash
# Session 24, call 5: the final tree. Every GPU test of tests/test_topp.py, the issue's `bench topp --suites main
# --calls-per-replay 20 --no-flush` (twice), and the short-row kernel's phase timeline at 1K-4K (default shapes).
#   bash benchmarks/device/session24_final.sh [NAME]
NAME=${1:-s24c5}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
. benchmarks/device/topp_bench_runs.sh
. benchmarks/device/short_ab_runs.sh
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -3 $R/gpu_tests_topp.txt | cut -c1-300; save
topp_bench_runs 2
short_timelines
