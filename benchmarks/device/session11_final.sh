#!/usr/bin/env bash
# Session 11, last call, on the final code: GPU tests of the top-p and top-k kernels and of the specattn policy's top-p
# on the device; the fast engine's tests (skipping those that run Triton's interpreter, which fails on the device's
# triton 3.6); `bench topp` in steady state; the attention step at 8K / 32K / 128K twice (issue 5's status).
#   bash benchmarks/device/session11_final.sh
R=/tmp/s11z; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py tests/test_topk.py tests/test_specattn.py \
  -k "cuda or auto or gpu" > $R/gpu_tests_kernels.txt 2>&1; echo "kernel tests rc $?"; tail -1 $R/gpu_tests_kernels.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_fastdecode.py tests/test_fastdecode_specdec.py \
  tests/test_draft_mass.py tests/test_verify_select.py -k "not interpret" > $R/gpu_tests_engine.txt 2>&1
echo "engine tests rc $?"; tail -1 $R/gpu_tests_engine.txt
timeout 60 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp_steady.log 2>&1; echo "topp rc $?"; grep -E "cuda radix" $R/topp_steady.log | awk '{printf "%s/x%s ", $3, $6}'; echo
for run in 1 2; do
  d=$R/att_run$run; mkdir -p $d
  timeout 70 python3 -m sparsebench.cli bench attention --out $d --contexts 8192,32768,131072 \
    --methods triton-indices --selections topk-layers --repeats 50 --flush read --check > $d/log.txt 2>&1
  echo "run $run rc $? $(grep -E '^\| [0-9]+ \| (dense flashinfer \(tensor|triton)' $d/bench_attention.md \
    | awk -F'|' '{printf "%s %s %s %s / ", $2, $3, $10, $11}')"
done
tar czf $OUT/results.tar.gz -C /tmp s11z
