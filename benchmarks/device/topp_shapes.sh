#!/usr/bin/env bash
# Session 9, fourth call: the CUDA radix top-p kernel's threads and bins swept (topp_cuda_shapes_probe.py), after
# the GPU tests of the NVRTC kernels (top-p, top-k, decode).   bash benchmarks/device/topp_shapes.sh
R=/tmp/tsh; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py tests/test_topk.py \
  tests/test_cuda_decode.py > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -2 $R/gpu_tests.txt
timeout 300 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R > $R/probe.log 2>&1; echo "probe rc $?"
grep -E "best|bad rows [1-9]" $R/probe.log
tar czf $OUT/results.tar.gz -C /tmp tsh
