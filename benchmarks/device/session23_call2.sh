#!/usr/bin/env bash
# Session 23, call 2: the short-row kernel's GPU test (bins and pairwise limits now parameters), then the probe:
# its phase timeline at p 0.9 / temperature 2, and a sweep of block size, bins (128-512) and pairwise limit.
# (Ran with that call's probe and kernel, before the launch shapes became a table: call 1 took 256 threads at 1K
# and 512 beyond, 256 bins, 64 candidates pairwise; the probe's --bins and --pairwise came in call 2.)
#   bash benchmarks/device/session23_call2.sh [NAME]
NAME=${1:-s23c2}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_topp.py -k short > $R/gpu_tests_short.txt 2>&1
echo "short tests rc $?"; tail -5 $R/gpu_tests_short.txt | cut -c1-300; save
timeout 420 python3 benchmarks/device/topp_short_probe.py --out $R/probe --timeline --p 0.9 --temperatures 2,1 \
  --threads 256,512,1024 --pairwise 64,128,256 --bins 128,256,512 > $R/probe.log 2>&1
echo "probe rc $?"; grep -v -i warn $R/probe.log | cut -c1-200 | tail -150; save
