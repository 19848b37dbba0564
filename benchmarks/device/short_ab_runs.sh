# Sourced by the session-24 device scripts (after `save`, R and ROOT are defined). Calls 1 and 4 ran this loop written
# out in their scripts; it was moved here afterwards, with the same commands.
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
