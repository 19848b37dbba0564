"""The CUDA top-p's time against the number of rows at one row length: whether the launch's CTAs (or clusters) all
run in one wave. If they do, fewer rows take about as long as all of them; if the GPU cannot hold every cluster at
once, the time steps up where the rows stop fitting.

    python3 benchmarks/device/topp_rows_probe.py --out DIR [--n 131072] [--rows 4,8,16,24,28,30,32]
Timing as ``bench topp``'s steady state: 20 calls a CUDA-graph replay, no flush, median of 30 replays.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels.cuda_topp import launch_shape, launch_topp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--n", type=int, default=131072)
    ap.add_argument("--rows", default="4,8,16,24,28,30,32")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--p", type=float, default=0.9)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        probs = make_probs(rows, args.n, temperature=args.temperature, dtype=torch.float32, device="cuda", gen=gen)
        out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
        call = functools.partial(launch_topp, probs, args.p, out)
        us = statistics.median(time_gpu(call, warmup=3, repeats=30, flush=None, calls=20))
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        threads, items, cluster = launch_shape(args.n, True, rows, sms)  # the shape launch_topp takes
        results.append(dict(n=args.n, rows=rows, us=us, threads=threads, items=items, cluster=cluster))
        print(f"N={args.n} rows {rows:>3} ({cluster} x {threads} threads a row): {us:7.2f} us", flush=True)
    save_probe(args.out, "topp_rows.json", results, "20 calls a CUDA-graph replay, no flush, median of 30 replays")


if __name__ == "__main__":
    main()
