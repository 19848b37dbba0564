#!/usr/bin/env bash
# Session 10, last call: session10_topp_halves.sh's comparison done right. `python3 -m` puts the working directory
# first on sys.path, so that script's "old" run imported this checkout's kernel; here each run starts in its own
# tree. Old (commit 43adea9's cuda_topp.py, an untracked copy in old_kernel/) then new, `bench topp` steady state,
# logs written straight to $OUT.   bash benchmarks/device/session10_topp_ab.sh
. benchmarks/device/device_env.sh $OUT/env.txt
rm -rf /tmp/old; mkdir -p /tmp/old; cp -r sparsebench /tmp/old/
cp old_kernel/cuda_topp_43adea9.py /tmp/old/sparsebench/kernels/cuda_topp.py
for v in old new; do
  tree=$PWD; [ $v = old ] && tree=/tmp/old
  (cd $tree && export PYTHONPATH=/tmp/site:$tree
   python3 -c "import sparsebench.kernels.cuda_topp as m; print('$v kernel from', m.__file__)"
   timeout 60 python3 -m sparsebench.cli bench topp --out $OUT/topp_$v --suites main --calls-per-replay 20 \
     --no-flush > $OUT/topp_$v.log 2>&1)
  grep -E "cuda radix" $OUT/topp_$v.log | awk '{printf "%s ", $3}'; echo
done
