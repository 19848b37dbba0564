#!/usr/bin/env bash
# Session 14, call 7: with no count histograms in one-CTA rows of up to 16 entries a thread, the launch shape again:
# 256 / 512 / 1024 threads x 1024 / 2048 bins at 1K-16K entries (32 rows, temperature 2, p 0.9, as bench topp).
R=/tmp/s14shapes; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 240 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R --sizes 1024,2048,4096,8192,16384 \
  --temperatures 2.0 --threads 256,512,1024 --bins 1024,2048 --p 0.9 > $R/probe.log 2>&1
echo "probe rc $?"; grep -vi warn $R/probe.log | cut -c1-160
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
