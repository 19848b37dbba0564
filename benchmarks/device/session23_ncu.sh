#!/usr/bin/env bash
# Session 23, call 9: Nsight Compute's warp-state samples per SASS instruction of the short-row top-p kernel (32 rows
# of softmax(randn x 2), p 0.9, its default shape), summed between block barriers by ncu_segments.py. Warm caches
# (--cache-control none), the densest sampling, the clocks left alone; the sixth of 20 plain launches is profiled.
#   bash benchmarks/device/session23_ncu.sh NAME [N ...]   (default: 1024 2048)
NAME=$1; shift; SIZES=("$@"); [ ${#SIZES[@]} -eq 0 ] && SIZES=(1024 2048)
R=/tmp/$NAME; rm -rf $R; mkdir -p $R
. benchmarks/device/device_env.sh $R/env.txt
NCU=/usr/local/cuda/bin/ncu
for n in "${SIZES[@]}"; do
  tag=n$n
  timeout 150 $NCU --clock-control none --cache-control none --warp-sampling-interval 0 --set full \
    --import-source yes -k regex:sb_topp_short -s 5 -c 1 -o $R/$tag python3 -c "
import torch
from sparsebench.bench.topp import make_probs
from sparsebench.kernels.cuda_topp_short import launch_topp_short
x = make_probs(32, $n, temperature=2.0, dtype=torch.float32, device='cuda', gen=torch.Generator().manual_seed(0))
out = torch.empty_like(x, dtype=torch.uint8)
for _ in range(20):
    launch_topp_short(x, 0.9, out)
torch.cuda.synchronize()
" > $R/$tag.log 2>&1
  echo "ncu $tag rc $?"; tail -1 $R/$tag.log
  $NCU -i $R/$tag.ncu-rep --page source --csv --print-source sass > $R/${tag}_sass.csv 2> $R/${tag}_sass.err
  python3 benchmarks/device/ncu_segments.py $R/${tag}_sass.csv > $R/${tag}_segments.md 2>&1
  $NCU -i $R/$tag.ncu-rep --page details > $R/${tag}_details.txt 2>&1
  grep -E "Duration|Warp Cycles Per Issued" $R/${tag}_details.txt | head -3
  cut -c1-230 $R/${tag}_segments.md | head -30
done
tar czf $OUT/results.tar.gz -C /tmp $NAME
