#!/usr/bin/env bash
# Session 22, call 5: the grid top-p kernel on short rows (1K-8K entries, one or two CTAs of 256 or 512 threads a row)
# against the radix kernel, which takes those lengths. Run in the call as this one command line; kept here so that
# it can be run again.
#   bash benchmarks/device/session22_call5.sh
. benchmarks/device/device_env.sh /tmp/env.txt > /dev/null 2>&1; mkdir -p $OUT/g
timeout 200 python3 benchmarks/device/topp_grid_probe.py --out $OUT/g --sizes 1024,2048,4096,8192 --ctas 1,2 \
  --threads 256,512 2>&1 | grep -vi warn | cut -c1-160 | tee $OUT/g/log.txt | tail -30; cp /tmp/env.txt $OUT/g/
