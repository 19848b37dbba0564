#!/usr/bin/env bash
# Session 20: Nsight Compute's warp-state samples per SASS instruction of the grid top-p kernel, as CSV of the source
# page (SASS), plus the details page. Warm caches (--cache-control none: the benchmark's steady state reads its input
# from the L2), the densest sampling, the clocks left alone.
#   bash benchmarks/device/session20_ncu.sh NAME ["N CTAS THREADS" ...]   (default: 16K in 4 CTAs of 512 threads)
# (Call 4 ran an earlier version: ncu's default cache flush and sampling, 8K in one CTA a row and 16K in four.)
NAME=$1; shift; SHAPES=("$@"); [ ${#SHAPES[@]} -eq 0 ] && SHAPES=("16384 4 512")
R=/tmp/$NAME; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
NCU=/usr/local/cuda/bin/ncu
for shape in "${SHAPES[@]}"; do
  set -- $shape; tag=n$1_c$2_t$3
  timeout 150 $NCU --clock-control none --cache-control none --warp-sampling-interval 0 --set full \
    --import-source yes -k regex:sb_topp_grid -s 5 -c 1 -o $R/$tag \
    python3 benchmarks/device/topp_grid_ncu.py --n $1 --ctas $2 --threads $3 > $R/$tag.log 2>&1
  echo "ncu $tag rc $?"; tail -1 $R/$tag.log
  $NCU -i $R/$tag.ncu-rep --page source --csv --print-source sass > $R/${tag}_sass.csv 2> $R/${tag}_sass.err
  echo "sass rc $? $(wc -l < $R/${tag}_sass.csv) lines"
  $NCU -i $R/$tag.ncu-rep --page details > $R/${tag}_details.txt 2>&1
  echo "details rc $?"; grep -E "Duration|Warp Cycles Per Issued" $R/${tag}_details.txt | head -4
done
tar czf $OUT/results.tar.gz -C /tmp $NAME
