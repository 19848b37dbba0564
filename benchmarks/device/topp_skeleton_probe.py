"""Probe: how close to one read can any exact top-p come? Kernels that do strictly less than every exact top-p must.

Why: issue 4 asks the top-p kernel to run within 2x of one read of its input. Twenty-three sessions of kernel work
left it at 2.25-5.2x (``benchmarks/RESULTS.md``). Whatever the algorithm, an exact top-p must:

1. read every entry;
2. finish at least one row-wide aggregate before it writes any mask byte. No entry's fate is known until the
   whole row has been seen, because unread entries could hold most of the mass. Most rows also need a second
   aggregate, because the first one (a histogram) leaves a crossing bin that must be resolved;
3. write one mask byte per entry.

The skeleton kernels here do exactly that and nothing more. Each thread holds its entries in registers, as the
top-p kernels do. ``rounds`` dependent float sums run across the row: the row total, then the mass at or above the
mean. A block reduction does that when a row has one CTA. With 2-4 CTAs a row (``global``), each round adds the
row barrier of :mod:`sparsebench.kernels.cuda_topp_grid` (arrival by a release reduction, spin on an acquire load)
and a read of the others' sums from global memory. With a thread-block cluster of 2-8 CTAs a row (``cluster``), it
adds a cluster barrier and a read of the others' sums from their shared memory. Then the kernel writes
``x >= threshold``, where the threshold is computed from the last sum. ``rounds`` = 0 writes ``x >= 1/n``: a read
and a write with no exchange. The mask is written as bytes, as the top-p kernels write it, or (``--writes bits``)
packed 32 entries a word by a warp ballot: a format that would cut the write's traffic to 1/32 of the input's.

So their time is a floor for an exact top-p built the same way, with one CTA or a few CTAs a row, the row in
registers, and exchanges through shared or global memory. The difference between 2x one read and the skeleton's
time is all a real top-p may spend on its histogram, scan and candidate resolution. The steady state is the issue's:
32 rows, 20 calls a CUDA-graph replay, no flush. Every mask is checked against float64 thresholds, apart from
entries within 1e-4 of the threshold.

    python3 benchmarks/device/topp_skeleton_probe.py --out DIR [--sizes 1024,...,131072] [--ctas 1,2,4]
        [--threads 256,512,1024] [--exchanges global,cluster] [--writes bytes,bits]
    python3 benchmarks/device/topp_skeleton_probe.py --plot-from DIR/topp_skeleton.json --plot FIG.png   # any machine
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.read_floor import read_variants
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels.cuda_topp import kernel_name, launch_topp
from sparsebench.kernels.nvrtc import CLUSTER_SOURCE, COMMON_SOURCE, GLOBAL_SYNC_SOURCE, compile_kernel, specialise

#: Registers a thread may hold row entries in, by block size (65,536 registers a multiprocessor; the rest of the
#: kernel needs about 20).
MAX_ITEMS = {256: 64, 512: 64, 1024: 32}

#: How a row's CTAs meet: ``EXCHANGE`` of the kernel.
EXCHANGES = {"global": 1, "cluster": 2}

_SOURCE = r"""
#define NWARPS (THREADS / 32)
#if EXCHANGE == 2
#define CLUSTER_ATTR __cluster_dims__(CTAS, 1, 1)
#else
#define CLUSTER_ATTR
#endif

// x: [rows, n] float32; out: [rows, n] bytes; slots: a float per CTA and round; sync: 8 u32 words a row (word 0 the
// barrier, word 3 the waits given up). thr0 is a double: torch's launcher passes Python floats as doubles.
extern "C" __global__ void CLUSTER_ATTR __launch_bounds__(THREADS, 1) sb_skeleton(
    const float* __restrict__ x, unsigned char* __restrict__ out, float* __restrict__ slots, u32* __restrict__ sync,
    int n, double thr0)
{
    __shared__ float red[2][NWARPS];
    __shared__ float csum[2];  // this CTA's sum of each round, for the cluster's other CTAs
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int row = blockIdx.x / CTAS, c = blockIdx.x % CTAS;
    const int slice = (n + CTAS - 1) / CTAS, begin = c * slice, end = min(n, begin + slice);
    const float* xr = x + (long long)row * n;
    u32* bar = sync + row * 8;
    u32 start = 0u;
    if (CTAS > 1 && t == 0) start = ld_relaxed(bar);  // its top bit cannot flip before this CTA arrives
    float v[ITEMS];
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = begin + i * THREADS + t;
        v[i] = j < end ? xr[j] : 0.0f;
    }
    float thr = (float)thr0;
    #pragma unroll
    for (int r = 0; r < ROUNDS; ++r) {
        const float cut = r == 0 ? 0.0f : thr;  // round 0: the row total; round 1: the mass at or above the mean
        float s = 0.0f;
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) s += v[i] >= cut ? v[i] : 0.0f;
        s = warp_sum(s);
        if (lane == 0) red[r & 1][warp] = s;
        __syncthreads();
        s = warp_sum(lane < NWARPS ? red[r & 1][lane] : 0.0f);
