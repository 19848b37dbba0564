#!/usr/bin/env bash
# The eighth session's closing GPU run on the H200 (one device call; outputs bundled as $OUT/results.tar.gz):
#   bash benchmarks/device/session8_final.sh
# 1. GPU tests of everything this session touched, with the new defaults (CUDA radix top-k for the block lists,
#    programmatic dependent launch for the Triton decode kernels): backends, fused selection, fast decode engine
#    (CUDA graphs), top-k, top-p, CUDA decode.
# 2. `bench attention` at 8K/32K/128K: write flush, read flush, and four layers per replay (read flush).
# 3. `bench decode`: Llama-3-8B shape with random weights, 32K (batch 1, 8) and 128K (batch 1), dense / Quest /
#    StreamingLLM at 22%, Triton backend; then Qwen2.5-Coder-0.5B's shape at 32K.
R=/tmp/s8; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
cat $R/env.txt
timeout 260 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_triton_backend.py tests/test_fused_attention.py \
  tests/test_fastdecode.py tests/test_topk.py tests/test_topp.py tests/test_cuda_decode.py --durations=5 \
  > $R/gpu_tests.txt 2>&1
rc=$?; echo "tests rc $rc"; tail -12 $R/gpu_tests.txt
for mode in "write 1" "read 1" "read 4"; do
  set -- $mode; d=$R/attention_$1_l$2; mkdir -p $d
  timeout 100 python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 --check \
    --methods triton-indices --selections topk-fused,topk-layers,quest-fused --repeats 50 --flush $1 --layers $2 \
    > $d/log.txt 2>&1
  echo "attention flush $1 layers $2 rc $?"; grep -E "^\| [0-9]" $d/bench_attention.md | grep -E "tensor cores|topk-layers" | cut -c1-140
done
if [ $rc -eq 0 ]; then
  timeout 200 python3 -m sparsebench.cli bench decode --out $R/decode --random-weights llama-3-8b \
    --contexts 32768,131072 --batch 1,8 --policies dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22 \
    --backend triton --steps 16 --repeats 3 > $R/decode.log 2>&1
  echo "decode rc $?"; grep "^|" $R/decode/bench_decode.md | cut -c1-120
  timeout 90 python3 -m sparsebench.cli bench decode --out $R/decode_qwen --random-weights qwen2.5-coder-0.5b \
    --contexts 32768 --batch 1,8 --policies dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22 \
    --backend triton --steps 16 --repeats 3 > $R/decode_qwen.log 2>&1
  echo "decode qwen rc $?"; grep "^|" $R/decode_qwen/bench_decode.md | cut -c1-120
fi
tar czf $OUT/results.tar.gz -C /tmp s8
