"""Launch the grid CUDA top-p kernel in one shape, compiled with line info, for Nsight Compute's source page.

Why: the kernel's phase timeline (``topp_grid_probe.py --timeline``) says how many cycles each phase takes, not why;
the warp-state samples per SASS instruction (``ncu --set full --import-source yes``, then ``--page source``) do.

    ncu --clock-control none --set full --import-source yes -k regex:sb_topp_grid -s 5 -c 1 -o REP \\
        python3 benchmarks/device/topp_grid_ncu.py --n 16384 --ctas 4 --threads 512
"""

from __future__ import annotations

import argparse

import torch

from sparsebench.bench.topp import make_probs
from sparsebench.kernels import cuda_topp_grid
from sparsebench.kernels.nvrtc import compile_kernel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--ctas", type=int, default=4)
    ap.add_argument("--threads", type=int, default=512)
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--launches", type=int, default=8)
    args = ap.parse_args()
    cuda_topp_grid.compile_kernel = lambda src, name, what: compile_kernel(  # type: ignore[assignment]
        src, name, what, options=("-std=c++17", "-lineinfo"))
    gen = torch.Generator().manual_seed(0)
    probs = make_probs(args.rows, args.n, temperature=2.0, dtype=torch.float32, device="cuda", gen=gen)
    out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
    for _ in range(args.launches):
        cuda_topp_grid.launch_topp_grid(probs, 0.9, out, ctas=args.ctas, threads=args.threads)
    torch.cuda.synchronize()
    print(f"n {args.n} ctas {args.ctas} threads {args.threads}: {args.launches} launches done")


if __name__ == "__main__":
    main()
