#!/usr/bin/env bash
# Session 9, first call: (1) the one-launch merge, rewritten to read a group's partials in wide loads, and fewer
# splits, against the default at 128K (22% kept, top-k over every layer, L2 flushed by reading); (2) where the
# top-p kernels' steady-state time goes (launch floor with and without PDL, kernel bodies under Nsight Compute).
#   bash benchmarks/device/session9_probe.sh   (writes $OUT/results.tar.gz)
# The wide-load merge of (1) was measured slower and reverted before any commit, so
# today this script's triton-fused rows time the earlier one-launch merge.
R=/tmp/s9; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fused_attention.py -k "fused or graph" \
  > $R/gpu_tests_fused.txt 2>&1; echo "tests rc $?"; tail -2 $R/gpu_tests_fused.txt
att() {  # att NAME LAYERS [--triton-config CFG]
  d=$R/att_$1_l$2; mkdir -p $d; name=$1; layers=$2; shift 2
  timeout 60 python3 -m sparsebench.cli bench attention --out $d --contexts 131072 \
    --methods triton-indices,triton-fused --selections topk-layers --repeats 50 --flush read --layers $layers "$@" \
    > $d/log.txt 2>&1
  echo "$name l$layers rc $? $(grep -E '^\| 131072 \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s %s / ", $3, $10, $11}')"
}
att default 1 --check
att splits32 1 --triton-config splits=32
att splits16_st6 1 --triton-config splits=16,num_stages=6
att splits16_bpt8 1 --triton-config splits=16,blocks_per_tile=8,num_stages=3
att default 4
att splits32 4 --triton-config splits=32
timeout 120 python3 benchmarks/device/topp_floor_probe.py --out $R/floor > $R/floor.log 2>&1; echo "floor rc $?"
cat $R/floor.log
timeout 150 /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum \
  --kernel-name regex:'_empty|_row_sum|_topp_kernel|sb_topp_mask|reduce' \
  python3 benchmarks/device/topp_floor_probe.py --ncu --sizes 1024,4096,32768 > $R/ncu_floor.txt 2>&1
echo "ncu rc $?"; grep -E "^\s+[_a-z].*\(|gpu__time_duration" $R/ncu_floor.txt | paste - - | \
  awk '{print $1, $(NF)}' | head -60
tar czf $OUT/results.tar.gz -C /tmp s9
