#!/usr/bin/env bash
# Session 24, call 2: the top-p skeletons with rows in one CTA, in 2-4 CTAs meeting in global memory, and in
# thread-block clusters of 2-8 (benchmarks/device/topp_skeleton_probe.py), and the top-p GPU tests after the cluster
# helpers moved into nvrtc.CLUSTER_SOURCE (the radix kernel's source is unchanged by the move, checked on the CPU).
#   bash benchmarks/device/session24_call2.sh [NAME]
NAME=${1:-s24c2}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 420 python3 benchmarks/device/topp_skeleton_probe.py --out $R/skeleton > $R/skeleton.log 2>&1
echo "skeleton rc $?"; grep -c rounds $R/skeleton.log; grep -v "wrong 0, timeouts 0" $R/skeleton.log | head -20; save
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; tail -3 $R/gpu_tests.txt | cut -c1-300; save
