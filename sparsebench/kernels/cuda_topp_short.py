"""Sorting-free top-p for short rows (up to 8K entries), one CTA a row, scaled by the row's maximum (CUDA, NVRTC).

Why this exists next to the radix kernel (:mod:`sparsebench.kernels.cuda_topp`): at 1K-8K entries that kernel spends
most of its time outside the histogram itself. Its phase timeline at 1K (twenty-second session, 5,536 cycles) holds
1,366 cycles of load and float sum (the sum sets its fixed-point scale), 190 of float64 scaling, 1,272 for a block
scan of 2,048 bins and 554 to place the crossing. Here:

* **The scale is the row's maximum, not its sum.** Each entry's mass is ``f(x) = floor(x 2**(150 - e + K))`` with
  ``e`` the maximum's (biased, at least 1) exponent and ``K = 39 - ceil(log2(N))`` for rows of at most ``N`` entries:
  an integer shift of the 24-bit significand, exact for entries within ``K`` binades of the maximum and floored
  (under one unit) below. ``f`` is under ``2**(24 + K)``, so a row's total stays under ``2**63``. A maximum is one
  ``redux.sync`` a warp; a float sum is five shuffles, and the float64 multiply an entry is gone.
* **A few hundred bins under the maximum, scanned by one warp.** The first pass bins ``(max - key) >> (27 - b)``
  (``2**b`` bins of ``2**-(b - 4)`` binade, 16 binades under the maximum; ``b`` = 8 by default) and sums everything
  lower in registers, a warp at a time, as the "rest". Warp 0 alone reads the bins (eight a lane at 256, in 16-byte
  loads) and scans them with one warp scan, whose last lane gives the total: no block scan, no barrier inside it.
  The other warps wait at the barrier that publishes the bracket.
* The rest is the radix kernel's: the crossing bin's entries are gathered (a slot counter, no counts), and up to
  ``pairwise`` (64 or 128) of them are resolved by exact pairwise sums; more take another pass over the bracket (any
  bracket fits ``2**b`` bins in at most ``1 + ceil(31 / b)`` passes; attention-like rows need one). The acceptance
  margin is the radix kernel's formula (``E = F_T 2**-51 + 2N + 4`` units, which bounds the floors, so under
  ``4e-11 T`` at 8K entries): the kept mass always reaches ``p T``, and the mask equals the float64 sort-based
  reference's (:func:`sparsebench.kernels.topp.topp_mask_torch`) except in near-ties. Ties at the threshold are all
  kept.

Measured on the H200 (``benchmarks/RESULTS.md``, twenty-third session; ``sparsebench bench topp --suites main
--calls-per-replay 20 --no-flush``, 32 rows of softmax(randn x 2), p 0.9, two runs): 3.18-3.21 / 3.89 / 4.90 µs at
1K / 2K / 4K entries, against the radix kernel's 3.68 / 4.34 / 4.94 (twenty-second session), so 2.25 / 2.66-2.67 /
3.19-3.20x one read (:mod:`sparsebench.bench.read_floor`; 2x is asked) and 10.2-12.6x faster than sort. On rows
of temperature 1 at 4K its default shape took 5.2 µs against the radix kernel's 6.3 (the probe, two calls).

Where the cycles go at 1K (``benchmarks/device/topp_short_probe.py --timeline``, 512 threads, 256 bins, thread 0's
clock): load and maximum 735, histogram 1,000, warp 0's scan 1,140-1,170, gather 580, pairwise sums 815, mask 190.
Inside the scan: bins loaded 145, totals 340, the warp scan 210, the float64 target 140, the crossing 145, the
publishing barrier 190 (measured with the totals taken by integer reductions and the rest reduced only in warps
that have one; the last lane's total and every warp reducing its rest, kept, were 0.03-0.1 µs faster on
temperature-2 rows in an A/B, and even on temperature-1 rows). Each phase is a chain of dependent shared-memory
loads, shuffles and barriers of 25-40 cycles a link. Measured and not kept: the candidates resolved by every warp
from the shared list, or by warp 0 with unrolled shuffles, with no barrier after (no faster: 790-910 cycles against
the block's 815); 128 bins (more candidates, a slower pairwise step) and 512 (a slower scan) at 1K-2K.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.nvrtc import COMMON_SOURCE, DTYPE_CODES, compile_kernel, specialise

__all__ = ["DEFAULT_UP_TO", "MAX_N", "SHAPE_TABLE", "check_short_shape", "fixed_point_shift", "launch_topp_short",
           "short_shape", "source"]

#: Longest row the kernel takes (16 entries a thread of 512 threads, or 8 of 1024, in registers).
MAX_N = 8192
#: Most entries a thread holds.
MAX_ITEMS = 16
#: Rows up to this length take this kernel by default (:func:`sparsebench.kernels.cuda_topp.launch_topp`). At 8K it
#: was no faster than the radix kernel on the H200 across temperatures 1-2 (its default shape there 6.98-7.06 µs
#: against 7.03-7.14 in the same calls, twenty-third session).
DEFAULT_UP_TO = 4096
#: ``(up to n entries, (threads, bins, pairwise))``: the launch shape by row length, from the H200 sweeps of the
#: twenty-third session (``benchmarks/device/topp_short_probe.py``; 32 rows of softmax(randn x 1 or 2), p 0.9, steady
#: state). Rows of 1K-2K: 512 threads and 256 bins were the fastest or within 2%. 4K: 1024 threads with a pairwise
#: limit of 128 kept one pass on the rows that 64 sent to a second (16% of the temperature-1 rows).
SHAPE_TABLE: tuple[tuple[int, tuple[int, int, int]], ...] = ((2048, (512, 256, 64)), (4096, (1024, 256, 128)),
                                                             (MAX_N, (1024, 512, 128)))

_SOURCE = r"""
#define NW (1 << NW_BITS)  // bins of a pass (the first pass adds a rest bin, summed apart)
#define PER_LANE (NW / 32)  // bins warp 0's lanes scan each (a multiple of 4: 16-byte loads)
#define FIRST_SHIFT (27 - NW_BITS)  // the first pass's bins: 16 binades down from the maximum
#define MAX_PASSES 8  // 1 + ceil(31 / NW_BITS) suffice: a rest bracket spans under 2**31 patterns
#define NWARPS (THREADS / 32)
// MARK(i): a probe's hook at the phase boundaries (benchmarks/device/topp_short_probe.py --timeline).
#ifndef MARK
#define MARK(i)
#endif
#ifndef MARK_SCAN
#define MARK_SCAN(i)
#endif

