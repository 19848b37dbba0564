#!/usr/bin/env bash
# Session 23, call 1: the short-row top-p kernel (sparsebench/kernels/cuda_topp_short.py): its GPU test, then the
# probe against the radix kernel and one read at 1K-8K (block sizes 128-1024; p 0.9-0.99, temperatures 1-4).
# (Ran with that call's probe and kernel, before the launch shapes became a table: call 1 took 256 threads at 1K
# and 512 beyond, 256 bins, 64 candidates pairwise; the probe's --bins and --pairwise came in call 2.)
#   bash benchmarks/device/session23_call1.sh [NAME]
NAME=${1:-s23c1}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_topp.py -k short > $R/gpu_tests_short.txt 2>&1
echo "short tests rc $?"; tail -15 $R/gpu_tests_short.txt | cut -c1-300; save
timeout 240 python3 benchmarks/device/topp_short_probe.py --out $R/probe > $R/probe.log 2>&1
echo "probe rc $?"; grep -v -i warn $R/probe.log | cut -c1-170 | tail -60; save
