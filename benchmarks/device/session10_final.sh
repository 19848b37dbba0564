#!/usr/bin/env bash
# Session 10, last call: GPU tests of the top-p kernels (the CUDA kernel's clusters and launch table included);
# `bench topp` in steady state; the attention step at 8K / 32K / 128K three times over (read flush, one layer,
# default configuration, merge loads issued together).   bash benchmarks/device/session10_final.sh
R=/tmp/s10f TESTS_TIMEOUT=200 ATT_TIMEOUT=80 bash benchmarks/device/final_checks.sh
