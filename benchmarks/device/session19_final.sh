#!/usr/bin/env bash
# Session 19, the last call (call 4): every GPU test of tests/test_topp.py on the merged grid kernel (speculative slot
# reads, the sense bits in registers, the 5-bit levels), the decode engine's GPU tests, the issue's `bench topp`
# command three times (the main suite) and once on SpecAttn's shapes. Results tarred into $OUT.
# (Call 4 ran these steps written out in this file; session18_checks.sh now takes NAME and MAIN_RUNS for them.)
NAME=s19final MAIN_RUNS=3 bash benchmarks/device/session18_checks.sh
