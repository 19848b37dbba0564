#!/usr/bin/env bash
# Session 23, call 7: A/B of call 3's two scan changes (the window's total by integer reductions beside the scan; no
# rest reduction in warps without rest entries) against call 2's code (the total from the scan's last lane; every
# warp reduces its rest): the probe in the working tree and in an untracked copy with call 2's code (ab_c2/, since
# deleted; its diff is results/h200_2026-11-29_s23/call7_ab/ab_c2.patch), alternating, two runs each.
#   bash benchmarks/device/session23_call7.sh [NAME]
NAME=${1:-s23c7}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
for run in 1 2; do
  for tree in new ab_c2; do
    if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
    (cd $D && PYTHONPATH=/tmp/site:$D timeout 120 python3 benchmarks/device/topp_short_probe.py --out $R/${tree}_$run \
      --sizes 1024,2048,4096 --p 0.9 --temperatures 2,1 --threads 512,1024 --pairwise 64,128 --bins 256) \
      > $R/${tree}_$run.log 2>&1
    echo "$tree $run rc $?"; grep -v -i warn $R/${tree}_$run.log | cut -c1-100; save
  done
done
