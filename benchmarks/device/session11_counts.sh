#!/usr/bin/env bash
# Session 11, fifth call: rows of up to 8 entries a thread (one CTA) without per-bin counts (the pairwise gather
# counts the bracket), and up to 128 pairwise candidates in one CTA (64 in clusters). GPU tests (top-p kernel,
# specattn's top-p on the device); the phase timeline; `bench topp` steady state, old (the fourth call's kernel,
# commit bd03773, an untracked copy in old_kernel/) and new, each from its own tree, twice.
# Measured slower and reverted: the variant is not in the code; the kernel that ran is commit bd03773 plus
# benchmarks/results/h200_2026-11-29_s11/counts/kernel_variant.patch (the same code, its comments left out). To rerun
# it, apply that patch and copy bd03773's cuda_topp.py / nvrtc.py into old_kernel/.
#   bash benchmarks/device/session11_counts.sh
R=/tmp/s11n TESTS="tests/test_topp.py tests/test_specattn.py -k \"cuda or auto or gpu\"" \
  TIMELINE=1 SWEEP="" \
  bash benchmarks/device/topp_ab.sh
