#!/usr/bin/env bash
# GPU path checks and benchmarks (issue 5, and the top-p kernel of issue 4) in one device call.
#
#   bash benchmarks/device/gpu_issue5.sh OUTDIR
#
# Runs the GPU tests (FlashInfer and Triton backends against the torch backend, the decode engine's
# graph/eager and compiled/eager equality), then `bench topp`, `bench attention` and `bench decode`
# (Llama-3-8B-shaped and Qwen2.5-Coder-0.5B-shaped random weights). Needs flashinfer-python and
# apache-tvm-ffi importable (carry them as wheels: ../shared/tools/device-wheels.sh .whl).
set -uo pipefail
out=${1:?usage: gpu_issue5.sh OUTDIR}
mkdir -p "$out/decode" "$out/qwen"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
# Kernel files: only their GPU-marked tests (their CPU tests run the Triton interpreter, covered by CI).
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_triton_backend.py tests/test_topp.py \
  $(ls tests/test_topk.py 2>/dev/null) 2>&1 | tail -8 | tee "$out/gpu_tests.txt"
timeout 150 python3 -m pytest -q -rs -p no:cacheprovider tests/test_flashinfer_backend.py tests/test_fastdecode.py \
  2>&1 | tail -8 | tee -a "$out/gpu_tests.txt"
timeout 150 python3 -m sparsebench.cli bench topp --out "$out" ${TOPP_ARGS:-} > "$out/bench_topp.log" 2>&1
tail -25 "$out/bench_topp.log"
timeout 200 python3 -m sparsebench.cli bench attention --out "$out" --check ${ATTN_ARGS:-} > "$out/bench_attention.log" 2>&1
tail -30 "$out/bench_attention.log"
timeout 300 python3 -m sparsebench.cli bench decode --out "$out/decode" --random-weights llama-3-8b \
  --contexts 32768,131072 --batch 1,8 --policies dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22 \
  --backend triton --steps 32 > "$out/bench_decode.log" 2>&1
tail -16 "$out/bench_decode.log"
timeout 120 python3 -m sparsebench.cli bench decode --out "$out/qwen" --random-weights qwen2.5-coder-0.5b \
  --contexts 32768 --batch 1,8 --policies dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22 \
  --backend triton --steps 32 > "$out/bench_decode_qwen.log" 2>&1
tail -12 "$out/bench_decode_qwen.log"
