#!/usr/bin/env bash
# Session 23, calls 3 and 4: the short-row kernel's GPU test, then the probe (timeline at p 0.9 / temperature 2)
# with the candidates resolved without the block (warp_resolve 1) against the block (warp_resolve 0).
# Call 3: `s23c3 32,64,128`, every warp resolving them from the shared list, with the window's total by integer
# reductions beside the scan and no rest reduction in warps without rest entries. Call 4: `s23c4 32,64`, warp 0
# resolving them by unrolled shuffles, with cycle marks inside the scan.
# (Ran with those calls' probe and kernel: the probe's --warp-resolve flag and the kernel's warp_resolve variant were
# removed after call 4; call 4's kernel file is results/h200_2026-11-29_s23/call4_scan_marks/short_with_warp_resolve.patch.)
#   bash benchmarks/device/session23_call3.sh NAME PAIRWISE
NAME=${1:-s23c3}; PAIRWISE=${2:-32,64,128}; R=/tmp/$NAME; rm -rf $R; mkdir -p $R
save() { tar czf $OUT/results.tar.gz -C /tmp $NAME; }
. benchmarks/device/device_env.sh $R/env.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_topp.py -k short > $R/gpu_tests_short.txt 2>&1
echo "short tests rc $?"; tail -5 $R/gpu_tests_short.txt | cut -c1-300; save
timeout 400 python3 benchmarks/device/topp_short_probe.py --out $R/probe --timeline --p 0.9 --temperatures 2,1 \
  --threads 512,1024 --pairwise $PAIRWISE --bins 256,512 --warp-resolve 1,0 > $R/probe.log 2>&1
echo "probe rc $?"; grep -v -i warn $R/probe.log | grep -v cycles | cut -c1-200 | tail -100; save
