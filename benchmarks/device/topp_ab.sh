#!/usr/bin/env bash
# The top-p kernel's A/B call, shared by session 11's scripts: GPU tests, the phase timeline, `bench topp` in steady
# state for the old kernel (an untracked copy of cuda_topp.py and nvrtc.py in old_kernel/) and this tree's, each run
# from its own tree (device_env.sh says why) and twice, then a launch-shape sweep. Results under $R, tarred into $OUT.
#   R=/tmp/sNx TESTS="tests/test_topp.py -k cuda" TIMELINE=1 SWEEP="--sizes 1024 --clusters 1" \
#     bash benchmarks/device/topp_ab.sh
# TESTS: pytest arguments after `-m gpu` (none: no tests); TIMELINE=1 runs topp_timeline_probe.py; ROUNDS: `bench
# topp` runs of each kernel (default 2); SWEEP: arguments
# of topp_cuda_shapes_probe.py after `--out` (none: no sweep). The session's calls ran these same steps written out in
# each script (their test logs are gpu_tests_topp.txt in checks/, padded/, f32/ and counts/), refactored here after.
rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
if [ -n "${TESTS:-}" ]; then
  eval "timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu $TESTS -x" > $R/gpu_tests.txt 2>&1
  echo "tests rc $?"; tail -3 $R/gpu_tests.txt
fi
if [ "${TIMELINE:-0}" = 1 ]; then
  timeout 90 python3 benchmarks/device/topp_timeline_probe.py --out $R ${TIMELINE_ARGS:-} > $R/timeline.log 2>&1; echo "timeline rc $?"
  cut -c1-400 $R/timeline.log
fi
# VARIANTS: "name=dir ..." (default "old=old_kernel"): each dir holds a cuda_topp.py and nvrtc.py run as kernel
# "name" from a copy of this tree; "new" is this tree's own kernel.
VARIANTS=${VARIANTS:-old=old_kernel}
names=""
for spec in $VARIANTS; do
  v=${spec%%=*}; d=${spec#*=}; names="$names $v"
  rm -rf /tmp/tree_$v; mkdir -p /tmp/tree_$v; cp -r sparsebench /tmp/tree_$v/
  cp $d/cuda_topp.py $d/nvrtc.py /tmp/tree_$v/sparsebench/kernels/
done
for round in $(seq ${ROUNDS:-2}); do
  for v in $names new; do
    tree=$PWD; [ $v != new ] && tree=/tmp/tree_$v
    (cd $tree && export PYTHONPATH=/tmp/site:$tree
     timeout 60 python3 -m sparsebench.cli bench topp --out $R/topp_${v}_$round --suites main --calls-per-replay 20 \
       --no-flush > $R/topp_${v}_$round.log 2>&1)
    echo "$v $round: $(grep -E "cuda radix" $R/topp_${v}_$round.log | awk '{printf "%s/x%s/p%s ", $3, $6, $12}')"
  done
done
if [ -n "${SWEEP:-}" ]; then
  eval "timeout 240 python3 benchmarks/device/topp_cuda_shapes_probe.py --out $R $SWEEP" > $R/probe.log 2>&1
  echo "probe rc $?"; grep -E "best|no exact|Error|error" $R/probe.log | head -40
fi
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
