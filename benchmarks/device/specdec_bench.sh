#!/usr/bin/env bash
# Speculative decoding with SpecAttn verification on the fast engine (issue 6 item 4, the paper's Table 2 analog).
#
#   OUT=/path bash benchmarks/device/specdec_bench.sh "$OUT"
#
# 1. GPU tests: the draft-mass Triton kernel (bf16 draft shapes at 8K and 128K with a window, CUDA-graph replay
#    with an advancing mass row, speculator kernel vs torch masses) and the speculator's Triton multi-row
#    verification at p=1.0 = plain greedy (CUDA graphs and eager);
# 2. Llama-3-8B-shaped target + Llama-3.2-1B-shaped draft, random weights, FIXED acceptance pattern 3,4,2,4,
#    contexts 2K/32K/128K, batch 1, rows: no speculation, dense speculation, SpecAttn p=0.97, SpecAttn with a
#    StreamingLLM draft (4096-token window); SpecAttn's last verified row reuses the previous row's draft
#    attention (--last-row reuse, the default; stated in the output).
# Needs python3 with CUDA torch + triton. Budget: under 4 minutes (timeouts 60 + 170 s).
# Writes 5 files under OUT (one level of folders): gpu.txt, gpu_tests.txt, random.log, random/bench_specdec.{json,md}.
set -uo pipefail
out=${1:?usage: specdec_bench.sh OUTDIR}
mkdir -p "$out/random"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1
timeout 60 python3 -m pytest -q -rs -p no:cacheprovider tests/test_draft_mass.py tests/test_fastdecode_specdec.py \
  -k gpu 2>&1 | tail -25 > "$out/gpu_tests.txt"
cat "$out/gpu_tests.txt"
source benchmarks/device/specdec_random.sh
specdec_random "$out" 170
