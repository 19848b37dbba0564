"""Probe: the short-row top-p kernel (``sparsebench/kernels/cuda_topp_short.py``) against the radix kernel and one
read, at 1K-8K entries and several block sizes, with every mask checked against the float64 reference.

Why: the radix kernel is 2.6-4.4x one read at 1K-8K (twenty-second session), where 2x is asked. The short-row kernel
drops its float sum, its float64 scaling and its 2,048-bin block scan (module docstring); this measures what that
buys, in the issue's steady state (32 rows, 20 calls a CUDA-graph replay, no flush).

    python3 benchmarks/device/topp_short_probe.py --out DIR [--sizes 1024,2048,4096,8192] [--threads 128,256,512,1024]
        [--pairwise 64,128] [--timeline]

``--timeline`` also compiles the kernel with its ``MARK`` hook recording thread 0's cycle counter and reports the
median cycles of each phase over CTAs and runs (p and temperature: the first of each).
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.read_floor import read_variants
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels import cuda_topp_short
from sparsebench.kernels.cuda_topp import launch_topp
from sparsebench.kernels.cuda_topp_short import check_short_shape, launch_topp_short
from sparsebench.kernels.nvrtc import DTYPE_CODES, compile_kernel
from sparsebench.kernels.topp import topp_mask_torch

#: Phases between the kernel's MARK points (pass 1; a second pass adds 5-7).
PHASES = {"load+max": (0, 1), "hist": (1, 2), "scan": (2, 3), "gather": (3, 4), "pass 2": (4, 7),
          "pairwise": (None, 14), "write": (14, 15), "total": (0, 15),
          # inside pass 1's scan (warp 0): bins loaded and summed, totals reduced, scan, target, crossing, published
          "s:load": (2, 16), "s:totals": (16, 17), "s:shfl": (17, 18), "s:target": (18, 19), "s:cross": (19, 20),
          "s:publish": (20, 3)}
_MARK = ("#define MARK(i) if (threadIdx.x == 0) ((long long*)passes_out)[blockIdx.x * 32 + (i)] = clock64();\n"
         "#define MARK_SCAN(i) if (n_pass == 0) MARK(16 + (i))\n")


def timeline(probs: torch.Tensor, p: float, threads: int, pairwise: int, bins: int, runs: int = 20) -> dict[str, float]:
    """Median cycles of each phase (thread 0's clock64 at the MARK points) over CTAs, then over runs."""
    rows, n = probs.shape
    items = -(-n // threads)
    kernel = compile_kernel(_MARK + cuda_topp_short.source(items=items, threads=threads, write_passes=False,
                                                           dtype_code=DTYPE_CODES[probs.dtype], pairwise=pairwise,
                                                           bins=bins),
                            "sb_topp_short", "the instrumented short-row kernel")
    out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
    marks = torch.zeros(rows, 32, dtype=torch.int64, device="cuda")
    per_run: list[dict[str, float]] = []
    for _ in range(runs):
        marks.zero_()
        kernel(grid=(rows, 1, 1), block=(threads, 1, 1), args=[probs, out, marks, n, n, n, p])
        torch.cuda.synchronize()
        got: dict[str, list[int]] = {}
        for m in marks.cpu().tolist():
            for name, (a, b) in PHASES.items():
                start = a if a is not None else max(i for i in range(b) if m[i])
                if m[b] and m[start]:
                    got.setdefault(name, []).append(m[b] - m[start])
        per_run.append({k: float(statistics.median(v)) for k, v in got.items()})
    return {k: statistics.median(r[k] for r in per_run if k in r) for k in PHASES if any(k in r for r in per_run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default="1024,2048,4096,8192")
    ap.add_argument("--threads", default="128,256,512,1024")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--p", default="0.9,0.95,0.99", help="the first is timed against the radix kernel")
    ap.add_argument("--temperatures", default="2,1,4", help="the first is timed against the radix kernel")
    ap.add_argument("--pairwise", default="64", help="largest brackets resolved pairwise (powers of two)")
    ap.add_argument("--bins", default="256", help="bins a pass: 128, 256, 512")
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    results = []
    timing = functools.partial(time_gpu, warmup=5, repeats=50, flush=None, calls=20)
    for n in (int(s) for s in args.sizes.split(",")):
        for ti, temp in enumerate(float(s) for s in args.temperatures.split(",")):
            probs = make_probs(args.rows, n, temperature=temp, dtype=torch.float32, device="cuda", gen=gen)
            t_read = min(statistics.median(timing(fn)) for fn in read_variants(probs).values())
            for pi, p in enumerate(float(s) for s in args.p.split(",")):
                ref = topp_mask_torch(probs, p)
                radix_out = torch.empty_like(probs, dtype=torch.uint8)
                radix = functools.partial(launch_topp, probs, p, radix_out, short=False)
                t_radix = statistics.median(timing(radix))
                shapes = [(int(a), int(b), int(c)) for a in args.threads.split(",") for b in args.pairwise.split(",")
                          for c in args.bins.split(",")]
                for threads, pairwise, bins in shapes:
                    if check_short_shape(n, threads, bins, pairwise) is not None:
                        continue
                    out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
                    passes = torch.zeros(args.rows, dtype=torch.int32, device="cuda")
                    kw = dict(threads=threads, pairwise=pairwise, bins=bins)
                    launch_topp_short(probs, p, out, passes, **kw)
                    torch.cuda.synchronize()
                    bad = int((out.bool() != ref).any(-1).sum())
                    pc = passes.cpu().tolist()
                    t = statistics.median(timing(functools.partial(launch_topp_short, probs, p, out, **kw)))
                    phases = timeline(probs, p, **kw) if args.timeline and ti == 0 and pi == 0 else {}
                    results.append(dict(n=n, temperature=temp, p=p, threads=threads, pairwise=pairwise, bins=bins, us=t,
                                        read_us=t_read, radix_us=t_radix, rows_differing=bad, passes=pc,
                                        phases_cycles=phases))
                    print(f"N={n:>5} T={temp:g} p={p:g} {threads:>4} x pair {pairwise:>3} bins {bins}: "
                          f"{t:5.2f} us "
                          f"({t / t_read:4.2f}x read {t_read:4.2f}; radix {t_radix:5.2f} = {t_radix / t_read:4.2f}x), "
                          f"differing {bad}, passes max {max(pc)} mean {statistics.mean(pc):.2f}", flush=True)
                    if phases:
                        print("    cycles: " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()), flush=True)
    save_probe(args.out, "topp_short.json", results,
               f"us: 20 calls a CUDA-graph replay, no flush, median of 50 replays; {args.rows} rows of softmax(randn x "
               "temperature); read: the fastest of bench.read_floor's variants; radix: launch_topp(short=False)")


if __name__ == "__main__":
    main()
