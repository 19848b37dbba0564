#!/usr/bin/env bash
# smollm2-135m on the H200 in one warm machine: assemble its GGUF from the pieces stashed in /tmp/stash by the
# previous calls, then one phase per device call (each under 10 minutes):
#
#   bash benchmarks/device/smollm2_session.sh prepare "$OUT" # assemble + fetch only (e.g. as a cross-tokenizer draft)
#   bash benchmarks/device/smollm2_session.sh probe "$OUT"   # assemble + fetch; distill_smollm2.sh probe (with
#                                                            # GENERATE_TOKENS: the target writes its training text)
#   bash benchmarks/device/smollm2_session.sh train "$OUT"   # assemble + fetch; bench specdec with the self-draft
#                                                            # (issue 6's real-alias rows); distil (issue 8)
#   bash benchmarks/device/smollm2_session.sh table "$OUT"   # distill_smollm2.sh table (SELFDRAFT=0), then
#                                                            # bench specdec with the distilled draft
#
# Pieces: .device/chunks3/c00..c02 (SmolLM2-135M-Instruct.Q4_1.gguf.part.* plus the offline corpora under data/),
# copied to /tmp/stash by three earlier back-to-back calls (README "GPU"). Wheels (gguf for transformers' GGUF
# loader) in .whl/, carried with the last piece. Environment: SPARSEBENCH_CACHE=/tmp/sbcache,
# SPARSEBENCH_DATA=/tmp/data, offline. NAME / LAYERS / HEAD_VOCAB / BUDGET_S / GENERATE_TOKENS pass through to
# distill_smollm2.sh.
# SPECDEC=0 skips the bench specdec runs of either phase; DISTILL_TIMEOUT_S (400) bounds the distillation.
set -uo pipefail
usage="usage: smollm2_session.sh prepare|probe|train|table OUTDIR"
phase=${1:?$usage}; out=${2:?$usage}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SPARSEBENCH_CACHE=/tmp/sbcache SPARSEBENCH_DATA=/tmp/data
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
NAME=${NAME:-smollm2-135m-L10-V8192}
export NAME
specdec=(--model smollm2-135m --dataset pg19 --data-source offline --contexts 2048,7680 --gamma 4 --p 0.97
         --rounds 8 --steps 16 --repeats 2 --backend triton)

if [ "$phase" = train ] || [ "$phase" = prepare ] || [ "$phase" = probe ]; then
  [ -d /tmp/site/gguf ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl > /dev/null 2>&1
  mkdir -p "$SPARSEBENCH_CACHE/models/smollm2-135m" "$SPARSEBENCH_DATA"
  cp -r /tmp/stash/data/* "$SPARSEBENCH_DATA/" 2>/dev/null || true
  cat /tmp/stash/SmolLM2-135M-Instruct.Q4_1.gguf.part.* \
    > "$SPARSEBENCH_CACHE/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
  sha256sum "$SPARSEBENCH_CACHE/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf" | tee "$out/gguf_sha256.txt"
  python3 -m sparsebench.cli fetch smollm2-135m 2>&1 | tail -2
  [ "$phase" = prepare ] && exit 0
  if [ "$phase" = probe ]; then
    OUT="$out/distill" bash benchmarks/device/distill_smollm2.sh probe 2>&1 | tail -15
    exit 0
  fi
  if [ "${SPECDEC:-1}" = 1 ]; then  # SPECDEC=0: distillation only (more of the call's 10 minutes for training)
    timeout 150 python3 -m sparsebench.cli bench specdec --out "$out/selfdraft" "${specdec[@]}" \
      > "$out/specdec_selfdraft.log" 2>&1
    echo "bench exit status $?" >> "$out/specdec_selfdraft.log"
    tail -12 "$out/specdec_selfdraft.log"
  fi
  OUT="$out/distill" timeout "${DISTILL_TIMEOUT_S:-400}" bash benchmarks/device/distill_smollm2.sh train 2>&1 | tail -15
elif [ "$phase" = table ]; then
  OUT="$out/distill" SELFDRAFT=0 timeout 400 bash benchmarks/device/distill_smollm2.sh table 2>&1 | tail -30
  if [ "${SPECDEC:-1}" = 1 ]; then
    timeout 150 python3 -m sparsebench.cli bench specdec --out "$out/distilled" "${specdec[@]}" \
      --draft "distilled:$NAME" > "$out/specdec_distilled.log" 2>&1
    echo "bench exit status $?" >> "$out/specdec_distilled.log"
    tail -12 "$out/specdec_distilled.log"
  fi
else
  echo "unknown phase $phase (prepare, probe, train or table)"; exit 2
fi
