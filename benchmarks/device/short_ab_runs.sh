# Sourced by the session-24 device scripts (after `save`, R and ROOT are defined). Calls 1, 4, 5 and 6 ran these loops
# written out in their scripts; they were moved here afterwards, with the same commands.
#   short_ab_runs RUNS ARGS...   benchmarks/device/topp_short_probe.py ARGS in the working tree ("new") and in the
#                                untracked copy of the session's start in ab_base/ ("base"), alternating, RUNS times
#                                each, into $R/short_{new,base}_RUN; each run's p 0.9 lines echoed, results saved
short_ab_runs() {
  local runs=$1; shift
  for run in $(seq 1 "$runs"); do
    for tree in new base; do
      local D=$ROOT; [ $tree = base ] && D=$ROOT/ab_base
      (cd $D && PYTHONPATH=/tmp/site:$D timeout 150 python3 benchmarks/device/topp_short_probe.py "$@" \
        --out $R/short_${tree}_$run > $R/short_${tree}_$run.log 2>&1; echo "short $tree $run rc $?")
      grep "^N=" $R/short_${tree}_$run.log | grep "p=0.9 " | cut -c1-120; save
    done
  done
}
#   short_timelines              the short-row kernel's phase timeline (topp_short_probe.py --timeline) in its default
#                                shapes at 1K, 2K and 4K, temperature 2, p 0.9, into $R/timeline_N
short_timelines() {
  for shape in "1024 512 64" "2048 512 64" "4096 1024 128"; do
    set -- $shape
    timeout 100 python3 benchmarks/device/topp_short_probe.py --sizes $1 --threads $2 --pairwise $3 --bins 256 \
      --temperatures 2 --p 0.9 --timeline --out $R/timeline_$1 > $R/timeline_$1.log 2>&1
    echo "timeline $1 rc $?"; grep -E "^N=|cycles" $R/timeline_$1.log | cut -c1-250; save
  done
}
