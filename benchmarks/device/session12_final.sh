#!/usr/bin/env bash
# Session 12's last call: the CUDA top-p as merged (the first pass's window only at 16-32 entries a thread and at most
# 512 threads, i.e. 8K-32K entries; branch-free first pass) against main's previous kernel (old_kernel/, as in
# session12_window.sh): GPU tests, `bench topp` twice each; then the issue-4 command on this tree alone.
R=/tmp/s12f TESTS="tests/test_topp.py tests/test_topk.py tests/test_specattn.py -k \"cuda or auto or gpu\"" \
  VARIANTS="old=old_kernel" bash benchmarks/device/topp_ab.sh
mkdir -p /tmp/s12f/final
timeout 120 python3 -m sparsebench.cli bench topp --out /tmp/s12f/final/topp --suites main --calls-per-replay 20 \
  --no-flush > /tmp/s12f/final/topp.log 2>&1; echo "final rc $?"
cut -c1-220 /tmp/s12f/final/topp.log | tail -40
tar czf $OUT/results.tar.gz -C /tmp s12f