#if EXCHANGE == 2
        if (t == 0) csum[r & 1] = s;
        cluster_sync();  // every CTA's sum of this round is in its shared memory
        s = 0.0f;
        #pragma unroll
        for (int q = 0; q < CTAS; ++q) s += peer_f32(peer(&csum[r & 1], q));
#else
        if (CTAS > 1) {
            if (t == 0) {
                __stcg(slots + blockIdx.x * 2 + r, s);
                red_release(bar, c == 0 ? 0x80000000u - (CTAS - 1u) : 1u);
                u32 spins = 0u;
                // round r waits for the top bit's (r + 1)-th flip since the kernel started
                while ((((ld_acquire(bar) ^ start) >> 31) & 1u) == (u32)(r & 1)) {
                    if (++spins == (1u << 26)) { atomicAdd(bar + 3, 1u); break; }
                }
            }
            __syncthreads();
            s = 0.0f;
            #pragma unroll
            for (int q = 0; q < CTAS; ++q) s += __ldcg(slots + (row * CTAS + q) * 2 + r);
        }
#endif
        thr = s / (float)n;
    }
#if EXCHANGE == 2
    cluster_arrive();  // no CTA leaves while another may still read its sums (the wait is after the mask)
#endif
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = begin + i * THREADS + t;
#if BITS  // entries j of a warp are 32 consecutive ones (n, slices and THREADS are multiples of 32)
        const u32 word = __ballot_sync(FULL, j < end && v[i] >= thr);
        if (lane == 0 && j < end) ((u32*)out)[((long long)row * n + j) >> 5] = word;
#else
        if (j < end) out[(long long)row * n + j] = v[i] >= thr;
#endif
    }
#if EXCHANGE == 2
    cluster_wait();
#endif
}
"""


def skeleton_source(threads: int, ctas: int, items: int, rounds: int, exchange: str, bits: bool) -> str:
    """One skeleton's CUDA source: ``ctas`` CTAs a row of ``threads`` threads holding ``items`` entries each,
    ``rounds`` row-wide sums through ``exchange`` ("global" or "cluster"), the mask as bits or bytes."""
    return specialise(COMMON_SOURCE + GLOBAL_SYNC_SOURCE + CLUSTER_SOURCE + _SOURCE, THREADS=threads, CTAS=ctas,
                      ITEMS=items, ROUNDS=rounds, IN_DTYPE=0, EXCHANGE=EXCHANGES[exchange], BITS=int(bits))


@functools.cache
def _kernel(threads: int, ctas: int, items: int, rounds: int, exchange: str, bits: bool) -> object:
    return compile_kernel(skeleton_source(threads, ctas, items, rounds, exchange, bits), "sb_skeleton",
                          "the top-p skeleton probe kernel")


def expected_threshold(probs: torch.Tensor, rounds: int) -> torch.Tensor:
    """The skeleton's threshold per row, in float64: 1/n, the mean, or the mass at or above the mean over n."""
    x = probs.double()
    n = x.shape[1]
    if rounds == 0:
        return torch.full((x.shape[0], 1), 1.0 / n, dtype=torch.float64, device=x.device)
    thr = x.sum(-1, keepdim=True) / n
    if rounds == 2:
        thr = (x * (x >= thr)).sum(-1, keepdim=True) / n
    return thr


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """The bool mask ``[rows, n]`` of a bit-packed one (bytes ``[rows, n / 8]``, entry ``8 b + k`` in bit ``k`` of
    byte ``b``: the ballot words' order, stored little-endian)."""
    shifts = torch.arange(8, device=words.device, dtype=torch.uint8)
    return ((words[..., None] >> shifts) & 1).reshape(words.shape[0], n).bool()


