#!/usr/bin/env bash
# The CUDA radix top-k (sparsebench/kernels/cuda_topk.py) on the H200, in one device call:
#   bash benchmarks/device/cuda_topk.sh   (writes under $OUT)
# 1. GPU tests of the top-k paths (Triton and CUDA kernels against the exact reference) and of the fused
#    attention step that consumes the lists.
# 2. `python -m sparsebench.kernels.topk --select`: topk_select by each kernel, 8 and 64 rows of 512-16384 blocks;
#    then Nsight Compute durations of Quest's scoring and top-k launches (select_profile_probe.py).
# 3. If the tests passed: `bench decode`, Llama-3-8B shape with random weights, dense / Quest / StreamingLLM at
#    22%, 32K (batch 1, 8) and 128K (batch 1), Triton attention backend (Quest's top-k now the CUDA kernel).
. benchmarks/device/device_env.sh $OUT/env.txt
timeout 240 python3 -m pytest -q -x -p no:cacheprovider -m gpu tests/test_topk.py tests/test_fused_attention.py \
  > $OUT/gpu_tests.txt 2>&1
rc=$?; echo "tests rc $rc"; tail -4 $OUT/gpu_tests.txt
timeout 120 python3 -m sparsebench.kernels.topk --out $OUT --select --sizes 512,2048,8192,16384 \
  --select-rows 8,64 --repeats 50 > $OUT/topk_select.log 2>&1
echo "select rc $?"; cat $OUT/topk_select.log
timeout 60 /usr/local/cuda/bin/ncu --kernel-name regex:'_topk_kernel|_score_kernel|sb_topk_lists' --launch-count 8 \
  --section SpeedOfLight python3 benchmarks/device/select_profile_probe.py > $OUT/ncu_select.txt 2>&1
grep -E "^  [_a-z]|Duration" $OUT/ncu_select.txt
if [ $rc -eq 0 ]; then
  timeout ${DECODE_S:-170} python3 -m sparsebench.cli bench decode --out $OUT/decode --random-weights llama-3-8b \
    --contexts 32768,131072 --batch 1,8 --policies dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22 \
    --backend triton --steps 16 --repeats 3 > $OUT/decode.log 2>&1
  echo "decode rc $?"; grep "^|" $OUT/decode/bench_decode.md 2>/dev/null | cut -c1-200
fi
