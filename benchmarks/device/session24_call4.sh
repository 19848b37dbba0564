#!/usr/bin/env bash
# Session 24, call 4: the short-row kernel's first pass binned by exponent and mantissa (no maximum first; F_T from
# the warps' totals) in the working tree, against the session's start (an untracked copy in ab_base/), and the GPU
# tests of the top-p kernels on the working tree.
#   bash benchmarks/device/session24_call4.sh [NAME]
NAME=${1:-s24c4}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
. benchmarks/device/short_ab_runs.sh
ROOT=$PWD
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k "short or radix_kernel or auto" \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -3 $R/gpu_tests.txt | cut -c1-300; save
short_ab_runs 2 --sizes 1024,2048,4096,8192 --threads 512,1024 --pairwise 64,128 --bins 256 --temperatures 2,1 --p 0.9,0.99