// f(x) for bit pattern k of a row whose maximum has (biased, at least 1) exponent em: x * 2**(150 - em + KSH),
// exact where the shift is left, floored where it is right.
__device__ __forceinline__ u64 fixed_mass(u32 k, int em) {
    const int e = (int)(k >> 23);
    const u64 sig = (u64)((k & 0x7fffffu) | (e ? 0x800000u : 0u));
    const int d = max(e, 1) - em + KSH;
    return d >= 0 ? sig << d : (d > -32 ? sig >> (-d) : 0ull);
}

// Adds mass f to bin b as two 32-bit halves (native shared atomics; 64-bit ones are compare-and-swap loops).
__device__ __forceinline__ void mass_add(u32* hlo, u32* hhi, u32 b, u64 f) {
    const u32 f_lo = (u32)f;
    const u32 old = atomicAdd(&hlo[b], f_lo);
    atomicAdd(&hhi[b], (u32)(f >> 32) + (old + f_lo < old ? 1u : 0u));
}

// A warp's sum of u64 values whose total fits 63 bits, by integer reductions of 16 + 5, 16 + 5 and 32 bits.
__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    const u32 m0 = __reduce_add_sync(FULL, (u32)v & 0xffffu);
    const u32 m1 = __reduce_add_sync(FULL, (u32)(v >> 16) & 0xffffu);
    const u32 m2 = __reduce_add_sync(FULL, (u32)(v >> 32));
    return ((u64)m2 << 32) + ((u64)m1 << 16) + m0;
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) sb_topp_short(
    const void* __restrict__ x, unsigned char* __restrict__ out, int* __restrict__ passes_out,
    int n, int stride_x, int stride_out, double p)
{
    __shared__ __align__(16) u32 hlo[NW];
    __shared__ __align__(16) u32 hhi[NW];
    __shared__ u32 pair_key[PAIRWISE_MAX];
    __shared__ u64 pair_mass[PAIRWISE_MAX];
    __shared__ u32 red_u[NWARPS];
    __shared__ u64 rest_m[NWARPS];
    __shared__ u32 s_lo, s_hi, s_keep_all, s_tstar;
    __shared__ u32 s_npair[2];
    __shared__ u64 s_above, s_target;

    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const int row = blockIdx.x;
    MARK(0);
    const void* xrow = row_of(x, row, stride_x);
    u32 key[ITEMS];
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = i * THREADS + t;
        key[i] = j < n ? abs_bits(xrow, j) : 0u;
    }
    for (int b = t; b < NW; b += THREADS) { hlo[b] = 0u; hhi[b] = 0u; }
    if (t == 0) { s_npair[0] = 0u; s_npair[1] = 0u; s_tstar = 0u; }
    u32 kmax = 0u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) kmax = max(kmax, key[i]);
    kmax = __reduce_max_sync(FULL, kmax);
    if (lane == 0) red_u[warp] = kmax;
    __syncthreads();
    kmax = __reduce_max_sync(FULL, lane < NWARPS ? red_u[lane] : 0u);
    const int em = max((int)(kmax >> 23), 1);
    MARK(1);

    u32 tstar;
    int n_pass = 0;
    if (kmax == 0u) {
        tstar = FULL;  // nothing to keep
    } else if (p >= 1.0) {
        tstar = 1u;  // every positive entry
    } else {
        u32 lo = 1u, hi = kmax, active = FULL;
        u64 above = 0ull, target = 0ull;
        bool keep_all = false;
        for (; n_pass < MAX_PASSES && lo < hi && active > PAIRWISE_MAX; ++n_pass) {
            // Bin b holds the bracket's patterns hi - b 2**shift down to hi - (b + 1) 2**shift + 1; the first pass's
            // bins from NW on (more than 16 binades under the maximum) go to the rest, later passes' brackets fit.
            int shift = FIRST_SHIFT;
            if (n_pass > 0) {
                const u32 span = hi - lo;
                shift = max(0, 32 - __clz(span) - NW_BITS);
                if ((span >> shift) >= NW) ++shift;
            }
            u64 rest = 0ull;
            #pragma unroll
            for (int i = 0; i < ITEMS; ++i) {
                const u32 k = key[i];
                if (k >= lo && k <= hi) {
                    const u32 b = (hi - k) >> shift;
                    const u64 f = fixed_mass(k, em);
                    if (b < NW) mass_add(hlo, hhi, b, f);
                    else rest += f;
                }
            }
            if (n_pass == 0) {
                rest = warp_sum_u64(rest);
                if (lane == 0) rest_m[warp] = rest;
            }
            __syncthreads();  // the histogram is complete
            MARK(2 + 3 * n_pass);
            if (warp == 0) {
                // Lane l scans bins PER_LANE l .. PER_LANE (l + 1) - 1 (from the top down), then clears them for
                // the next pass.
                u64 bm[PER_LANE], mine = 0ull;
                #pragma unroll
                for (int q = 0; q < PER_LANE / 4; ++q) {
                    uint4* const pl = (uint4*)&hlo[PER_LANE * lane + 4 * q];
                    uint4* const ph = (uint4*)&hhi[PER_LANE * lane + 4 * q];
                    const uint4 l4 = *pl, h4 = *ph;
                    bm[4 * q] = ((u64)h4.x << 32) | l4.x;
                    bm[4 * q + 1] = ((u64)h4.y << 32) | l4.y;
                    bm[4 * q + 2] = ((u64)h4.z << 32) | l4.z;
                    bm[4 * q + 3] = ((u64)h4.w << 32) | l4.w;
                    *pl = make_uint4(0u, 0u, 0u, 0u);
                    *ph = make_uint4(0u, 0u, 0u, 0u);
                }
                #pragma unroll
                for (int j = 0; j < PER_LANE; ++j) mine += bm[j];
                MARK_SCAN(0);
                u64 restv = 0ull;
                if (n_pass == 0) restv = warp_sum_u64(lane < NWARPS ? rest_m[lane] : 0ull);
                MARK_SCAN(1);
                u64 inc = mine;
                #pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const u64 y = shfl_up_u64(inc, o);
                    if (lane >= o) inc += y;
                }
                const u64 window = shfl_u64(inc, 31);
                MARK_SCAN(2);
                bool all = false;
                if (n_pass == 0) {  // the first pass's bins hold every positive entry: F_T
                    const u64 total = window + restv;
                    const double err = (double)total * 0x1p-51 + 2.0 * (double)n + 4.0;
                    target = __double2ull_ru(p * ((double)total + err) * (1.0 + 0x1p-50) + err + 2.0);
                    all = total < target;  // every positive entry (mass T >= p T)
                }
                MARK_SCAN(3);
                // The crossing bin: its at-or-above mass reaches target, the mass above it does not.
                u64 acc = above + inc - mine;
                int cb = -1;
                u64 cab = 0ull;
                #pragma unroll
                for (int j = 0; j < PER_LANE; ++j) {
                    if (acc < target && acc + bm[j] >= target) { cb = PER_LANE * lane + j; cab = acc; }
                    acc += bm[j];
                }
                const u32 who = __ballot_sync(FULL, cb >= 0);
                MARK_SCAN(4);
                if (lane == (who ? __ffs(who) - 1 : 0)) {
                    if (who) {  // a window bin
                        const long long bottom = (long long)hi - ((long long)(cb + 1) << shift) + 1;
                        s_lo = bottom > (long long)lo ? (u32)bottom : lo;
                        s_hi = hi - ((u32)cb << shift);
                        s_above = cab;
                    } else {  // the rest: everything more than NW bins under hi (first pass only)
                        s_lo = lo;
                        s_hi = hi - ((u32)NW << shift);
                        s_above = above + window;
                    }
                    s_target = target;
                    s_keep_all = all ? 1u : 0u;
                }
            }
            __syncthreads();  // the bracket is published
            MARK(3 + 3 * n_pass);
            if (s_keep_all) { keep_all = true; break; }
            lo = s_lo; hi = s_hi; above = s_above; target = s_target;
            // The bracket's entries become the pairwise candidates; if there are too many, another pass.
            #pragma unroll
            for (int i = 0; i < ITEMS; ++i) {
                const u32 k = key[i];
                if (k >= lo && k <= hi) {
                    const u32 slot = atomicAdd(&s_npair[n_pass & 1], 1u);
                    if (slot < PAIRWISE_MAX) { pair_key[slot] = k; pair_mass[slot] = fixed_mass(k, em); }
                }
            }
            __syncthreads();
            active = s_npair[n_pass & 1];
            MARK(4 + 3 * n_pass);
            if (t == 0) s_npair[(n_pass + 1) & 1] = 0u;  // the next gather's counter: every read of it is done
        }
        if (keep_all) {
            tstar = 1u;
        } else if (lo >= hi || active > PAIRWISE_MAX) {
            tstar = lo;  // one pattern left (accepted: the invariant); the pass limit is not reached (four suffice)
        } else {
            // Each candidate's exact at-or-above mass; t* is the largest accepted.
            const int tpe = THREADS / PAIRWISE_MAX;  // threads a candidate
            const u32 s = t / tpe;
            const int part = t % tpe;
            const u32 mk = s < active ? pair_key[s] : FULL;
            u64 m = 0ull;
            #pragma unroll 4
            for (u32 q = part; q < active; q += tpe)
                if (pair_key[q] >= mk) m += pair_mass[q];
            for (int o = 1; o < tpe; o <<= 1) m += __shfl_xor_sync(FULL, m, o);
            if (s < active && part == 0 && above + m >= target) atomicMax(&s_tstar, mk);
            __syncthreads();
            tstar = max(s_tstar, lo);  // the bracket's lowest entry is accepted (invariant), so some entry is
            MARK(14);
        }
    }
    unsigned char* orow = out + (long long)row * stride_out;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = i * THREADS + t;
        if (j < n) orow[j] = (key[i] >= tstar) && (key[i] > 0u);
    }
    if (WRITE_PASSES && t == 0) passes_out[row] = n_pass;
    MARK(15);
}
"""


def fixed_point_shift(max_entries: int) -> int:
    """``K`` of the kernel's ``f(x) = x 2**(150 - e + K)`` for rows of up to ``max_entries``: ``f`` stays under
    ``2**(24 + K)``, so the row's fixed-point total stays under ``2**63``."""
    return 39 - max(0, (max_entries - 1).bit_length())


