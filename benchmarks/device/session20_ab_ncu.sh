#!/usr/bin/env bash
# Session 20: A/B of the working tree against untracked tree copies (session18_ab.sh: the grid kernel's GPU tests,
# timeline at 16K-32K, probe at 16K-128K), then Nsight Compute on the working tree's grid kernel at 16K, 4 x 512.
#   bash benchmarks/device/session20_ab_ncu.sh NAME "new ab_x ..."
NAME=$1; TREES=$2
TL_SIZES=16384,32768 TL_CTAS=4 TL_THREADS=512 BENCH_RUNS=0 TESTS="cuda_grid or auto" \
  bash benchmarks/device/session18_ab.sh ${NAME}_ab "$TREES" 16384,32768,65536,131072 4 512,1024 2>&1 \
  | grep -v "^WARNING\|pip\|^timeline N" | cut -c1-70
cp $OUT/results.tar.gz /tmp/${NAME}_ab.tar.gz
bash benchmarks/device/session20_ncu.sh ${NAME}_ncu "16384 4 512" 2>&1 | grep -v "^WARNING\|pip"
mkdir -p /tmp/$NAME && cd /tmp/$NAME && tar xzf /tmp/${NAME}_ab.tar.gz && tar xzf $OUT/results.tar.gz \
  && tar czf $OUT/results.tar.gz ${NAME}_ab ${NAME}_ncu
