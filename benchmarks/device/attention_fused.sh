#!/usr/bin/env bash
# The fused attention step (issue 5 follow-up) on the H200, in one device call of under 5 minutes.
#
#   bash benchmarks/device/attention_fused.sh "$OUT"
#
# 1. The GPU tests of tests/test_fused_attention.py only (the other kernel files' GPU tests passed on the
#    first run, which took 134 s for all three): the fused top-k + block lists and both split-K merges against
#    the torch backend, the one-launch merge under load, Quest's fused step replayed in a CUDA graph, and
#    Quest's scoring and summary kernels in bfloat16 (these two failed to compile on the first run).
# 2. `bench attention` at 8K/32K/128K, 30 repeats: the two-launch merge (triton-indices, the default) and
#    the one-launch merge (triton-fused, a recorded loser) under the top-k mask + plan() compaction (topk),
#    the fused top-k writing the lists (topk-fused), and Quest's torch scoring vs its kernel (quest-torch,
#    quest-fused). Dense FlashInfer when it imports (carry its wheels; see WHEELS below).
# 3. `bench decode` with the Llama-3-8B shape, dense vs Quest vs StreamingLLM at 22%, Triton backend, with
#    whatever is left of the 5 minutes (it saves each row as it goes).
#
# Wheels: if WHEELS names a folder of py3.12 manylinux wheels (flashinfer-python, apache-tvm-ffi), they are
# installed into /tmp/site first; /tmp/site is on PYTHONPATH either way. Outputs (7 files, <= 2 levels):
# $OUT/{gpu_tests.txt, bench_attention.{json,md,log}, bench_decode.log, decode/bench_decode.{json,md}}.
set -uo pipefail
out=${1:-${OUT:?usage: attention_fused.sh OUTDIR (or set OUT)}}
mkdir -p "$out/decode"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS
budget=285  # seconds for the three steps together, under the 5-minute device call
if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ] && ! python3 -c "import flashinfer" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$WHEELS"/*.whl 2>&1 | tail -3
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} > "$out/gpu_tests.txt" 2>&1
timeout 100 python3 -m pytest -q -rs -p no:cacheprovider -m gpu --durations=5 tests/test_fused_attention.py \
  2>&1 | tail -30 | tee -a "$out/gpu_tests.txt"
echo "tests took $((SECONDS - start)) s" | tee -a "$out/gpu_tests.txt"
timeout 80 python3 -m sparsebench.cli bench attention --out "$out" --check --contexts 8192,32768,131072 \
  --methods triton-indices,triton-fused --selections topk,topk-fused,quest-torch,quest-fused \
  --repeats 30 ${ATTN_ARGS:-} > "$out/bench_attention.log" 2>&1
tail -32 "$out/bench_attention.log"
echo "attention took $((SECONDS - start)) s so far" | tee -a "$out/bench_attention.log"
left=$((budget - (SECONDS - start)))
if [ "$left" -lt 30 ]; then left=30; fi
timeout "$left" python3 -m sparsebench.cli bench decode --out "$out/decode" --random-weights llama-3-8b \
  --contexts 32768,131072 --batch 1,8 --policies dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22 \
  --backend triton --steps 32 > "$out/bench_decode.log" 2>&1
echo "decode exit $? after ${left} s allowed" | tee -a "$out/bench_decode.log"
tail -16 "$out/bench_decode.log"
echo "total $((SECONDS - start)) s"
