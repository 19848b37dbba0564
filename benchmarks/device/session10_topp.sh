#!/usr/bin/env bash
# Session 10: the CUDA radix top-p kernel over thread-block clusters (rows split over 2-8 CTAs that combine their sums,
# histograms and candidates through distributed shared memory): its GPU tests, then the launch-shape sweep with
# clusters (topp_cuda_shapes_probe.py), 32 rows, 1K-128K entries. First run (1024 and 2048 bins, results in topp_clusters_first/) with a first version, not committed, in which every
# thread read the cluster-wide sums from the other CTAs; then (2048 bins) with thread 0 reading them.   bash benchmarks/device/session10_topp.sh
R=/tmp/s10t; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k "cuda_radix" -x \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -15 $R/gpu_tests.txt
timeout 330 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R \
  --sizes 1024,2048,4096,8192,16384,32768,65536,131072 --temperatures 1.0 --threads 256,512,1024 --bins 2048 \
  --clusters 1,2,4,8 > $R/probe.log 2>&1; echo "probe rc $?"; grep -E "best|no exact|Error|error" $R/probe.log | head -40
tar czf $OUT/results.tar.gz -C /tmp s10t
