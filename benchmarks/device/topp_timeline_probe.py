"""Where a CUDA radix top-p call's time goes, phase by phase, and what a kernel of the same shape costs at least.

Why: after the eleventh session's barrier cuts the kernel took 4.5 / 5.0 / 5.8 µs at 1K / 2K / 4K entries (32 rows,
steady state), 10-15% short of 10x over sort, and the time a phase takes cannot be told from the total. The kernel
has a ``MARK(i)`` hook at its phase boundaries (no-op by default); this probe compiles it with ``MARK`` recording
thread 0's cycle counter (``clock64``) into a buffer, launches it (warm L2, plain launches), and reports the median
cycles of each phase over CTAs and runs:

* load + sum/max (0-1), cluster combine + fixed-point masses (1-2),
* per pass: histogram adds (to 3, 6, 9), scan (to 4, 7, 10), crossing (to 5, 8, 11),
* pairwise gather (to 12) and pairwise sums (to 13), the mask write (to 14), the whole CTA (0-14).

It also times, as ``bench topp`` does (20 calls a CUDA-graph replay, no flush), the kernel itself and a *floor*
kernel (one CTA a row, the same threads) that only loads its row, reduces nothing and writes ``x > 0``: no one-CTA
top-p kernel of that shape can be faster than the floor.

    python3 benchmarks/device/topp_timeline_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels import cuda_topp
from sparsebench.kernels.nvrtc import COMMON_SOURCE, DTYPE_CODES, compile_kernel, specialise

#: Slots a CTA's marks take in the buffer (MARK indices 0-14).
SLOTS = 16
PHASES = {"load+sum": (0, 1), "combine+f(x)": (1, 2), "p1 hist": (2, 3), "p1 scan": (3, 4), "p1 cross": (4, 5),
          "p2 hist": (5, 6), "p2 scan": (6, 7), "p2 cross": (7, 8), "pair gather": (None, 12), "pair sums": (12, 13),
          "write": (None, 14), "total": (0, 14)}

_MARK = f"#define MARK(i) if (threadIdx.x == 0) ((long long*)passes_out)[blockIdx.x * {SLOTS} + (i)] = clock64();\n"

_FLOOR = r"""
extern "C" __global__ void __launch_bounds__(THREADS, 1) sb_floor(
    const void* __restrict__ x, unsigned char* __restrict__ out, int n, int stride_x, int stride_out)
{
    const int t = threadIdx.x, row = blockIdx.x;
    const void* xrow = row_of(x, row, stride_x);
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = i * THREADS + t;
        if (j < n) out[(long long)row * stride_out + j] = load_value(xrow, j) > 0.0f;
    }
}
"""


def phase_cycles(marks: torch.Tensor) -> dict[str, float]:
    """Median cycles of each phase over the CTAs of one launch (``marks`` [CTAs, SLOTS], 0 where not reached)."""
    out: dict[str, float] = {}
    for name, (a, b) in PHASES.items():
        vals = []
        for row in marks.tolist():
            if not row[b]:
                continue
            start = a if a is not None else max(i for i in range(b) if row[i])
            if row[start]:
                vals.append(row[b] - row[start])
        if vals:
            out[name] = float(statistics.median(vals))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=2.0,
                    help="rows are softmax(randn * temperature), as in bench topp (whose default is 2.0)")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    rows_out = []
    for n in (int(s) for s in args.sizes.split(",")):
        probs = make_probs(32, n, temperature=args.temperature, dtype=torch.float32, device="cuda", gen=gen)
        threads, items, cluster = cuda_topp.launch_shape(n, cuda_topp.clusters_supported(0), 32,
                                                         props.multi_processor_count)
        # The launch's own choices for this shape (launch_topp): where the entries wait, how large a last bracket
        # the pairwise step takes.
        smem_keys = cuda_topp.keys_in_shared(threads, items)
        src = cuda_topp.source(items=items, dtype_code=DTYPE_CODES[probs.dtype], write_passes=False, threads=threads,
                               cluster=cluster, smem_keys=smem_keys, pairwise=cuda_topp.pairwise_max(n, threads))
        kernel = compile_kernel(_MARK + src, "sb_topp_mask", "the instrumented top-p kernel")
        if smem_keys:
            cuda_topp.allow_keys_in_shared(kernel, items, threads)
        out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
        marks = torch.zeros(32 * cluster, SLOTS, dtype=torch.int64, device="cuda")
        per_run = []
        for _ in range(args.runs):
            marks.zero_()
            kernel(grid=(32 * cluster, 1, 1), block=(threads, 1, 1),
                   shared_mem=cuda_topp.keys_bytes(items, threads) if smem_keys else 0,
                   args=[probs, out, marks, n, probs.stride(0), out.stride(0), 0.95])
            torch.cuda.synchronize()
            per_run.append(phase_cycles(marks.cpu()))
        ok = bool(torch.equal(out.bool().cpu(), cuda_topp_reference(probs)))
        phases = {k: statistics.median(r[k] for r in per_run if k in r) for k in PHASES if any(k in r for r in per_run)}
        floor = compile_kernel(specialise(COMMON_SOURCE + _FLOOR, IN_DTYPE=DTYPE_CODES[probs.dtype],
                                          ITEMS=-(-n // threads), THREADS=threads), "sb_floor", "the floor kernel")
        floor_call = functools.partial(floor, grid=(32, 1, 1), block=(threads, 1, 1),
                                       args=[probs, out, n, probs.stride(0), out.stride(0)])
        t_floor = statistics.median(time_gpu(floor_call, warmup=3, repeats=30, flush=None, calls=20))
        call = functools.partial(cuda_topp.launch_topp, probs, 0.95, out, short=False)  # the radix kernel
        t_kernel = statistics.median(time_gpu(call, warmup=3, repeats=30, flush=None, calls=20))
        rows_out.append(dict(n=n, threads=threads, items=items, cluster=cluster, phases_cycles=phases,
                             kernel_us=t_kernel, floor_us=t_floor, exact=ok))
        print(f"N={n:>6} {cluster}x{threads} items {items}: kernel {t_kernel:5.2f} us, floor {t_floor:5.2f} us, "
              f"exact {ok}; cycles " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()), flush=True)
    save_probe(args.out, "topp_timeline.json", rows_out,
               "cycles: thread 0's clock64 at the kernel's MARK points, median over CTAs then over runs (plain "
               "launches, warm L2); us: 20 calls a CUDA-graph replay, no flush, median of 30 replays; 32 rows, p 0.95",
               sm_clock_mhz=getattr(props, "clock_rate", 0) / 1000, temperature=args.temperature)


def cuda_topp_reference(probs: torch.Tensor) -> torch.Tensor:
    """The exact float64 reference mask, on the CPU."""
    from sparsebench.kernels.topp import topp_mask_torch

    return topp_mask_torch(probs.cpu(), 0.95)


if __name__ == "__main__":
    main()
