#!/usr/bin/env bash
# Session 15, call 4: the top-k kernel with a specialised first pass and no existence tests for full rows, against
# the first rewrite (old_kernel/cuda_topk_v1.py = `git show eaf443f:sparsebench/kernels/cuda_topk.py`, untracked)
# and the session's start (old_kernel/cuda_topk_old.py, d35c2e7), 240 rows; GPU tests; Nsight Compute's per-
# instruction view of the default at 8192; `bench attention` twice.
R=/tmp/s15topk2; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_topk.py -k "cuda" -p no:cacheprovider > $R/gpu_tests.txt 2>&1
echo tests rc $?; tail -3 $R/gpu_tests.txt
timeout 200 python3 benchmarks/device/topk_rows_probe.py --out $R --other v1=old_kernel/cuda_topk_v1.py \
  --other old=old_kernel/cuda_topk_old.py --variants new:default,new:1024x8,v1:default,v1:1024x8,old:default \
  > $R/probe.log 2>&1
echo probe rc $?; cat $R/probe.log
timeout 120 /usr/local/cuda/bin/ncu --kernel-name sb_topk_lists --launch-skip 2 --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section SourceCounters --page source --print-source sass \
  python3 benchmarks/device/topk_rows_probe.py --ncu > $R/ncu_sass.txt 2>&1; echo ncu rc $?
timeout 120 /usr/local/cuda/bin/ncu --kernel-name sb_topk_lists --launch-skip 2 --launch-count 1 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  python3 benchmarks/device/topk_rows_probe.py --ncu > $R/ncu.txt 2>&1; echo ncu rc $?
grep -E "Duration|Elapsed Cycles|SM Active|Issued Warp|Registers|Achieved Occ" $R/ncu.txt
. benchmarks/device/attention_rounds.sh
attention_rounds $R 2 topk-layers  # folders att_run1, att_run2 (named att_1, att_2 when these calls ran)
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
