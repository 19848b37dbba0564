#!/usr/bin/env bash
# Session 15, final checks with the rewritten top-k kernel (one device call; R=/tmp/s15final):
# 1. GPU tests of everything that runs the top-k kernel (topk, the Triton backend, the fused attention, the fast
#    engine's CUDA-graph decode with Quest and SpecAttn).
# 2. The kernel alone for 8 rows (Quest's per-layer launch) against the session's start (old_kernel/cuda_topk_old.py).
# 3. `bench attention` at 8K / 32K / 128K three times (top-k over every layer, and a launch per layer), read flush.
R=${R:-/tmp/s15final}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topk.py tests/test_triton_backend.py \
  tests/test_fused_attention.py > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -1 $R/gpu_tests.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_fastdecode.py -k "cuda_graphs or compiled_layers" \
  > $R/gpu_tests_fastdecode.txt 2>&1; echo "fastdecode tests rc $?"; tail -1 $R/gpu_tests_fastdecode.txt
timeout 120 python3 benchmarks/device/topk_rows_probe.py --out $R/rows8 --rows 8 --sizes 2048,8192 \
  --other old=old_kernel/cuda_topk_old.py --variants new:default,old:default > $R/rows8.log 2>&1
echo "rows8 rc $?"; cat $R/rows8.log
. benchmarks/device/attention_rounds.sh
attention_rounds $R 3 topk-layers,topk-fused
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
