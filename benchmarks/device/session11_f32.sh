#!/usr/bin/env bash
# Session 11, fourth call: the padded kernel with the row sum in float32, the loads issued before the histogram clear,
# and per-candidate slots again (the warp-ballot slots and warp-max winner of the third call were slower).
# GPU tests (top-p kernel, specattn's top-p on the device); the phase timeline; `bench topp` steady state, old
# (HEAD's kernel, session 10, from old_kernel/) and new, each from its own tree, twice; the one-CTA sweep 1K-4K (threads, bins).
#   bash benchmarks/device/session11_f32.sh
R=/tmp/s11f; rm -rf $R; mkdir -p $R
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
    echo "$v $round: $(grep -E "cuda radix" $R/topp_${v}_$round.log | awk '{printf "%s ", $3}')"
  done
done
timeout 150 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R \
  --sizes 1024,2048,4096 --temperatures 1.0 --threads 256,512,1024 --bins 1024,2048 \
  --clusters 1 > $R/probe.log 2>&1; echo "probe rc $?"; grep -E "best|no exact|Error|error" $R/probe.log | head -20
tar czf $OUT/results.tar.gz -C /tmp s11f
