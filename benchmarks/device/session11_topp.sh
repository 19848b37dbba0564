#!/usr/bin/env bash
# Session 11, first call: the CUDA radix top-p with fewer barriers (F_T from the first pass's histogram, the sum and
# maximum behind one barrier, one-barrier scans, bins cleared by their owners, two cluster barriers a pass instead of
# three, the last cluster barrier split around the mask write). GPU tests of the top-p and top-k kernels (top-k shares
# the scan); `bench topp` steady state, old (HEAD's kernel, an untracked copy in old_kernel/) and new, each from its
# own tree, twice; then the launch-shape sweep of the new kernel.   bash benchmarks/device/session11_topp.sh
R=/tmp/s11t; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py tests/test_topk.py -k "cuda or auto" \
  -x > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -15 $R/gpu_tests.txt
rm -rf /tmp/old; mkdir -p /tmp/old; cp -r sparsebench /tmp/old/
cp old_kernel/cuda_topp.py old_kernel/nvrtc.py /tmp/old/sparsebench/kernels/
for round in 1 2; do
  for v in old new; do
    tree=$PWD; [ $v = old ] && tree=/tmp/old
    (cd $tree && export PYTHONPATH=/tmp/site:$tree
     timeout 60 python3 -m sparsebench.cli bench topp --out $R/topp_${v}_$round --suites main --calls-per-replay 20 \
       --no-flush > $R/topp_${v}_$round.log 2>&1)
    echo "$v $round: $(grep -E "cuda radix" $R/topp_${v}_$round.log | awk '{printf "%s ", $3}')"
  done
done
timeout 240 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R \
  --sizes 4096,8192,16384,32768,65536,131072 --temperatures 1.0 --threads 256,512,1024 --bins 2048 \
  --clusters 1,2,4,8 > $R/probe.log 2>&1; echo "probe rc $?"; grep -E "best|no exact|Error|error" $R/probe.log | head -40
tar czf $OUT/results.tar.gz -C /tmp s11t
