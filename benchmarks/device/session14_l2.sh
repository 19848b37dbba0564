#!/usr/bin/env bash
# Session 14, call 1: bulk L2 prefetches of the blocks a few tiles ahead (KernelConfig.l2_ahead) for the 128K step.
# KernelConfig.l2_ahead was measured slower and lives on branch attn-l2-prefetch (f5ee43b), where this script ran; on main
# only the probe's --l2-ahead loop runs.
# 1. gather_bandwidth_probe.py --l2-ahead: the split kernel's loop (copy only and with the math) at distances 0-8;
# 2. `bench attention` at 32K / 128K (22% kept, top-k over every layer, read flush), the default against l2_ahead 2
#    and 4, interleaved, twice; 3. the GPU tests of the new option and of session 13's unrun changes.
R=/tmp/s14l2; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 120 python3 benchmarks/device/gather_bandwidth_probe.py --out $R/gather --l2-ahead 0,1,2,3,4,6,8 \
  > $R/gather.log 2>&1; echo "gather rc $?"; cat $R/gather.log | grep -v Warn | cut -c1-120
for round in 1 2; do
  for cfg in default l2_ahead=2 l2_ahead=4; do
    d=$R/att_${cfg//[=,]/_}_$round; mkdir -p $d
    extra=""; [ "$cfg" != default ] && extra="--triton-config $cfg"
    timeout 70 python3 -m sparsebench.cli bench attention --out $d --contexts 32768,131072 --methods triton-indices \
      --selections topk-layers --repeats 50 --flush read --check $extra > $d/log.txt 2>&1
    echo "$cfg $round rc $? $(grep -E '^\| (32768|131072) \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md | awk -F'|' '{printf "%s %s %s %s / ", $2, $3, $10, $11}')"
  done
done
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py -k "launch_options" \
  tests/test_topp.py tests/test_cuda_decode.py tests/test_specattn.py > $R/gpu_tests.txt 2>&1
echo "tests rc $?"; tail -4 $R/gpu_tests.txt
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
