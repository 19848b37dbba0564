"""The CUDA radix top-p kernel's launch shape (threads a CTA, CTAs a row as a thread-block cluster) and histogram
size (bins a pass), swept. (Session 9 also tried warp-aggregated histogram adds, at commit e88a985: 1.4-12x slower;
removed. Session 10 added the clusters.)

Why: the first version used 2048 bins and at least 256 threads for every row, with a 64-register budget
(``__launch_bounds__(1024)``) at every block size. Short rows paid for zeroing and scanning 2048 bins per pass,
and long rows spilled registers. Each variant is checked against the exact reference before it is timed.

    python3 benchmarks/device/topp_cuda_shapes_probe.py --out DIR
Timing as ``bench topp``'s steady state: 20 calls a CUDA-graph replay, no flush, median of 30 replays; 32 rows.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
from pathlib import Path

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import make_probs, sort_topp, time_gpu
from sparsebench.kernels import topp
from sparsebench.kernels.cuda_topp import check_shape, launch_shape, launch_topp, max_row


def _ints(v: str) -> list[int]:
    return [int(x) for x in v.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768")
    ap.add_argument("--temperatures", default="1.0,4.0")
    ap.add_argument("--threads", type=_ints, default=[64, 128, 256, 512, 1024])
    ap.add_argument("--bins", type=_ints, default=[128, 256, 512, 1024, 2048])
    ap.add_argument("--clusters", type=_ints, default=[1])
    ap.add_argument("--smem-keys", type=_ints, default=[0], help="1: the entries in shared memory, not registers; "
                    "comma-separated to compare")
    ap.add_argument("--p", type=float, default=0.95, help="top-p mass (bench topp's default is 0.9)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        for temp in (float(t) for t in args.temperatures.split(",")):
            probs = make_probs(32, n, temperature=temp, dtype=torch.float32, device="cuda", gen=gen)
            ref = topp.topp_mask_torch(probs, args.p)
            t_sort = statistics.median(time_gpu(functools.partial(sort_topp, probs, args.p), warmup=3, repeats=20,
                                                flush=None, calls=20))
            t_triton = statistics.median(time_gpu(functools.partial(topp.topp_mask_triton, probs, args.p, check=False),
                                                  warmup=3, repeats=30, flush=None, calls=20))
            default = launch_shape(n)
            for threads, bins, cluster, smem in itertools.product(args.threads, args.bins, args.clusters,
                                                                  args.smem_keys):
                if check_shape(n, threads, bins, cluster) is not None or n > max_row(True):
                    continue
                out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
                call = functools.partial(launch_topp, probs, args.p, out, threads=threads, bins=bins, cluster=cluster,
                                         smem_keys=bool(smem))
                call()
                bad = int((out.bool() != ref).any(-1).sum())
                us = statistics.median(time_gpu(call, warmup=3, repeats=30, flush=None, calls=20))
                rows.append(dict(n=n, temperature=temp, threads=threads, bins=bins, cluster=cluster, smem_keys=smem,
                                 us=us,
                                 rows_differing=bad, sort_us=t_sort, triton_us=t_triton, speedup_vs_sort=t_sort / us,
                                 is_default=(threads, cluster) == (default[0], default[2]) and bins == 2048))
                print(f"N={n:>6} T={temp:3.1f} cluster {cluster} threads {threads:>4} bins {bins:>4} smem {smem}: "
                      f"{us:6.2f} us (x{t_sort / us:4.1f} sort {t_sort:6.1f}; triton {t_triton:5.1f})  bad rows {bad}",
                      flush=True)
            best = min((r for r in rows if r["n"] == n and r["temperature"] == temp and not r["rows_differing"]),
                       key=lambda r: r["us"], default=None)
            if best is None:
                print(f"  N={n} T={temp}: no exact variant", flush=True)
                continue
            print(f"  best N={n} T={temp}: cluster {best['cluster']}, {best['threads']} threads, {best['bins']} bins, "
                  f"smem keys {best['smem_keys']}, "
                  f"{best['us']:.2f} us, "
                  f"x{best['speedup_vs_sort']:.1f} vs sort", flush=True)
    save_probe(args.out, "topp_cuda_shapes.json", rows,
               f"20 calls a CUDA-graph replay, no flush, median of 30 replays; 32 rows; p = {args.p}")


if __name__ == "__main__":
    main()
