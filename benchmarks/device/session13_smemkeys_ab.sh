#!/usr/bin/env bash
# Session 13, call 7: entries in shared memory by default at 1024 threads and 16+ entries a thread (keys_in_shared)
# against main's kernel in the same call: GPU tests first, then `bench topp --suites main --calls-per-replay 20
# --no-flush` for each tree twice (old_kernel/: `git show main:sparsebench/kernels/{cuda_topp,nvrtc}.py`).
R=/tmp/smemkeys_ab TESTS="tests/test_topp.py tests/test_specattn.py -k \"cuda or auto or gpu\"" VARIANTS="main=old_kernel" \
  bash benchmarks/device/topp_ab.sh
