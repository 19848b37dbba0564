#!/usr/bin/env bash
# Session 23, calls 5, 6 and 8: the short-row top-p kernel as the CUDA default for rows of up to 4096 entries.
#   bash benchmarks/device/session23_final.sh NAME PARTS
# PARTS, comma-separated:
#   tests           every GPU test of tests/test_topp.py
#   bench           the issue's `bench topp --suites main --calls-per-replay 20 --no-flush`, twice
#   specattn        the same command on SpecAttn's shapes
#   flush           `bench topp --suites main` with its defaults (L2 flushed, one call a replay)
#   specattn-tests  the GPU tests of tests/test_specattn.py
# Call 5: `s23c5 tests,bench`; call 6: `s23c6 specattn,flush,specattn-tests` (both with call 3's scan code);
# call 8: `s23c8 tests,bench,specattn,flush` (the merged kernel).
NAME=${1:-s23c8}; PARTS=,${2:-tests,bench,specattn,flush},; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
has() { [[ $PARTS == *,$1,* ]]; }
. benchmarks/device/device_env.sh $R/env.txt
. benchmarks/device/topp_bench_runs.sh
if has tests; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
  echo "topp tests rc $?"; tail -3 $R/gpu_tests_topp.txt | cut -c1-300; save
fi
if has bench; then topp_bench_runs 2; fi
if has specattn; then topp_bench_specattn; grep -i "cuda \|read " $R/topp_specattn.log | cut -c1-150; fi
if has flush; then
  timeout 200 python3 -m sparsebench.cli bench topp --out $R/topp_flush --suites main > $R/topp_flush.log 2>&1
  echo "bench flushed rc $?"; grep -i "cuda " $R/topp_flush.log | cut -c1-100; save
fi
if has specattn-tests; then
  timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_specattn.py > $R/gpu_tests_specattn.txt 2>&1
  echo "specattn tests rc $?"; tail -3 $R/gpu_tests_specattn.txt | cut -c1-300; save
fi
