#!/usr/bin/env bash
# Session 11, first call: the CUDA radix top-p with fewer barriers (F_T from the first pass's histogram, the sum and
# maximum behind one barrier, one-barrier scans, bins cleared by their owners, two cluster barriers a pass instead of
# three, the last cluster barrier split around the mask write). GPU tests of the top-p and top-k kernels (top-k shares
# the scan); `bench topp` steady state, old (HEAD's kernel, an untracked copy in old_kernel/) and new, each from its
# own tree, twice; then the launch-shape sweep of the new kernel.   bash benchmarks/device/session11_topp.sh
R=/tmp/s11t TESTS="tests/test_topp.py tests/test_topk.py -k \"cuda or auto\"" \
  TIMELINE=0 \
  SWEEP="--sizes 4096,8192,16384,32768,65536,131072 --temperatures 1.0 --threads 256,512,1024 --bins 2048 --clusters 1,2,4,8" \
  bash benchmarks/device/topp_ab.sh
