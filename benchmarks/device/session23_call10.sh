#!/usr/bin/env bash
# Session 23, call 10: the short-row kernel's bins as three no-return limb words (limbs 1) against two words with the
# low word's carry (limbs 0, merged): its GPU test, then the probe at 1K-4K in the default shapes, two runs.
# (Ran with the limbs variant and the probe's --limbs flag, both since removed: their diff is
# results/h200_2026-11-29_s23/call10_limbs/limbs.patch.)
#   bash benchmarks/device/session23_call10.sh [NAME]
NAME=${1:-s23c10}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k short > $R/gpu_tests_short.txt 2>&1
echo "short tests rc $?"; tail -3 $R/gpu_tests_short.txt | cut -c1-300; save
for run in 1 2; do
  timeout 150 python3 benchmarks/device/topp_short_probe.py --out $R/probe_$run --p 0.9 --temperatures 2,1 \
    --sizes 1024,2048 --threads 512 --pairwise 64 --bins 256 --limbs 0,1 --timeline > $R/probe_$run.log 2>&1
  echo "probe $run rc $?"; save
  timeout 150 python3 benchmarks/device/topp_short_probe.py --out $R/probe4k_$run --p 0.9 --temperatures 2,1 \
    --sizes 4096 --threads 1024 --pairwise 128 --bins 256 --limbs 0,1 --timeline > $R/probe4k_$run.log 2>&1
  echo "probe 4k $run rc $?"; save
done
grep -h "^N=\|cycles" $R/probe_*.log $R/probe4k_*.log | cut -c1-150
