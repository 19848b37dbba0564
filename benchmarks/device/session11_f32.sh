#!/usr/bin/env bash
# Session 11, fourth call: the padded kernel with the row sum in float32, the loads issued before the histogram clear,
# and per-candidate slots again (the warp-ballot slots and warp-max winner of the third call were slower).
# GPU tests (top-p kernel, specattn's top-p on the device); the phase timeline; `bench topp` steady state, old
# (HEAD's kernel, session 10, from old_kernel/) and new, each from its own tree, twice; the one-CTA sweep 1K-4K (threads, bins).
#   bash benchmarks/device/session11_f32.sh
R=/tmp/s11f TESTS="tests/test_topp.py tests/test_specattn.py -k \"cuda or auto or gpu\"" \
  TIMELINE=1 \
  SWEEP="--sizes 1024,2048,4096 --temperatures 1.0 --threads 256,512,1024 --bins 1024,2048 --clusters 1" \
  bash benchmarks/device/topp_ab.sh
