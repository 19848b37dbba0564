#!/usr/bin/env bash
# Session 11, third call: the CUDA radix top-p with its histograms padded against bank conflicts (one word every 32),
# bins cleared only where non-empty, pairwise slots taken a warp at a time and the winner reduced a warp at a time.
# GPU tests (top-p kernel, specattn's top-p on the device); the phase timeline; `bench topp` steady state, old
# (HEAD's kernel, session 10, from old_kernel/) and new, each from its own tree, twice; the cluster sweep 8K-128K.
#   bash benchmarks/device/session11_padded.sh
R=/tmp/s11p TESTS="tests/test_topp.py tests/test_specattn.py -k \"cuda or auto or gpu\"" \
  TIMELINE=1 \
  SWEEP="--sizes 8192,16384,32768,65536,131072 --temperatures 1.0 --threads 512,1024 --bins 2048 --clusters 1,2,4" \
  bash benchmarks/device/topp_ab.sh
