#!/usr/bin/env bash
# Session 10: the CUDA top-p kernel with 32-bit halves for the histogram's mass (native shared-memory adds instead of
# 64-bit compare-and-swap loops) and each entry's fixed-point mass kept in registers (rows of up to 16 entries a
# thread), against the kernel of commit 43adea9 (an untracked copy in old_kernel/), `bench topp` steady state, both in
# one call; GPU tests of the CUDA top-p first.   bash benchmarks/device/session10_topp_halves.sh
# Flawed comparison: `python3 -m` puts the working directory first on sys.path, so the "old" run imported this
# checkout's (new) kernel too; all three runs timed the new kernel. session10_topp_ab.sh redoes the comparison.
R=/tmp/s10h; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
rm -rf /tmp/old; mkdir -p /tmp/old; cp -r sparsebench /tmp/old/
cp old_kernel/cuda_topp_43adea9.py /tmp/old/sparsebench/kernels/cuda_topp.py
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k "cuda_radix" -x \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -3 $R/gpu_tests.txt
for v in new old new_again; do
  path=/tmp/site:$PWD; [ $v = old ] && path=/tmp/site:/tmp/old
  PYTHONPATH=$path timeout 90 python3 -m sparsebench.cli bench topp --out $R/topp_$v --suites main \
    --calls-per-replay 20 --no-flush > $R/topp_$v.log 2>&1; echo "$v rc $?"
  grep -E "cuda radix" $R/topp_$v.log | awk '{printf "%s ", $3}'; echo
done
tar czf $OUT/results.tar.gz -C /tmp s10h
