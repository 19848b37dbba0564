set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $OUT/env.txt
timeout 150 /usr/local/cuda/bin/ncu --kernel-name regex:'_topk_kernel|_score_kernel|_topp_kernel' --launch-count 8 \
  --section SpeedOfLight --section WarpStateStats --section LaunchStats --section Occupancy \
  python3 benchmarks/device/select_profile_probe.py > $OUT/ncu_select.txt 2>&1
echo ncu rc $?
timeout 150 python3 -m sparsebench.kernels.topk --out $OUT --sizes 2048,8192 --rows 8 --repeats 50 > $OUT/topk_sweep.log 2>&1
echo sweep rc $?; tail -5 $OUT/topk_sweep.log
timeout 200 python3 -m sparsebench.cli bench attention --out $OUT/att --contexts 32768,131072 --methods triton-indices \
  --selections quest-fused,topk-fused --layers 4 --flush read --repeats 30 > $OUT/att.log 2>&1
echo att rc $?; tail -30 $OUT/att.log
