"""Launch the CUDA decode kernel at 128K (full, then copies only) a few times: a target for Nsight Compute.

  ncu --kernel-name sb_sparse_decode --launch-skip 1 --launch-count 1 --section WarpStateStats \
      python3 benchmarks/device/cuda_decode_profile_probe.py
"""

import torch

from sparsebench.bench.attention import make_problem, parse_args
from sparsebench.kernels.cuda_decode import CudaKernelConfig, sparse_decode_cuda
from sparsebench.kernels.topk import topk_select

args = parse_args(["--out", "/tmp/probe"])
pb = make_problem(131072, args, "cuda", torch.Generator().manual_seed(0))
sel = topk_select(pb.scores, round(args.keep * pb.n_blocks))
for copies in (False, True):
    for _ in range(2):
        sparse_decode_cuda(pb.q, pb.k, pb.v, sel.indices, sel.counts, block_size=16, scaling=pb.scaling,
                           config=CudaKernelConfig(tile_blocks=2, stages=3, programs_per_sm=4), _copies_only=copies)
torch.cuda.synchronize()
