#!/usr/bin/env bash
# Session 21: the 1024-thread CTAs (128K entries a row) of the working tree against two untracked variants (ab_a:
# the pairwise ending at 1024 threads too; ab_b: every bin written at 1024 threads, as before) and main (ab_main);
# then the grid GPU tests on the fastest of the three at 128K, where that is a variant.
R=/tmp/s21w; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp s21w; }
. benchmarks/device/device_env.sh $R/env.txt
for tree in new ab_a ab_b ab_main; do
  if [ $tree = new ]; then D=$PWD; else D=$PWD/$tree; fi
  (cd $D && PYTHONPATH=/tmp/site:$D timeout 120 python3 benchmarks/device/topp_grid_probe.py --out $R/grid_$tree \
    --sizes 32768,65536,131072 --ctas 4 --threads 1024) > $R/grid_$tree.log 2>&1
  echo "grid $tree rc $?"; grep -vi warn $R/grid_$tree.log | cut -c1-64; save
done
BEST=$(python3 - <<'PY'
import glob, json
best = {}
for tree in ("new", "ab_a", "ab_b"):
    rec = json.load(open(glob.glob(f"/tmp/s21w/grid_{tree}/*.json")[0]))
    rows = rec["rows"]
    best[tree] = next(r["grid_us"] for r in rows if r["n"] == 131072)
print(min(best, key=best.get))
PY
)
echo "fastest at 128K: $BEST"
if [ "$BEST" != new ]; then
  (cd $PWD/$BEST && PYTHONPATH=/tmp/site:$PWD/$BEST timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_topp.py -k "cuda_grid or auto") > $R/gpu_tests_$BEST.txt 2>&1
  echo "tests $BEST rc $?"; tail -1 $R/gpu_tests_$BEST.txt
fi
save
