#!/usr/bin/env bash
# Session 9: copy-only gathers of the kept blocks at 128K (pointer loads vs TMA, scattered vs consecutive blocks), and
# the split kernel's loop with and without its attention math and block-id prefetch
# (gather_bandwidth_probe.py).   bash benchmarks/device/gather_bandwidth.sh
R=/tmp/gbw; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 240 python3 benchmarks/device/gather_bandwidth_probe.py --out $R --splits 33 > $R/probe.log 2>&1
echo "probe rc $?"; cat $R/probe.log | cut -c1-200
tar czf $OUT/results.tar.gz -C /tmp gbw
