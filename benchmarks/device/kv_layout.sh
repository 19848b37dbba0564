#!/usr/bin/env bash
# Session 9, second call: K and V of a block adjacent vs separate caches (kv_layout_probe.py), and the split and
# merge kernels' durations at 128K under Nsight Compute.   bash benchmarks/device/kv_layout.sh
R=/tmp/kvl; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 120 python3 benchmarks/device/kv_layout_probe.py --out $R > $R/probe.log 2>&1; echo "probe rc $?"; cat $R/probe.log
timeout 120 /usr/local/cuda/bin/ncu --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
  --kernel-name regex:'_split_kernel|_merge_kernel' --launch-skip 40 --launch-count 8 \
  python3 benchmarks/device/kv_layout_probe.py --contexts 131072 --repeats 20 > $R/ncu.txt 2>&1
echo "ncu rc $?"; grep -E "_split_kernel|_merge_kernel|duration|dram__" $R/ncu.txt | head -40
tar czf $OUT/results.tar.gz -C /tmp kvl
