#!/usr/bin/env bash
# Session 12's last device minutes, branch topp-postcount: one-CTA rows without per-bin counts (two shared atomics an
# entry; the crossing bin counted from the registers after each pass) against main's kernel (old_kernel/, copied as
# in session12_window.sh). Lean, for a short budget: logs straight under $OUT (what ran comes back if cut short).
#   mkdir -p old_kernel && git show main:sparsebench/kernels/cuda_topp.py > old_kernel/cuda_topp.py
#   git show main:sparsebench/kernels/nvrtc.py > old_kernel/nvrtc.py; bash benchmarks/device/session12_postcount.sh
. benchmarks/device/device_env.sh $OUT/env.txt
rm -rf /tmp/tree_old; mkdir -p /tmp/tree_old; cp -r sparsebench /tmp/tree_old/
cp old_kernel/cuda_topp.py old_kernel/nvrtc.py /tmp/tree_old/sparsebench/kernels/
bench() {  # $1: old or new, $2: round
  local tree=$PWD; [ $1 = old ] && tree=/tmp/tree_old
  (cd $tree && export PYTHONPATH=/tmp/site:$tree
   timeout 40 python3 -m sparsebench.cli bench topp --out /tmp/b_$1_$2 --suites main --calls-per-replay 20 \
     --no-flush > $OUT/topp_$1_$2.log 2>&1)
  echo "$1 $2: $(grep -E "cuda radix" $OUT/topp_$1_$2.log | awk '{printf "%s/x%s/p%s/bad%s ", $3, $6, $12, $15}')"
}
bench new 1; bench old 1
timeout 40 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -x \
  -k "test_cuda_radix_kernel and (1000 or 4097 or 8192 or 32768) and not clusters" > $OUT/gpu_tests.txt 2>&1
echo "tests rc $?: $(tail -1 $OUT/gpu_tests.txt)"
bench new 2; bench old 2
