#!/usr/bin/env bash
# A session's last device call: GPU tests of the top-p kernels; `bench topp` in steady state (CUDA radix columns
# included); the attention step at 8K / 32K / 128K three times over (read flush, one layer, default configuration),
# to show the run-to-run spread at 128K. Results under $R (default /tmp/final), tarred into $OUT.
#   R=/tmp/sNf TESTS_TIMEOUT=120 ATT_TIMEOUT=100 bash benchmarks/device/final_checks.sh
R=${R:-/tmp/final}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout ${TESTS_TIMEOUT:-120} python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "tests rc $?"; tail -1 $R/gpu_tests_topp.txt
timeout 150 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp_steady.log 2>&1; echo "topp rc $?"; grep -E "^\[main\]|cuda radix" $R/topp_steady.log | head -20
for run in 1 2 3; do
  d=$R/att_run$run; mkdir -p $d
  timeout ${ATT_TIMEOUT:-100} python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "run $run rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s %s %s / ", $2, $3, $10, $11}')"
done
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
