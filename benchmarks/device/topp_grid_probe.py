"""The grid CUDA top-p kernel (``kernels/cuda_topp_grid.py``) timed against the radix kernel's default, torch ``sum``
(what ``bench topp`` calls one read) and a grid that only reads; or (``--timeline``) its phases.

Why: the radix kernel (``kernels/cuda_topp.py``) keeps a row in one CTA or a cluster of 2-4, and from 8K entries up
it stayed 2.3-3.2x one read of its input, where the project asks 2x. A grid design gives a row several ordinary
CTAs that meet only in global memory. Before the kernel existed, this probe timed the design's two data passes
alone (``--parts``, session 17's second call):

* pass 1 (``grid_hist``): each CTA bins its slice by the float's top 11 bits, adds each entry's significand to its
  bin in shared memory, adds its non-empty bins to the row's histogram in global memory; the last CTA (a ticket)
  scans the row's bins and stores the crossing bin;
* pass 2 (``grid_mask``): each CTA reads its slice again, writes the mask outside the crossing bin and appends the
  bin's entries to the row's candidate list (one global atomic each: slow, 50 µs at 128K; the kernel reserves one
  range a CTA).

``--timeline`` runs the kernel with its ``MARK`` points on (thread 0's cycle counter at 10 phase boundaries) and
prints each phase's median and maximum over the CTAs.

    python3 benchmarks/device/topp_grid_probe.py --out DIR [--sizes 8192,...] [--ctas 2,4] [--threads 512,1024]
        [--parts] [--timeline]
Timing as ``bench topp``'s steady state: 20 calls a CUDA-graph replay, no flush, median of 30 replays; 32 rows of
softmax(randn x 2), p 0.9.
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels import topp
from sparsebench.kernels.cuda_topp import launch_topp
from sparsebench.kernels.cuda_topp_grid import MAX_PER_THREAD, grid_shape, grid_timeouts, launch_topp_grid
from sparsebench.kernels.nvrtc import COMMON_SOURCE, compile_kernel, specialise

_SOURCE = r"""
#define NB 2048
#define HB(b) ((b) + ((b) >> 5))

__device__ __forceinline__ void mass_add(u32* hlo, u32* hhi, u32 w, u32 f) {
    const u32 old = atomicAdd(&hlo[w], f);
    if (old + f < old) atomicAdd(&hhi[w], 1u);
}

// An entry's significand as an integer (the hidden bit included; subnormals without it): within a bin all entries
// share the exponent, so these add up exactly.
__device__ __forceinline__ u32 significand(u32 k) { return (k & 0x7fffffu) | (k >= 0x800000u ? 0x800000u : 0u); }

extern "C" __global__ void __launch_bounds__(THREADS) grid_read(const float* __restrict__ x, int n, int stride,
                                                               int chunk, float* __restrict__ part) {
    const int row = blockIdx.x / CTAS, c = blockIdx.x % CTAS;
    const float* xr = x + (long long)row * stride;
    const int first = c * chunk, last = min(n, first + chunk);
    float s = 0.0f;
    for (int j = first + 4 * threadIdx.x; j < last; j += 4 * THREADS) {
        const float4 v = *(const float4*)(xr + j);
        s += (v.x + v.y) + (v.z + v.w);
    }
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) atomicAdd(&part[row], s);
}

