#!/usr/bin/env bash
# Where Quest's selection goes at 32K and 128K (one device call; writes under $OUT):
#   bash benchmarks/device/select_profile.sh
# 1. Nsight Compute on Quest's scoring and top-k launches and the top-p kernel (select_profile_probe.py).
# 2. The top-k kernel's configuration sweep for 8 rows of 2048 and 8192 blocks.
# 3. `bench attention` with Quest's and the top-k selection, four layers per replay, L2 flushed by reading.
. benchmarks/device/device_env.sh $OUT/env.txt
timeout 150 /usr/local/cuda/bin/ncu --kernel-name regex:'_topk_kernel|_score_kernel|_topp_kernel' --launch-count 8 \
  --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy \
  python3 benchmarks/device/select_profile_probe.py > $OUT/ncu_select.txt 2>&1
echo ncu rc $?
timeout 150 python3 -m sparsebench.kernels.topk --out $OUT --sizes 2048,8192 --rows 8 --repeats 50 > $OUT/topk_sweep.log 2>&1
echo sweep rc $?; tail -5 $OUT/topk_sweep.log
timeout 200 python3 -m sparsebench.cli bench attention --out $OUT/att --contexts 32768,131072 --methods triton-indices \
  --selections quest-fused,topk-fused --layers 4 --flush read --repeats 30 > $OUT/att.log 2>&1
echo att rc $?; tail -30 $OUT/att.log
