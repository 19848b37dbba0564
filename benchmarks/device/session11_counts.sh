#!/usr/bin/env bash
# Session 11, fifth call: rows of up to 8 entries a thread (one CTA) without per-bin counts (the pairwise gather
# counts the bracket), and up to 128 pairwise candidates in one CTA (64 in clusters). GPU tests (top-p kernel,
# specattn's top-p on the device); the phase timeline; `bench topp` steady state, old (the fourth call's kernel,
# commit bd03773, an untracked copy in old_kernel/) and new, each from its own tree, twice.
# Measured slower and reverted: the variant is not in the code; the kernel that ran is commit bd03773 plus
# benchmarks/results/h200_2026-11-29_s11/counts/kernel_variant.patch (the same code, its comments left out). To rerun
# it, apply that patch and copy bd03773's cuda_topp.py / nvrtc.py into old_kernel/.
#   bash benchmarks/device/session11_counts.sh
R=/tmp/s11n; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py tests/test_specattn.py \
  -k "cuda or auto or gpu" -x > $R/gpu_tests_topp.txt 2>&1; echo "topp tests rc $?"; tail -3 $R/gpu_tests_topp.txt
timeout 90 python3 benchmarks/device/topp_timeline_probe.py --out $R > $R/timeline.log 2>&1; echo "timeline rc $?"
cut -c1-400 $R/timeline.log
rm -rf /tmp/old; mkdir -p /tmp/old; cp -r sparsebench /tmp/old/
cp old_kernel/cuda_topp.py old_kernel/nvrtc.py /tmp/old/sparsebench/kernels/
for round in 1 2; do
  for v in old new; do
    tree=$PWD; [ $v = old ] && tree=/tmp/old
    (cd $tree && export PYTHONPATH=/tmp/site:$tree
     timeout 60 python3 -m sparsebench.cli bench topp --out $R/topp_${v}_$round --suites main --calls-per-replay 20 \
       --no-flush > $R/topp_${v}_$round.log 2>&1)
    echo "$v $round: $(grep -E "cuda radix" $R/topp_${v}_$round.log | awk '{printf "%s/x%s/p%s ", $3, $6, $12}')"
  done
done
tar czf $OUT/results.tar.gz -C /tmp s11n
