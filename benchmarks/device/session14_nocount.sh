#!/usr/bin/env bash
# Session 14, call 4 (branch topp-nocount): the one-CTA CUDA top-p without count histograms (the bracket's entries
# gathered after every pass decide whether another pass is needed), with the mass in two words and a carry ("v1",
# MASS_LIMBS = False) and in three 16/16/32-bit limb words with no returned values ("new"), against main's kernel
# (old_kernel/ = `git show main:sparsebench/kernels/{cuda_topp,nvrtc}.py`, main = 2e09958), in the same call: GPU
# tests, the phase timeline, `bench topp --suites main --calls-per-replay 20 --no-flush` twice each.
# It ran on an uncommitted tree whose MASS_LIMBS switch chose between "v1" and "new"; the three-limb form was slower
# and was removed after this call; the kept kernel is v1 with the counts kept at 32 entries a thread
# (session14_nocount_final.sh).
R=/tmp/s14nc TESTS="tests/test_topp.py -k cuda" TIMELINE=1 TIMELINE_ARGS="--sizes 1024,4096,8192,16384" \
  VARIANTS="main=old_kernel v1=v1_kernel" bash benchmarks/device/topp_ab.sh
