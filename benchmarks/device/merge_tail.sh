#!/usr/bin/env bash
# Session 9: the split kernel alone against split + merge at 32K and 128K (merge_tail_probe.py), and the top-p launch
# floor probe again through save_probe.   bash benchmarks/device/merge_tail.sh
R=/tmp/mt; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 120 python3 benchmarks/device/merge_tail_probe.py --out $R > $R/probe.log 2>&1; echo "probe rc $?"; cat $R/probe.log
timeout 90 python3 benchmarks/device/topp_floor_probe.py --out $R/floor --sizes 1024,32768 > $R/floor.log 2>&1
echo "floor rc $?"; cat $R/floor.log; head -c 300 $R/floor/topp_floor.json
tar czf $OUT/results.tar.gz -C /tmp mt