def fastest(rows: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """The fastest byte-mask skeleton for each (length, rounds), over shapes and exchanges."""
    best: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["n"], r["rounds"])
        if r.get("mask", "bytes") == "bytes" and (key not in best or r["us"] < best[key]["us"]):
            best[key] = r
    return best


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Time over one read against row length: the top-p kernel, the fastest skeleton of each round count, and the
    issue's 2x line."""
    from sparsebench.evals.plots import pyplot, save_figure

    plt = pyplot()
    best = fastest(rows)
    ns = sorted({n for n, _ in best})
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(ns, [best[(n, 0)]["topp_us"] / best[(n, 0)]["read_us"] for n in ns], "o-", color="black",
            label="top-p kernel (launch_topp, p 0.9)")
    labels = {2: "skeleton: two row-wide sums", 1: "skeleton: one row-wide sum", 0: "skeleton: read + mask write"}
    for rounds, style in ((2, "s--"), (1, "^--"), (0, "v:")):
        pts = [(n, best[(n, rounds)]["us"] / best[(n, rounds)]["read_us"]) for n in ns if (n, rounds) in best]
        ax.plot([n for n, _ in pts], [v for _, v in pts], style, label=labels[rounds])
    ax.axhline(2.0, color="red", lw=1, label="2x one read (issue 4)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("entries a row (32 rows, float32)")
    ax.set_ylabel("time / one read")
    ax.set_title("Exact top-p against kernels doing less than it must (H200, steady state)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths


def shapes(n: int, args: argparse.Namespace, sms: int) -> list[tuple[int, int, int, bool, str, int]]:
    """``(ctas, threads, items, bits, exchange, rounds)`` of every skeleton the sweep times at length ``n``."""
    out = []
    for ctas, bits in ((int(c), w == "bits") for c in args.ctas.split(",") for w in args.writes.split(",")):
        for threads in (int(s) for s in args.threads.split(",")):
            slice_n = -(-n // ctas)
            items = -(-slice_n // threads)
            if items > MAX_ITEMS[threads] or (items == 1 and threads > 256) or (bits and slice_n % 32):
                continue  # too many registers; idle threads; ballot words across slices
            for exchange, rounds in [("none", 0)] + [(e, r) for e in args.exchanges.split(",") for r in (1, 2)]:
                if exchange == "global" and args.rows * ctas > sms:
                    continue  # its row barriers need every CTA of the grid running at once
                if ctas == 1 and exchange == "cluster":
                    continue  # one CTA a row: the global variant's block reduction is all there is
                out.append((ctas, threads, items, bits, exchange, rounds))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768,65536,131072")
    ap.add_argument("--ctas", default="1,2,4,8")
    ap.add_argument("--exchanges", default="global,cluster")
    ap.add_argument("--threads", default="256,512,1024")
    ap.add_argument("--writes", default="bytes", help="mask formats: bytes, bits")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--plot-from", type=Path, help="draw a saved topp_skeleton.json instead of measuring")
    ap.add_argument("--plot", type=Path, help="the figure's path (PNG and SVG)")
    args = ap.parse_args()
    if args.plot_from:
        print("\n".join(str(p) for p in plot(json.loads(args.plot_from.read_text())["rows"], args.plot)))
        return
    gen = torch.Generator().manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sync = torch.zeros(args.rows * 8, dtype=torch.int32, device="cuda")
    # a float per CTA and round: as many CTAs a row as the sweep asks for
    slots = torch.zeros(args.rows * max(int(c) for c in args.ctas.split(",")) * 2, dtype=torch.float32,
                        device="cuda")
    timing = functools.partial(time_gpu, warmup=5, repeats=50, flush=None, calls=20)
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        probs = make_probs(args.rows, n, temperature=args.temperature, dtype=torch.float32, device="cuda", gen=gen)
        t_read = min(statistics.median(timing(fn)) for fn in read_variants(probs).values())
        topp_out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
        t_topp = statistics.median(timing(functools.partial(launch_topp, probs, 0.9, topp_out)))
        topp_kernel = kernel_name(n, args.rows, 0)
        print(f"N={n:>6}: one read {t_read:5.2f} us, top-p ({topp_kernel}) {t_topp:5.2f} us = "
              f"{t_topp / t_read:4.2f}x", flush=True)
        x = probs.double()
        for ctas, threads, items, bits, exchange, rounds in shapes(n, args, sms):
            out = torch.zeros(args.rows, n // 8 if bits else n, dtype=torch.uint8, device="cuda")
            kernel = _kernel(threads, ctas, items, rounds, "global" if exchange == "none" else exchange, bits)
            launch = functools.partial(kernel, grid=(args.rows * ctas, 1, 1), block=(threads, 1, 1),
                                       args=[probs, out, slots, sync, n, 1.0 / n])
            launch()
            torch.cuda.synchronize()
            thr = expected_threshold(probs, rounds)
            clear = (x - thr).abs() > 1e-4 * thr
            mask = unpack_bits(out, n) if bits else out.bool()
            wrong = int(((mask != (x >= thr)) & clear).sum())
            t = statistics.median(timing(launch))
            timeouts = int(sync.view(-1, 8)[:, 3].sum())
            results.append(dict(n=n, ctas=ctas, threads=threads, items=items, exchange=exchange, rounds=rounds,
                                mask="bits" if bits else "bytes", us=t, read_us=t_read, topp_us=t_topp,
                                topp_kernel=topp_kernel, wrong_entries=wrong, barrier_timeouts=timeouts))
            print(f"    {ctas} x {threads:>4} ({items:>2} a thread) {exchange:>7} rounds {rounds} "
                  f"{'bits' if bits else 'bytes'}: {t:5.2f} us = {t / t_read:4.2f}x read; wrong {wrong}, "
                  f"timeouts {timeouts}", flush=True)
    save_probe(args.out, "topp_skeleton.json", results,
               f"us: 20 calls a CUDA-graph replay, no flush, median of 50 replays; {args.rows} rows of "
               f"softmax(randn x {args.temperature:g}), float32; read: the fastest of bench.read_floor's variants; "
               "topp: launch_topp's default kernel at p 0.9")


if __name__ == "__main__":
    main()