extern "C" __global__ void __launch_bounds__(THREADS) grid_hist(const float* __restrict__ x, int n, int stride,
        int chunk, u64* __restrict__ ghist, u32* __restrict__ tickets, u32* __restrict__ cross,
        u32* __restrict__ cand_cnt, double p) {
    __shared__ u32 hlo[HB(NB)], hhi[HB(NB)];
    __shared__ u64 ws[32];
    __shared__ u32 s_last, s_top;
    const int t = threadIdx.x, row = blockIdx.x / CTAS, c = blockIdx.x % CTAS;
    for (int w = t; w < HB(NB); w += THREADS) { hlo[w] = 0u; hhi[w] = 0u; }
    if (t == 0) s_top = 0u;
    __syncthreads();
    const float* xr = x + (long long)row * stride;
    const int first = c * chunk, last = min(n, first + chunk);
    for (int j = first + 4 * t; j < last; j += 4 * THREADS) {
        const uint4 v = *(const uint4*)(xr + j);
        const u32 k[4] = {v.x & 0x7fffffffu, v.y & 0x7fffffffu, v.z & 0x7fffffffu, v.w & 0x7fffffffu};
        #pragma unroll
        for (int i = 0; i < 4; ++i)
            if (k[i]) mass_add(hlo, hhi, HB(k[i] >> 20), significand(k[i]));
    }
    __syncthreads();
    u64* gh = ghist + (long long)row * NB;
    for (int b = t; b < NB; b += THREADS) {
        const u64 m = ((u64)hhi[HB(b)] << 32) | hlo[HB(b)];
        if (m) atomicAdd(gh + b, m);
    }
    __threadfence();
    __syncthreads();
    if (t == 0) s_last = atomicAdd(&tickets[row], 1u) == CTAS - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    // The last CTA of the row: the bins in one fixed-point scale, scanned from the top.
    constexpr int PER = NB / THREADS;
    u64 s[PER];
    u32 top = 0u;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int b = NB - 1 - (t * PER + i);  // descending: thread 0 holds the top bins
        s[i] = __ldcg(gh + b);
        if (s[i]) top = max(top, (u32)b);
    }
    atomicMax(&s_top, top);
    __syncthreads();
    const int eref = (int)(s_top >> 3) - 21;  // unit 2**(eref - 150): the top binade's sums stay under 2**62
    u64 f[PER], mine = 0ull;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int b = NB - 1 - (t * PER + i);
        const int sh = max(b >> 3, 1) - eref;
        f[i] = sh >= 0 ? s[i] << sh : (sh > -64 ? s[i] >> -sh : 0ull);
        mine += f[i];
        __stcg(gh + b, 0ull);
    }
    u64 total;
    u64 above = block_scan_once(mine, ws, &total);
    const u64 target = (u64)(p * (double)total);
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        if (above < target && above + f[i] >= target) cross[row] = NB - 1 - (t * PER + i);
        above += f[i];
    }
    if (t == 0) { tickets[row] = 0u; cand_cnt[row] = 0u; }
}

