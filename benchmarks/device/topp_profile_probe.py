"""One launch each of the CUDA radix top-p (512 threads) and the Triton top-p kernel on 32 rows of 1K and 8K entries,
for Nsight Compute's per-instruction stall sampling (``benchmarks/device/topp_profile.sh``)."""

from __future__ import annotations

import torch

from sparsebench.bench.topp import make_probs
from sparsebench.kernels import topp

gen = torch.Generator().manual_seed(0)
for n in (1024, 8192):
    probs = make_probs(32, n, temperature=1.0, dtype=torch.float32, device="cuda", gen=gen)
    for _ in range(2):  # the first launch compiles; ncu profiles the second (--launch-skip)
        topp.topp_mask_cuda(probs, 0.95, check=False)
        topp.topp_mask_triton(probs, 0.95, check=False)
    torch.cuda.synchronize()
