# Sourced by the session-21 device scripts (after `save` and R are defined):
#   topp_bench_runs RUNS   the issue's `bench topp --suites main --calls-per-replay 20 --no-flush`, RUNS times, into
#                          $R/topp_1 ... (its CUDA lines echoed, results saved after each run)
#   topp_bench_specattn    the same command once on SpecAttn's shapes ($R/topp_specattn)
topp_bench_runs() {
  for run in $(seq 1 "$1"); do
    timeout 120 python3 -m sparsebench.cli bench topp --out $R/topp_$run --suites main --calls-per-replay 20 \
      --no-flush > $R/topp_$run.log 2>&1; echo "bench $run rc $?"; grep -i "cuda " $R/topp_$run.log | cut -c1-100; save
  done
}
topp_bench_specattn() {
  timeout 90 python3 -m sparsebench.cli bench topp --out $R/topp_specattn --suites specattn --calls-per-replay 20 \
    --no-flush > $R/topp_specattn.log 2>&1; echo "bench rc $?"; grep -ci "bad rows 0\|ok" $R/topp_specattn.log; save
}
