#!/usr/bin/env bash
# Session 15: the fused top-k + lists launch for 240 rows (30 layers x 8 kv heads, `topk-layers`) at 512 / 2048 /
# 8192 blocks a row (8K / 32K / 128K context). Call 1 (at the session's start commit, before the rewrite; that
# version of this script and of the probe): time by launch shape and Nsight Compute on the default. This version:
# the rewritten kernel against the old one (old_kernel/cuda_topk_old.py = `git show
# d35c2e7:sparsebench/kernels/cuda_topk.py`, untracked), its GPU tests, and `bench attention` at 8K / 32K / 128K.
R=/tmp/s15topk; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_topk.py -k "cuda" -p no:cacheprovider > $R/gpu_tests.txt 2>&1
echo tests rc $?; tail -3 $R/gpu_tests.txt
timeout 200 python3 benchmarks/device/topk_rows_probe.py --out $R --other old=old_kernel/cuda_topk_old.py \
  --variants ${VARIANTS:-new:default,new:1024x8,new:512x16,new:256x32,old:default,old:1024x8} > $R/probe.log 2>&1
echo probe rc $?; cat $R/probe.log
. benchmarks/device/attention_rounds.sh
attention_rounds $R 2 topk-layers  # folders att_run1, att_run2 (named att_1, att_2 when these calls ran)
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
