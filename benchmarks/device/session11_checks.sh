#!/usr/bin/env bash
# Session 11, second call: the new launch table (one CTA a row up to 16K entries, two- and four-CTA clusters beyond)
# and topp_mask's "auto" on the CUDA kernel. GPU tests of the top-p kernel, of the specattn policy (its top-p through
# topp_mask_nd on the device) and of the fast engine's policies; the phase timeline and floor of the kernel
# (topp_timeline_probe.py); `bench topp` in steady state.   bash benchmarks/device/session11_checks.sh
R=/tmp/s11c; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py tests/test_specattn.py \
  -k "cuda or auto or gpu" > $R/gpu_tests_topp.txt 2>&1; echo "topp tests rc $?"; tail -3 $R/gpu_tests_topp.txt
timeout 260 python3 -m pytest -q -p no:cacheprovider tests/test_fastdecode.py tests/test_fastdecode_specdec.py \
  tests/test_draft_mass.py tests/test_verify_select.py > $R/gpu_tests_policies.txt 2>&1
echo "policy tests rc $?"; tail -3 $R/gpu_tests_policies.txt
timeout 90 python3 benchmarks/device/topp_timeline_probe.py --out $R > $R/timeline.log 2>&1; echo "timeline rc $?"
cat $R/timeline.log | cut -c1-400
timeout 90 python3 -m sparsebench.cli bench topp --out $R/topp --suites main --calls-per-replay 20 --no-flush \
  > $R/topp_steady.log 2>&1; echo "topp rc $?"; grep -E "cuda radix" $R/topp_steady.log | awk '{printf "%s ", $3}'; echo
tar czf $OUT/results.tar.gz -C /tmp s11c
