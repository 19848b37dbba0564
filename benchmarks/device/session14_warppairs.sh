#!/usr/bin/env bash
# Session 14, call 6 (branch topp-warppairs): one-CTA rows with up to 64 pairwise candidates find t* in every warp
# at once (WARP_PAIRS: no shared atomic, no block barrier), against main's kernel (old_kernel/ = `git show
# main:sparsebench/kernels/{cuda_topp,nvrtc}.py`, main = 4e042bc) in the same call: GPU tests, the phase timeline,
# `bench topp --suites main --calls-per-replay 20 --no-flush` three times each.
# WARP_PAIRS measured slower and lives on branch topp-warppairs (d6ef1d6), where this script ran.
# (The call ran rounds 1-2 through topp_ab.sh with R=/tmp/s14wp/ab, then round 3 as its own loop with the
# same command into /tmp/s14wp/topp_{main,new}_3: the layout of its results folder.)
TESTS="tests/test_topp.py -k 'cuda or auto or gpu'" TIMELINE=1 TIMELINE_ARGS="--sizes 1024,2048,4096,8192,16384" \
  VARIANTS="main=old_kernel" ROUNDS=3 R=/tmp/s14wp bash benchmarks/device/topp_ab.sh
