#!/usr/bin/env bash
# Session 9, last call: GPU tests of the top-p kernels with the CUDA kernel's new launch shape; `bench topp` in steady
# state (CUDA radix columns included); the attention step at 8K / 32K / 128K three times over (read flush, one layer,
# default configuration), to show the run-to-run spread at 128K.   bash benchmarks/device/session9_final.sh
R=/tmp/s9f TESTS_TIMEOUT=120 ATT_TIMEOUT=100 bash benchmarks/device/final_checks.sh
