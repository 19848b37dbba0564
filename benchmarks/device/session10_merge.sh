#!/usr/bin/env bash
# Session 10, first call: the merge's loads issued together (now the default) and the merge waiting on per-head
# counters (KernelConfig.head_counters), against the ninth session's kernel (e28dd56's triton_decode.py, an untracked copy in
# old_kernel/), interleaved, at 128K (22% kept, top-k over every layer, L2 flushed by reading); their GPU tests; the
# merge-tail probe; the split kernel's timeline.   bash benchmarks/device/session10_merge.sh
# Flawed comparison: `python3 -m` puts the working directory first on sys.path, so the "old" runs imported this
# checkout's triton_decode.py too (old and new timed the same kernel). Ran at commit 0b9cb4b; KernelConfig.head_counters and merge_tail_probe.py's head-counter row were removed after this call (both measured slower; benchmarks/RESULTS.md, tenth session).
R=/tmp/s10a; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
rm -rf /tmp/old; mkdir -p /tmp/old; cp -r sparsebench /tmp/old/
cp old_kernel/triton_decode_e28dd56.py /tmp/old/sparsebench/kernels/triton_decode.py
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py tests/test_fused_attention.py \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -3 $R/gpu_tests.txt
att() {  # att NAME PYTHONPATH [args]
  d=$R/att_$1; mkdir -p $d; name=$1; path=$2; shift 2
  PYTHONPATH=$path timeout 60 python3 -m sparsebench.cli bench attention --out $d --contexts 131072 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read "$@" > $d/log.txt 2>&1
  echo "$name rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s %s %s %s / ", $2, $3, $9, $10, $11}')"
}
NEW=/tmp/site:$PWD; OLD=/tmp/site:/tmp/old
for r in 1 2; do
  att old_r$r $OLD; att new_r$r $NEW; att head_r$r $NEW --triton-config head_counters=1
  att head_d4_r$r $NEW --triton-config head_counters=1,merge_d_parts=4
done
att head_check $NEW --triton-config head_counters=1 --contexts 8192,32768,131072 --check
cd benchmarks/device
PYTHONPATH=$NEW timeout 90 python3 merge_tail_probe.py --out $R/tail > $R/tail.log 2>&1; echo "tail rc $?"; cat $R/tail.log
PYTHONPATH=$NEW timeout 90 python3 split_timeline_probe.py --out $R/timeline > $R/timeline.log 2>&1
echo "timeline rc $?"; cat $R/timeline.log
cd ../..; tar czf $OUT/results.tar.gz -C /tmp s10a