def source(*, items: int, threads: int, dtype_code: int, write_passes: bool, pairwise: int = 64,
           bins: int = 256) -> str:
    """The kernel source for one specialisation: ``items`` entries a thread of ``threads``, brackets of up to
    ``pairwise`` entries resolved pairwise (a power of two from 64 to ``threads``: each candidate gets a whole number
    of threads), ``bins`` bins a pass (128, 256 or 512: the first pass's span 16 binades)."""
    return specialise(COMMON_SOURCE + _SOURCE, ITEMS=items, THREADS=threads, IN_DTYPE=dtype_code,
                      WRITE_PASSES=int(write_passes), PAIRWISE_MAX=pairwise, KSH=fixed_point_shift(items * threads),
                      NW_BITS=bins.bit_length() - 1)


@functools.cache
def _compiled(items: int, threads: int, dtype_code: int, write_passes: bool, pairwise: int, bins: int) -> Any:
    return compile_kernel(source(items=items, threads=threads, dtype_code=dtype_code, write_passes=write_passes,
                                 pairwise=pairwise, bins=bins),
                          "sb_topp_short", "the CUDA short-row top-p kernel")


def short_shape(n: int) -> tuple[int, int, int]:
    """``(threads, bins, pairwise)`` the launch takes for rows of ``n`` entries by default (:data:`SHAPE_TABLE`)."""
    for up_to, shape in SHAPE_TABLE:
        if n <= up_to:
            return shape
    return SHAPE_TABLE[-1][1]


