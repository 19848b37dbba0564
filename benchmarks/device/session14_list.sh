#!/usr/bin/env bash
# Session 14, call 3 (branch attn-list-prefetch): each split program requests its slice of its head's block-id list
# into L2 before loading the count (KernelConfig.list_prefetch), against the default, interleaved, three rounds of
# `bench attention` at 8K / 32K / 128K (22% kept, top-k over every layer, read flush, --check); GPU tests of the
# option first. Then the CUDA top-p's phase timeline at 16K (one CTA) and 32K / 64K (two-CTA clusters).
# KernelConfig.list_prefetch measured no faster; it lives on branch attn-list-prefetch (077cbfd), where this script ran.
R=/tmp/s14list; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py -k "launch_options" \
  > $R/gpu_tests.txt 2>&1; echo "tests rc $?"; tail -2 $R/gpu_tests.txt
for round in 1 2 3; do
  for cfg in default list_prefetch=1; do
    d=$R/att_${cfg//[=,]/_}_$round; mkdir -p $d
    extra=""; [ "$cfg" != default ] && extra="--triton-config $cfg"
    timeout 70 python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 \
      --methods triton-indices --selections topk-layers --repeats 50 --flush read --check $extra > $d/log.txt 2>&1
    echo "$cfg $round rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md | awk -F'|' '{printf "%s %s %s %s /", $2, $3, $10, $11}' | sed 's/dense flashinfer (tensor cores)/FI/g; s/triton-indices/sparse/g')"
  done
done
timeout 90 python3 benchmarks/device/topp_timeline_probe.py --out $R/timeline --sizes 16384,32768,65536 \
  > $R/timeline.log 2>&1; echo "timeline rc $?"; cut -c1-300 $R/timeline.log
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
