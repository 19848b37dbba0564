#!/usr/bin/env bash
# Session 21: the grid top-p's pairwise ending (the level-2 crossing bin's entries summed pairwise, after level 2
# binned while the candidates are placed) against untracked copies of earlier trees: session18_ab.sh's grid GPU tests,
# timeline at 16K-32K and probe at 8K-128K, then an 8K sweep of CTAs a row and threads (the grid kernel against the
# radix one, which 8K takes now).
#   bash benchmarks/device/session21_ab.sh NAME "new ab_x ..."   (SWEEP8K: the trees of the 8K sweep, default all)
NAME=$1; TREES=$2
TL_SIZES=16384,32768 TL_CTAS=4 TL_THREADS=512 BENCH_RUNS=0 TESTS="cuda_grid or auto" \
  bash benchmarks/device/session18_ab.sh ${NAME} "$TREES" 8192,16384,32768,65536,131072 4 512,1024 2>&1 \
  | grep -v "^WARNING\|pip\|^timeline N" | cut -c1-100
R=/tmp/$NAME
for tree in ${SWEEP8K:-$TREES}; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 120 python3 benchmarks/device/topp_grid_probe.py --out $R/grid8k_$tree \
    --sizes 8192 --ctas 2,4 --threads 256,512) > $R/grid8k_$tree.log 2>&1
  echo "grid 8K $tree rc $?"; grep -vi warn $R/grid8k_$tree.log | cut -c1-100
  tar czf $OUT/results.tar.gz -C /tmp $NAME
done
# NCU=1: then Nsight Compute on the working tree's grid kernel at 16K, 4 x 512 (session20_ncu.sh).
if [ "${NCU:-0}" = 1 ]; then
  cp $OUT/results.tar.gz /tmp/${NAME}_ab.tar.gz
  bash benchmarks/device/session20_ncu.sh ${NAME}_ncu "16384 4 512" 2>&1 | grep -v "^WARNING\|pip"
  mkdir -p /tmp/${NAME}_all && cd /tmp/${NAME}_all && tar xzf /tmp/${NAME}_ab.tar.gz && tar xzf $OUT/results.tar.gz \
    && tar czf $OUT/results.tar.gz ${NAME} ${NAME}_ncu
fi
