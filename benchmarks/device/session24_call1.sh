#!/usr/bin/env bash
# Session 24, call 1: the top-p skeletons (how close to one read an exact top-p can come), and an A/B of the
# short-row kernel with its first-pass target taken from the warps' totals (working tree) against the session's
# start (an untracked copy of the tree in ab_base/).
#   bash benchmarks/device/session24_call1.sh [NAME]
NAME=${1:-s24c1}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
. benchmarks/device/short_ab_runs.sh
ROOT=$PWD
timeout 240 python3 benchmarks/device/topp_skeleton_probe.py --out $R/skeleton > $R/skeleton.log 2>&1
echo "skeleton rc $?"; grep -E "^N=|rounds" $R/skeleton.log | cut -c1-110 | head -90; save
short_ab_runs 2 --sizes 1024,2048,4096 --threads 512,1024 --pairwise 64,128 --bins 256 --temperatures 2,1 --p 0.9
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k "short or radix_kernel" \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -3 $R/gpu_tests.txt | cut -c1-300; save
