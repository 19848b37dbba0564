"""Where the top-p kernels' steady-state time goes: the per-launch floor of a graph-captured kernel, with and
without programmatic dependent launch, next to the top-p kernels and one read of the input.

Run on the device (``benchmarks/device/topp_floor.sh``):
    python3 benchmarks/device/topp_floor_probe.py --out DIR            # steady-state table (JSON + console)
    ncu --metrics gpu__time_duration.sum python3 benchmarks/device/topp_floor_probe.py --ncu   # kernel bodies
Steady state is the benchmark's: 20 calls a CUDA-graph replay, no flush, median of the replays.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels import topp


@triton.jit
def _empty(x_ptr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def _row_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    row = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, n, BLOCK):
        j = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + row * n + j, mask=j < n, other=0.0)
    tl.store(out_ptr + row, tl.sum(acc, axis=0))


def calls(probs: torch.Tensor) -> dict[str, object]:
    rows, n = probs.shape
    out = torch.empty(rows, device=probs.device)
    block = min(4096, triton.next_power_of_2(n))
    fns: dict[str, object] = {}
    for pdl in (False, True):
        tag = "_pdl" if pdl else ""
        extra = dict(launch_pdl=True) if pdl else {}
        fns[f"empty{tag}"] = lambda extra=extra, pdl=pdl: _empty[(rows,)](probs, PDL=pdl, **extra)
        fns[f"triton_row_sum{tag}"] = lambda extra=extra, pdl=pdl: _row_sum[(rows,)](
            probs, out, n, BLOCK=block, PDL=pdl, num_warps=8 if block >= 4096 else 4, **extra)
    fns["torch_sum"] = lambda: probs.sum(-1)
    fns["topp_triton"] = lambda: topp.topp_mask_triton(probs, 0.95, check=False)
    if topp.cuda_unusable_reason(probs) is None:
        fns["topp_cuda"] = lambda: topp.topp_mask_cuda(probs, 0.95, check=False)
    return fns


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--ncu", action="store_true", help="launch each call three times eagerly, for ncu")
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        probs = make_probs(32, n, temperature=1.0, dtype=torch.float32, device="cuda", gen=gen)
        for name, fn in calls(probs).items():
            if args.ncu:
                for _ in range(3):
                    fn()
                torch.cuda.synchronize()
                continue
            us = statistics.median(time_gpu(fn, warmup=5, repeats=30, flush=None, calls=20))
            results.append(dict(n=n, call=name, steady_us=us))
            print(f"N={n:>6} {name:>20} {us:7.2f} us", flush=True)
    save_probe(args.out, "topp_floor.json", results, "20 calls a CUDA-graph replay, no flush, median of 30 replays")


if __name__ == "__main__":
    main()
