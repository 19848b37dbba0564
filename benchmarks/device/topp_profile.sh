#!/usr/bin/env bash
# Session 9: where the top-p kernels' time goes, per instruction (Nsight Compute warp-stall sampling) at 1K and 8K
# entries (topp_profile_probe.py).   bash benchmarks/device/topp_profile.sh
R=/tmp/tpp; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
NCU=/usr/local/cuda/bin/ncu
timeout 150 $NCU --kernel-name regex:'sb_topp_mask|_topp_kernel' --launch-count 8 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section LaunchStats --section Occupancy \
  --section SourceCounters -o $R/topp python3 benchmarks/device/topp_profile_probe.py > $R/ncu.log 2>&1
echo "ncu rc $?"; tail -3 $R/ncu.log
timeout 60 $NCU -i $R/topp.ncu-rep --print-details all > $R/details.txt 2>&1
timeout 90 $NCU -i $R/topp.ncu-rep --page source --print-source sass --csv > $R/source_sass.csv 2>&1
echo "export rc $?"; ls -la $R; grep -E "sb_topp_mask|_topp_kernel|Duration|Warp Cycles Per Issued|Stall" $R/details.txt | head -60
rm -f $R/topp.ncu-rep.tmp; gzip -f $R/source_sass.csv
tar czf $OUT/results.tar.gz --exclude="*.ncu-rep" -C /tmp tpp
