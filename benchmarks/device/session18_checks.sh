#!/usr/bin/env bash
# Session 18, call 7: the GPU tests around the top-p default's change (the grid kernel from 16K entries): every GPU
# test of tests/test_topp.py (Triton kernels included), SpecAttn's GPU top-p test, and the decode engine's tests
# (CUDA graphs with every policy, speculative decoding); then `bench topp` on SpecAttn's shapes.
# NAME (default s18g): the results folder under /tmp; MAIN_RUNS (default 0): runs of `bench topp --suites main` first
# (session 19's last call: session19_final.sh).
R=/tmp/${NAME:-s18g}; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -1 $R/gpu_tests_topp.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_specattn.py tests/test_fastdecode.py \
  tests/test_fastdecode_specdec.py > $R/gpu_tests_engine.txt 2>&1
echo "engine tests rc $?"; tail -1 $R/gpu_tests_engine.txt
for run in $(seq 1 ${MAIN_RUNS:-0}); do
  timeout 75 python3 -m sparsebench.cli bench topp --out $R/topp_$run --suites main --calls-per-replay 20 --no-flush \
    > $R/topp_$run.log 2>&1; echo "bench $run rc $?"; grep -i "cuda " $R/topp_$run.log | cut -c1-100
done
timeout 50 python3 -m sparsebench.cli bench topp --out $R/topp_specattn --suites specattn --calls-per-replay 20 \
  --no-flush > $R/topp_specattn.log 2>&1; echo "bench rc $?"; grep -i "cuda \|N= " $R/topp_specattn.log | cut -c1-110
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
