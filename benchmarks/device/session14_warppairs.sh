#!/usr/bin/env bash
# Session 14, call 6 (branch topp-warppairs): one-CTA rows with up to 64 pairwise candidates find t* in every warp
# at once (WARP_PAIRS: no shared atomic, no block barrier), against main's kernel (old_kernel/ = `git show
# main:sparsebench/kernels/{cuda_topp,nvrtc}.py`, main = 4e042bc) in the same call: GPU tests, the phase timeline,
# `bench topp --suites main --calls-per-replay 20 --no-flush` three times each.
# WARP_PAIRS measured slower and lives on branch topp-warppairs (d6ef1d6), where this script ran.
R=/tmp/s14wp; rm -rf $R; mkdir -p $R
TESTS="tests/test_topp.py -k 'cuda or auto or gpu'" TIMELINE=1 TIMELINE_ARGS="--sizes 1024,2048,4096,8192,16384" \
  VARIANTS="main=old_kernel" R=$R/ab bash benchmarks/device/topp_ab.sh 2>&1 | grep -v "^tar"
for v in main new; do
  tree=$PWD; [ $v != new ] && tree=/tmp/tree_$v
  (cd $tree && export PYTHONPATH=/tmp/site:$tree
   timeout 60 python3 -m sparsebench.cli bench topp --out $R/topp_${v}_3 --suites main --calls-per-replay 20 \
     --no-flush > $R/topp_${v}_3.log 2>&1)
  echo "$v 3: $(grep -E "cuda radix" $R/topp_${v}_3.log | awk '{printf "%s/x%s/p%s ", $3, $6, $12}')"
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
