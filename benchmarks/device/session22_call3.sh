#!/usr/bin/env bash
# Session 22, call 3: the one-warp-a-row feasibility probe (topp_warp_probe.py) at 1K-4K entries, p 0.9 and 0.95,
# temperatures 2 and 1, next to one read and the radix kernel.
#   bash benchmarks/device/session22_call3.sh [NAME]
NAME=${1:-s22c3}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
for cfg in "0.9 2.0" "0.95 2.0" "0.9 1.0"; do
  set -- $cfg
  timeout 150 python3 benchmarks/device/topp_warp_probe.py --out $R/warp_p$1_t$2 --p $1 --temperature $2 \
    > $R/warp_p$1_t$2.log 2>&1; echo "probe p $1 t $2 rc $?"; grep "N=" $R/warp_p$1_t$2.log | cut -c1-160; save
done