extern "C" __global__ void __launch_bounds__(THREADS) grid_mask(const float* __restrict__ x, int n, int stride,
        int chunk, const u32* __restrict__ cross, unsigned char* __restrict__ out, int stride_out,
        u32* __restrict__ cand_key, u32* __restrict__ cand_pos, u32* __restrict__ cand_cnt, int cap) {
    const int t = threadIdx.x, row = blockIdx.x / CTAS, c = blockIdx.x % CTAS;
    const u32 b = __ldcg(cross + row);
    const float* xr = x + (long long)row * stride;
    unsigned char* orow = out + (long long)row * stride_out;
    const int first = c * chunk, last = min(n, first + chunk);
    for (int j = first + 4 * t; j < last; j += 4 * THREADS) {
        const uint4 v = *(const uint4*)(xr + j);
        const u32 k[4] = {v.x & 0x7fffffffu, v.y & 0x7fffffffu, v.z & 0x7fffffffu, v.w & 0x7fffffffu};
        u32 m = 0u;
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 kb = k[i] >> 20;
            m |= (k[i] && kb > b ? 1u : 0u) << (8 * i);
            if (k[i] && kb == b) {
                const u32 slot = atomicAdd(cand_cnt + row, 1u);
                if (slot < (u32)cap) { cand_key[row * cap + slot] = k[i]; cand_pos[row * cap + slot] = j + i; }
            }
        }
        *(u32*)(orow + j) = m;
    }
}
"""


def _chain(*calls: object) -> None:
    for call in calls:
        call()  # type: ignore[operator]


def _ints(v: str) -> list[int]:
    return [int(x) for x in v.split(",")]


@functools.cache
def _kernels(threads: int, ctas: int) -> tuple:
    src = specialise(COMMON_SOURCE + _SOURCE, IN_DTYPE=0, THREADS=threads, CTAS=ctas)
    return tuple(compile_kernel(src, name, "the grid top-p probe") for name in ("grid_read", "grid_hist", "grid_mask"))


def _fits(n: int, rows: int, sms: int, ctas: int, threads: int) -> bool:
    """Whether the grid kernel runs this shape: one wave, and at most MAX_PER_THREAD entries a thread."""
    return grid_shape(n, rows, sms, ctas) is not None and -(-n // ctas) <= MAX_PER_THREAD * threads


PHASES = ("load + level 1", "flush", "barrier A", "level-1 scan", "candidate bits", "count scan + list",
          "barrier B + list read", "levels 2-3", "mask write")


def timeline(n: int, threads: int, ctas: int, p: float, rows: int, gen: torch.Generator) -> dict:
    """Each CTA's phase durations (cycles of its thread 0, ``MARK`` points of the grid kernel), median and maximum
    over the CTAs of the last of 20 plain launches, warm L2."""
    probs = make_probs(rows, n, temperature=2.0, dtype=torch.float32, device="cuda", gen=gen)
    out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
    tl = torch.zeros(rows * ctas, 16, dtype=torch.int64, device="cuda")
    for _ in range(20):
        launch_topp_grid(probs, p, out, ctas=ctas, threads=threads, timeline=tl)
    torch.cuda.synchronize()
    marks = tl[:, : len(PHASES) + 1].cpu()
    d = (marks[:, 1:] - marks[:, :-1]).double()
    rec = {"n": n, "threads": threads, "ctas": ctas,
           "median_cycles": dict(zip(PHASES, d.median(0).values.tolist(), strict=True)),
           "max_cycles": dict(zip(PHASES, d.max(0).values.tolist(), strict=True)),
           "total_median_cycles": float((marks[:, -1] - marks[:, 0]).double().median())}
    print(f"timeline N={n} {ctas} x {threads}: total {rec['total_median_cycles']:.0f} cycles (median CTA); "
          + "; ".join(f"{k} {v:.0f} (max {rec['max_cycles'][k]:.0f})" for k, v in rec["median_cycles"].items()),
          flush=True)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", type=_ints, default=[8192, 16384, 32768, 65536, 131072])
    ap.add_argument("--ctas", type=_ints, default=[2, 4])
    ap.add_argument("--threads", type=_ints, default=[512, 1024])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--parts", action="store_true", help="also time the two passes alone (session 17's first call)")
    ap.add_argument("--timeline", action="store_true", help="only the grid kernel's phase timeline, at each size "
                    "and shape")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    if args.timeline:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        recs = [timeline(n, threads, ctas, args.p, args.rows, gen) for n in args.sizes for threads in args.threads
                for ctas in args.ctas if _fits(n, args.rows, sms, ctas, threads)]
        save_probe(args.out, "topp_grid_timeline.json", recs, "cycles of thread 0 a CTA, last of 20 plain launches")
        return
    rows = args.rows
    out_rows = []
    for n in args.sizes:
        probs = make_probs(rows, n, temperature=2.0, dtype=torch.float32, device="cuda", gen=gen)
        ref = topp.topp_mask_torch(probs, args.p)
        t_sum = statistics.median(time_gpu(functools.partial(torch.sum, probs, -1), warmup=3, repeats=30,
                                           flush=None, calls=20))
        radix_out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
        radix = functools.partial(launch_topp, probs, args.p, radix_out, short=False)
        t_radix = statistics.median(time_gpu(radix, warmup=3, repeats=30, flush=None, calls=20))
        sms = torch.cuda.get_device_properties(probs.device).multi_processor_count
        for threads in args.threads:
            for ctas in args.ctas:
                chunk = -(-n // ctas)
                chunk = -(-chunk // 4) * 4
                if chunk < 4 * threads or not _fits(n, rows, sms, ctas, threads):  # a vector a thread; one wave
                    continue
                k_read, k_hist, k_mask = _kernels(threads, ctas)
                dev = probs.device
                part = torch.zeros(rows, device=dev)
                ghist = torch.zeros(rows, 2048, dtype=torch.int64, device=dev)
                tickets = torch.zeros(rows, dtype=torch.int32, device=dev)
                cross = torch.zeros(rows, dtype=torch.int32, device=dev)
                cnt = torch.zeros(rows, dtype=torch.int32, device=dev)
                cap = n
                ckey = torch.zeros(rows, cap, dtype=torch.int32, device=dev)
                cpos = torch.zeros(rows, cap, dtype=torch.int32, device=dev)
                mask = torch.zeros(rows, n, dtype=torch.uint8, device=dev)
                grid, block = (rows * ctas, 1, 1), (threads, 1, 1)

                read = functools.partial(k_read, grid=grid, block=block,
                                         args=[probs, n, probs.stride(0), chunk, part])
                hist = functools.partial(k_hist, grid=grid, block=block, args=[
                    probs, n, probs.stride(0), chunk, ghist, tickets, cross, cnt, float(args.p)])
                both = functools.partial(_chain, hist, functools.partial(k_mask, grid=grid, block=block, args=[
                    probs, n, probs.stride(0), chunk, cross, mask, mask.stride(0), ckey, cpos, cnt, cap]))
                both()
                torch.cuda.synchronize()
                # Check: above the crossing bin kept, under it dropped, as the exact mask does; the bin's entries
                # are the candidates (their count, against the reference's bin).
                keys = probs.view(torch.int32) & 0x7FFFFFFF
                kb = keys >> 20
                c = cross.long()[:, None]
                outside = kb != c
                wrong = int(((mask.bool() != ref) & outside).any(-1).sum())
                in_bin = (kb == c).sum(-1)
                cnt_ok = bool((cnt.long() == in_bin).all())
                grid_out = torch.empty(probs.shape, dtype=torch.uint8, device=dev)
                grid = functools.partial(launch_topp_grid, probs, args.p, grid_out, ctas=ctas, threads=threads)
                grid_out.zero_()
                grid()
                grid_bad = int((grid_out.bool() != ref).any(-1).sum())
                parts = (("read", read), ("hist", hist), ("hist_mask", both)) if args.parts else (("read", read),)
                times = {name: statistics.median(time_gpu(fn, warmup=3, repeats=30, flush=None, calls=20))
                         for name, fn in (*parts, ("grid", grid))}
                rec = dict(n=n, threads=threads, ctas=ctas, torch_sum_us=t_sum, read_us=times["read"],
                           grid_us=times["grid"],
                           grid_rows_differing=grid_bad, radix_us=t_radix,
                           grid_timeouts=grid_timeouts(dev), hist_us=times.get("hist"),
                           hist_mask_us=times.get("hist_mask"), rows_wrong_outside_bin=wrong,
                           candidates_counted=cnt_ok, candidates_max=int(in_bin.max()),
                           candidates_median=float(in_bin.float().median()))
                out_rows.append(rec)
                print(f"N={n:>6} threads {threads:>4} ctas {ctas:>2}: grid kernel {times['grid']:6.2f} us "
                      f"(bad rows {grid_bad}, timeouts {grid_timeouts(dev)}; "
                      f"radix {t_radix:6.2f}; torch sum "
                      f"{t_sum:5.2f}, 2x {2 * t_sum:5.2f}); read {times['read']:6.2f}"
                      + (f"  hist {times['hist']:6.2f}  hist+mask {times['hist_mask']:6.2f}" if args.parts else "")
                      + f"  wrong rows {wrong}  cand ok {cnt_ok} max {int(in_bin.max())}", flush=True)
    save_probe(args.out, "topp_grid.json", out_rows,
               f"20 calls a CUDA-graph replay, no flush, median of 30 replays; {rows} rows, p {args.p}")


if __name__ == "__main__":
    main()
