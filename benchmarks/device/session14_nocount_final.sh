#!/usr/bin/env bash
# Session 14, call 5 (branch topp-nocount): no count histograms where one CTA holds up to 16 entries a thread (the
# counts stay at 32 entries a thread, where leaving them out was slower, and in clusters), against main's kernel
# (old_kernel/ = `git show main:sparsebench/kernels/{cuda_topp,nvrtc}.py`, main = 2e09958) in the same call: GPU
# tests, the phase timeline, `bench topp --suites main --calls-per-replay 20 --no-flush` three times each.
# (The call ran rounds 1-2 through topp_ab.sh with R=/tmp/s14final/ab, then round 3 as its own loop with the
# same command into /tmp/s14final/topp_{main,new}_3: the layout of its results folder.)
TESTS="tests/test_topp.py -k 'cuda or auto or gpu'" TIMELINE=1 TIMELINE_ARGS="--sizes 1024,2048,4096,8192,16384" \
  VARIANTS="main=old_kernel" ROUNDS=3 R=/tmp/s14final bash benchmarks/device/topp_ab.sh
