#!/usr/bin/env bash
# Session 22, call 2: the read floor in the other timing regimes. `bench topp` with its defaults (one call a CUDA-graph
# replay, L2 flushed by writing 256 MB before each: cold input, launch paid a call) on both suites, and the issue's
# steady-state command (20 calls a replay, no flush) on SpecAttn's shapes.
#   bash benchmarks/device/session22_call2.sh [NAME]
NAME=${1:-s22c2}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 300 python3 -m sparsebench.cli bench topp --out $R/topp_flush > $R/topp_flush.log 2>&1
echo "bench flushed rc $?"; grep -i "cuda \|read " $R/topp_flush.log | cut -c1-150; save
. benchmarks/device/topp_bench_runs.sh
topp_bench_specattn
grep -i "cuda \|read " $R/topp_specattn.log | cut -c1-150
