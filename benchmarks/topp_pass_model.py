"""A CPU model of the CUDA radix top-p's passes: how many histogram passes and pairwise candidates a row needs,
with and without the first pass's window (``kernels/cuda_topp.py``: bins over ``[base, max]``, ``base`` half of the
lower bound ``(1 - p) T / n`` of the threshold, everything under it in bin 0).

Why: a pass costs 3000-5000 cycles at 8K-16K entries on the H200 (``benchmarks/RESULTS.md``, eleventh session), and
the kernel takes as long as its slowest row, so the number of passes decides most of the time from 8K up. This
model runs the kernel's bin arithmetic in numpy (float64 masses instead of fixed point: the pass and candidate
counts, not the exact threshold, are what it predicts) on the rows ``bench topp`` times (softmax of Gaussian scores
times a temperature).

    python benchmarks/topp_pass_model.py [--rows 64] [--p 0.95]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def passes(row: np.ndarray, total32: float, p: float, window: bool, bins: int = 2048,
           pairwise_max: int = 64) -> tuple[int, int]:
    """(histogram passes, entries in the last bracket) of one row, as the kernel narrows it."""
    n = row.size
    key = row.view(np.uint32).astype(np.int64)
    target = p * float(row.astype(np.float64).sum())
    lo, hi, above, n_pass, active = 1, int(key.max()), 0.0, 0, n + 1
    while lo < hi and active > pairwise_max:
        base, low_bin = lo, 0
        if window and n_pass == 0:
            b0 = int(np.array([0.5 * (1 - p) * total32 / n], dtype=np.float32).view(np.uint32)[0])
            if lo < b0 < hi:
                base, low_bin = b0, 1
        span = hi - base
        shift = max(0, span.bit_length() - (bins.bit_length() - 1))
        if (span >> shift) >= bins - low_bin:
            shift += 1
        inside = (key >= lo) & (key <= hi)
        k = key[inside]
        b = np.where(k < base, 0, ((k - base) >> shift) + low_bin)
        mass = np.bincount(b, weights=row[inside].astype(np.float64), minlength=bins)
        count = np.bincount(b, minlength=bins)
        at_or_above = above + np.cumsum(mass[::-1])[::-1]
        cross = int(np.nonzero(at_or_above >= target)[0].max())
        above, active = at_or_above[cross] - mass[cross], int(count[cross])
        if cross < low_bin:
            hi = base - 1
        else:
            q = cross - low_bin
            lo, hi = base + (q << shift), min(hi, base + ((q + 1) << shift) - 1)
        n_pass += 1
    return n_pass, active


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--p", type=float, default=0.95)
    ap.add_argument("--sizes", default="1024,4096,8192,16384,32768,65536")
    ap.add_argument("--temperatures", default="1.0,2.0,4.0")
    args = ap.parse_args()
    print("| T | N | passes mean / max, no window | last bracket (median entries) | passes mean / max, window "
          "| last bracket |")
    print("|---|---|---|---|---|---|")
    for temp in (float(t) for t in args.temperatures.split(",")):
        for n in (int(s) for s in args.sizes.split(",")):
            x = torch.softmax(torch.randn(args.rows, n, generator=torch.Generator().manual_seed(0)) * temp, -1)
            totals = x.sum(-1).tolist()  # float32 sums, as the kernel's
            cells = []
            for window in (False, True):
                res = [passes(r, t, args.p, window) for r, t in zip(x.numpy(), totals, strict=True)]
                ps, cs = [r[0] for r in res], [r[1] for r in res]
                cells.append(f"{np.mean(ps):.2f} / {max(ps)} | {int(np.median(cs))}")
            print(f"| {temp} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
