#!/usr/bin/env bash
# Session 21, the last calls: every GPU test of tests/test_topp.py on the grid kernel with the pairwise ending (any
# thread count), range-only slot writes and 512 threads up to 16K entries a CTA; the probe against an untracked copy of
# main (ab_main); the phase timeline; the issue's `bench topp` command three times (main suite) and once on
# SpecAttn's shapes. Saves after each step: a call cut short keeps what ran. (The bench loops moved to
# topp_bench_runs.sh after calls 4 and 6 ran: the same commands.)
#   bash benchmarks/device/session21_final.sh [NAME]   (PROBE=0: without the probe against ab_main)
NAME=${1:-s21final}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py > $R/gpu_tests_topp.txt 2>&1
echo "topp tests rc $?"; tail -1 $R/gpu_tests_topp.txt; save
for tree in $([ "${PROBE:-1}" = 1 ] && echo new ab_main); do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 150 python3 benchmarks/device/topp_grid_probe.py --out $R/grid_$tree \
    --sizes 16384,32768,65536,131072 --ctas 4 --threads 512,1024) > $R/grid_$tree.log 2>&1
  echo "grid $tree rc $?"; grep -vi warn $R/grid_$tree.log | cut -c1-100; save
done
. benchmarks/device/topp_bench_runs.sh
topp_bench_runs 3
topp_bench_specattn
timeout 60 python3 benchmarks/device/topp_grid_probe.py --out $R/timeline --timeline --sizes 16384,32768,65536 \
  --ctas 4 --threads 512 > $R/timeline.log 2>&1; echo "timeline rc $?"; grep "timeline N" $R/timeline.log | cut -c1-80
save
