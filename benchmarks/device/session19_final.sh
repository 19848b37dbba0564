#!/usr/bin/env bash
# Session 19, the last call: every GPU test of tests/test_topp.py on the merged grid kernel (speculative slot reads,
# the sense bits in registers, the 5-bit levels), the decode engine's GPU tests, and the issue's `bench topp` command
# three times (the main suite) and once on SpecAttn's shapes. Results tarred into $OUT.
R=/tmp/s19final; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 170 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -1 $R/gpu_tests_topp.txt
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_specattn.py tests/test_fastdecode.py \
  tests/test_fastdecode_specdec.py > $R/gpu_tests_engine.txt 2>&1
echo "engine tests rc $?"; tail -1 $R/gpu_tests_engine.txt
for run in 1 2 3; do
  timeout 75 python3 -m sparsebench.cli bench topp --out $R/topp_$run --suites main --calls-per-replay 20 --no-flush \
    > $R/topp_$run.log 2>&1; echo "bench $run rc $?"; grep -i "cuda " $R/topp_$run.log | cut -c1-100
done
timeout 50 python3 -m sparsebench.cli bench topp --out $R/topp_specattn --suites specattn --calls-per-replay 20 \
  --no-flush > $R/topp_specattn.log 2>&1; echo "specattn bench rc $?"; grep -ci "bad rows 0" $R/topp_specattn.log
tar czf $OUT/results.tar.gz -C /tmp $(basename $R)
