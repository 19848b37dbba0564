#!/usr/bin/env bash
# The Table 2 analog with random weights (issue 6), shared by specdec_bench.sh and verify_select.sh so that both
# time exactly the same rows: `source` this file, then `specdec_random OUTDIR TIMEOUT_S`.
# Llama-3-8B-shaped target, Llama-3.2-1B-shaped draft, FIXED acceptance pattern 3,4,2,4, contexts 2K/32K/128K,
# rows: no speculation, dense speculation, SpecAttn p=0.97, SpecAttn with a StreamingLLM draft (4096 tokens).
# Writes OUTDIR/random.log and OUTDIR/random/bench_specdec.{json,md}; prints the table.
specdec_random() {
  local out=$1 limit=$2
  mkdir -p "$out/random"
  timeout "$limit" python3 -m sparsebench.cli bench specdec --out "$out/random" --random-weights llama-3-8b \
    --draft-random llama-3.2-1b --contexts 2048,32768,131072 --gamma 4 --p 0.97 --accept-pattern 3,4,2,4 \
    --draft-window 4096 --last-row reuse --rounds 8 --steps 16 --repeats 2 --backend triton > "$out/random.log" 2>&1
  echo "bench exit status $?" >> "$out/random.log"
  tail -24 "$out/random.log"
}
