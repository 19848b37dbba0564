#!/usr/bin/env bash
# Session 24, call 3: the top-p skeletons at 16K-128K with the mask written as bytes and as bits
# (benchmarks/device/topp_skeleton_probe.py --writes bytes,bits).
#   bash benchmarks/device/session24_call3.sh [NAME]
NAME=${1:-s24c3}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 400 python3 benchmarks/device/topp_skeleton_probe.py --out $R/skeleton --sizes 16384,32768,65536,131072 \
  --ctas 1,2,4,8 --writes bytes,bits > $R/skeleton.log 2>&1
echo "skeleton rc $?"; grep -c rounds $R/skeleton.log; grep -v "wrong 0, timeouts 0" $R/skeleton.log | head -20; save