def check_short_shape(n: int, threads: int, bins: int, pairwise: int) -> str | None:
    """Why ``threads``, ``bins`` and ``pairwise`` cannot serve rows of ``n`` entries, or None."""
    if not (threads & (threads - 1) == 0 and 64 <= threads <= 1024):
        return f"threads must be a power of two from 64 to 1024, got {threads}"
    if -(-n // threads) > MAX_ITEMS:
        return (f"rows of {n} entries need {-(-n // threads)} entries a thread of {threads}, at most {MAX_ITEMS}; "
                "use more threads, or the radix kernel (rows over 8192 entries)")
    if bins not in (128, 256, 512):
        return f"bins must be 128, 256 or 512, got {bins}"
    if not (pairwise & (pairwise - 1) == 0 and 64 <= pairwise <= threads):
        return f"pairwise must be a power of two from 64 to the threads ({threads}), got {pairwise}"
    return None


def launch_topp_short(x: torch.Tensor, p: float, out: torch.Tensor, passes_out: torch.Tensor | None = None, *,
                      threads: int | None = None, bins: int | None = None, pairwise: int | None = None) -> None:
    """Write the top-p mask of ``x`` ``[rows, n]`` (float32/bfloat16/float16, last dim contiguous, ``n`` at most
    :data:`MAX_N`, values validated by the caller) into ``out`` (uint8 ``[rows, n]``); ``passes_out`` (int32
    ``[rows]``) gets each row's passes. ``threads``, ``bins`` and ``pairwise`` override :func:`short_shape`'s (the
    benchmark's sweeps)."""
    rows, n = x.shape
    default_threads, default_bins, default_pairwise = short_shape(n)
    threads, bins = threads or default_threads, bins or default_bins
    pairwise = pairwise or min(default_pairwise, threads)
    why = check_short_shape(n, threads, bins, pairwise)
    if why is not None:
        raise UsageError(f"CUDA short-row top-p launch: {why}")
    kernel = _compiled(-(-n // threads), threads, DTYPE_CODES[x.dtype], passes_out is not None, pairwise, bins)
    kernel(grid=(rows, 1, 1), block=(threads, 1, 1), args=[
        x, out, passes_out if passes_out is not None else out, n, x.stride(0), out.stride(0), float(p)])
