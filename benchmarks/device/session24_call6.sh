#!/usr/bin/env bash
# Session 24, call 6: the short-row kernel's first pass in bins aligned to the patterns (a bin's entries share an
# exponent, so one atomic an entry adds its significand) in the working tree, against the session's start (an
# untracked copy in ab_base/); the GPU tests of the top-p kernels and the new kernel's phase timeline at 1K-4K.
#   bash benchmarks/device/session24_call6.sh [NAME]
NAME=${1:-s24c6}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
. benchmarks/device/short_ab_runs.sh
ROOT=$PWD
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -3 $R/gpu_tests_topp.txt | cut -c1-300; save
short_ab_runs 2 --sizes 1024,2048,4096,8192 --threads 512,1024 --pairwise 64,128 --bins 256 --temperatures 2,1 --p 0.9,0.99
short_timelines
