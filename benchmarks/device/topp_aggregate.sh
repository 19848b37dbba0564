#!/usr/bin/env bash
# Session 9, fifth call: the CUDA radix top-p with warp-aggregated histogram adds against one atomic an entry
# (topp_cuda_shapes_probe.py --aggregate 0,1).   bash benchmarks/device/topp_aggregate.sh
R=/tmp/tag; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 300 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R --threads 256,512,1024 --bins 1024,2048 \
  --aggregate 0,1 > $R/probe.log 2>&1; echo "probe rc $?"
grep -E "best|bad rows [1-9]" $R/probe.log; grep -E "N=  1024 T=1.0|N= 32768 T=1.0" $R/probe.log
tar czf $OUT/results.tar.gz -C /tmp tag
