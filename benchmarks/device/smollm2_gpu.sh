#!/usr/bin/env bash
# Real-model GPU checks with smollm2-135m (issue 5 item 4, issue 6 item 2), in the device call that brings
# the second half of its GGUF (see README "GPU"): assemble, convert, then
#   - every GPU backend x policy at full budget decodes HF's greedy tokens over 64 steps (fast engine);
#   - teacher-forced perplexity through the torch, triton and flashinfer backends (bf16) agree;
#   - speculative decoding at p = 1.0 reproduces greedy decoding (benchmarks/device/specdec_check.py).
#   bash benchmarks/device/smollm2_gpu.sh STASH OUTDIR
set -uo pipefail
stash=${1:?stash dir}; out=${2:?out dir}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSEBENCH_CACHE=/tmp/sbcache SPARSEBENCH_DATA=/tmp/data
mkdir -p "$SPARSEBENCH_CACHE/models/smollm2-135m"
cat "$stash"/SmolLM2-135M-Instruct.Q4_1.gguf.part.* > "$SPARSEBENCH_CACHE/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
python3 -m sparsebench.cli fetch smollm2-135m 2>&1 | tail -2
timeout 200 python3 -m pytest -q -rs -p no:cacheprovider tests/test_gpu_real_model.py \
  "tests/test_fastdecode.py::test_real_alias_logits_match_hf_on_gpu" 2>&1 | tail -12 | tee "$out/real_model_tests.txt"
for b in torch triton flashinfer; do
  timeout 100 python3 -m sparsebench.cli run --policy specattn --p 0.95 --model smollm2-135m --dataset pg19 \
    --data-source offline --seq-len 2048 --docs 2 --batch-size 1 --device cuda --dtype bf16 --backend $b \
    --out "$out/backends_bf16.jsonl" --no-progress 2>&1 | tail -3
done
timeout 150 python3 benchmarks/device/specdec_check.py --model smollm2-135m --out-dir "$out" 2>&1 | tail -15
