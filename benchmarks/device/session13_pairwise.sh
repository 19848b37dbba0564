#!/usr/bin/env bash
# Session 13, call 8: the CUDA top-p resolving larger last brackets by pairwise sums in rows over 16K entries
# (pairwise_max: 128 / 256 / 512 candidates at 32K / 64K / 128K, in the histograms' words) against main's kernel
# (old_kernel/: `git show main:sparsebench/kernels/{cuda_topp,nvrtc}.py`, main = 4fcf5b3 + a docstring fix) in the
# same call: GPU tests first, then `bench topp --suites main --calls-per-replay 20 --no-flush` twice each.
R=/tmp/pairwise TESTS="tests/test_topp.py tests/test_specattn.py -k \"cuda or auto or gpu\"" VARIANTS="main=old_kernel" \
  bash benchmarks/device/topp_ab.sh
