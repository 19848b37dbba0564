"""Top-k block lists by radix selection in CUDA (NVRTC): the Triton top-k's result, with far fewer instructions.

Why this exists: Quest scores every block in every sparse layer, then keeps the top ``k``. On the H200 the
Triton threshold search (:mod:`sparsebench.kernels.topk`) took 28 µs for 8 rows of 8192 blocks under Nsight
Compute (128K context), twice the 13 µs of the scoring kernel that reads 33.5 MB before it; one program per row
issues, by the profile's cycles and issue rate, about 5,500 instructions a thread (an estimate), mostly, by the
kernel's structure, the per-candidate reduction trees of its 4-5 search passes. A
histogram needs no per-candidate reduction: every entry adds one to a shared-memory bin, and one block-wide scan
of the bins places the k-th largest key. This kernel is that, written in CUDA because Triton exposes neither
shared-memory atomics on a computed address nor the block scan it needs.

Algorithm (one thread block per row; thread ``t`` holds entries ``[t * ITEMS, (t + 1) * ITEMS)`` in registers)
-----------------------------------------------------------------------------------------------------------
1. Each value maps to the Triton kernel's int32 order key (NaN lowest, ``-0.0 == +0.0``; ``LAST_IN_BUDGET``
   ranks the newest entry above all), flipped to an unsigned key with the same order. A block reduction finds
   the row's smallest and largest key: the bracket ``[lo, hi]``, with ``above = 0`` entries over it.
2. A pass bins the bracket's entries into 2048 bins of ``2**shift`` keys (``shift`` = bit length of
   ``hi - lo`` minus 11) with shared-memory atomics, and one block scan over the bins finds the bin holding the
   k-th largest key: ``above`` grows by the entries of the bins over it, and the bracket becomes that bin.
   Each pass removes 11 bits of bracket width, so at most 4 passes; in practice 1-2 (the first bins by
   exponent and three mantissa bits, the second resolves within an eighth of a binade).
3. The passes stop once the bracket holds at most :data:`PAIRWISE_MAX` (64) entries or one key. The ``r = k -
   above`` entries to keep from it are then found exactly: by pairwise ranking of the bracket entries in shared
   memory (key descending, then index ascending; several threads an entry), or, for a single key (ties), as the
   first ``r`` of them in index order by one block scan. (A first version ranked up to 256 entries with one thread
   each: 13.7 µs for 8 rows of 512, against 8.2 µs for the Triton kernel.)
4. One more block scan turns each thread's kept entries into positions: the mask, the kept ids in ascending
   order and their count, which is what the Triton decode kernel reads.

Same semantics as :func:`sparsebench.kernels.topk.topk_mask_reference` bit for bit (ties by lowest index,
NaN below ``-inf``), the tests compare them on the GPU. No host synchronisation: CUDA-graph safe.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sparsebench.kernels.nvrtc import COMMON_SOURCE, DTYPE_CODES, MIN_THREADS, block_threads, compile_kernel, specialise

__all__ = ["PAIRWISE_MAX", "launch_shape", "launch_topk_lists", "source"]

#: Largest bracket resolved by pairwise ranking instead of another histogram pass.
PAIRWISE_MAX = 64
#: Most entries a thread holds; with 1024 threads, rows up to 16384 entries (the Triton kernel's MAX_N).
MAX_ITEMS = 16

_SOURCE = r"""
#define NBINS 2048
#define BIN_BITS 11

// The Triton kernel's int32 order key, flipped so that unsigned order is the same order.
__device__ __forceinline__ u32 order_key(float x) {
    int bits = __float_as_int(x);
    int key = bits < 0 ? (bits ^ 0x7fffffff) : bits;
    if (key == -1) key = 0;           // -0.0 joins +0.0
    if (x != x) key = (int)0x80000000; // NaN below -inf
    return ((u32)key) ^ 0x80000000u;
}

extern "C" __global__ void __launch_bounds__(1024) sb_topk_lists(
    const void* __restrict__ x, const long long* __restrict__ k_row, unsigned char* __restrict__ mask,
    int* __restrict__ idx, int* __restrict__ cnt, int n, int k_all, int stride_x)
{
    __shared__ u32 hist[NBINS];
    __shared__ u32 warp_sums[32];
    __shared__ u32 pair_key[PAIRWISE_MAX];
    __shared__ int pair_idx[PAIRWISE_MAX];
    __shared__ u32 chosen[(MAX_ITEMS * 1024) / 32];
    __shared__ u32 s_lo, s_hi, s_min, s_max, s_above, s_active, s_npair;

    const int row = blockIdx.x, t = threadIdx.x;
    const int first = t * ITEMS;
    const void* xrow = row_of(x, row, stride_x);
    long long kk = PER_ROW_K ? k_row[row] : (long long)k_all;
    const int k = (int)(kk < 0 ? 0 : (kk > n ? n : kk));

    u32 key[ITEMS];
    u32 kmin = FULL, kmax = 0u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        int j = first + i;
        key[i] = 0u;
        if (j < n) {
            key[i] = order_key(load_value(xrow, j));
            if (LAST_IN_BUDGET && j == n - 1) key[i] = FULL;  // int32 max, flipped
            kmin = min(kmin, key[i]);
            kmax = max(kmax, key[i]);
        }
    }
    if (t == 0) { s_min = FULL; s_max = 0u; s_npair = 0u; }
    for (int i = t; i < (MAX_ITEMS * 1024) / 32; i += blockDim.x) chosen[i] = 0u;
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        kmin = min(kmin, __shfl_xor_sync(FULL, kmin, o));
        kmax = max(kmax, __shfl_xor_sync(FULL, kmax, o));
    }
    __syncthreads();
    if ((t & 31) == 0) { atomicMin(&s_min, kmin); atomicMax(&s_max, kmax); }
    __syncthreads();
    u32 lo = s_min, hi = s_max;
    u32 above = 0u, active = (u32)n;  // entries over the bracket; entries inside it

    // 0 < k < n: narrow [lo, hi] to the bin holding the k-th largest key (at most 4 passes).
    if (k > 0 && k < n) {
        // 4 passes reach one key (11 bits each); the cap only keeps a broken invariant from hanging the GPU.
        for (int pass = 0; pass < 5 && lo < hi && active > PAIRWISE_MAX; ++pass) {
            const u32 span = hi - lo;
            const int shift = max(0, 32 - __clz(span) - BIN_BITS);
            for (int i = t; i < NBINS; i += blockDim.x) hist[i] = 0u;
            __syncthreads();
            #pragma unroll
            for (int i = 0; i < ITEMS; ++i)
                if (first + i < n && key[i] >= lo && key[i] <= hi) atomicAdd(&hist[(key[i] - lo) >> shift], 1u);
            __syncthreads();
            // Thread t owns bins [t * per, (t + 1) * per); scan their sums in ascending bin order.
            const int per = NBINS / blockDim.x;
            u32 mine = 0u;
            for (int i = 0; i < per; ++i) mine += hist[t * per + i];
            u32 total;
            u32 before = block_scan(mine, warp_sums, &total);  // entries in lower bins
            // The bin b with before(b) <= T < before(b) + hist[b], T = above + total - k: k-th largest inside.
            const u32 target = above + total - (u32)k;
            for (int i = 0; i < per; ++i) {
                const int b = t * per + i;
                const u32 h = hist[b];
                if (before <= target && target < before + h) {
                    s_above = above + total - before - h;
                    s_active = h;
                    s_lo = lo + ((u32)b << shift);
                    unsigned long long top = (unsigned long long)lo + (((unsigned long long)b + 1ull) << shift) - 1ull;
                    s_hi = top < (unsigned long long)hi ? (u32)top : hi;
                }
                before += h;
            }
            __syncthreads();
            lo = s_lo; hi = s_hi; above = s_above; active = s_active;
            __syncthreads();  // everyone has read the state before the next pass overwrites it
        }
    }

    // Which bracket entries to keep: r of them, by pairwise rank or (one key) by index.
    const int r = k - (int)above;
    bool use_pairs = (k > 0 && k < n && lo < hi);
    if (use_pairs) {
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i)
            if (first + i < n && key[i] >= lo && key[i] <= hi) {
                u32 slot = atomicAdd(&s_npair, 1u);
                if (slot < PAIRWISE_MAX) { pair_key[slot] = key[i]; pair_idx[slot] = first + i; }
            }
        __syncthreads();
        // tpe consecutive threads rank one entry, each against every tpe-th other, then add up by shuffles.
        const u32 np = min(s_npair, (u32)PAIRWISE_MAX);
        const int tpe = blockDim.x / PAIRWISE_MAX;  // a power of two from 4 to 16 (blockDim 256-1024)
        const u32 s = t / tpe;
        const int part = t % tpe;
        const u32 mk = s < np ? pair_key[s] : 0u;
        const int mi = s < np ? pair_idx[s] : 0;
        int rank = 0;
        for (u32 q = part; q < np; q += tpe) {
            const u32 ok = pair_key[q];
            rank += (ok > mk) || (ok == mk && pair_idx[q] < mi);
        }
        for (int o = 1; o < tpe; o <<= 1) rank += __shfl_xor_sync(FULL, rank, o);
        if (s < np && part == 0 && rank < r) atomicOr(&chosen[mi >> 5], 1u << (mi & 31));
        __syncthreads();
    }
    u32 ties_before = 0u;
    if (k > 0 && k < n && lo == hi) {  // ties at one key: the first r in index order
        u32 mine = 0u;
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) mine += (first + i < n && key[i] == lo);
        u32 total;
        ties_before = block_scan(mine, warp_sums, &total);
    }

    bool keep[ITEMS];
    u32 kept = 0u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = first + i;
        bool kp = false;
        if (j < n) {
            if (k >= n) kp = true;
            else if (k > 0) {
                if (key[i] > hi) kp = true;
                else if (key[i] >= lo) {
                    if (use_pairs) kp = (chosen[j >> 5] >> (j & 31)) & 1u;
                    else { kp = (int)ties_before < r; ties_before += 1u; }
                }
            }
            if (KEEP_LAST && j == n - 1) kp = true;
        }
        keep[i] = kp;
        kept += kp;
    }
    u32 total_kept;
    u32 pos = block_scan(kept, warp_sums, &total_kept);
    unsigned char* mrow = mask + (long long)row * n;
    int* irow = idx + (long long)row * n;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = first + i;
        if (j < n) {
            mrow[j] = keep[i];
            if (keep[i]) irow[pos++] = j;
        }
    }
    if (t == 0) cnt[row] = (int)total_kept;
}
"""


def source(*, items: int, dtype_code: int, per_row_k: bool, keep_last: bool, last_in_budget: bool) -> str:
    """The kernel source for one specialisation (also what the CPU tests compile with NVRTC when they can)."""
    return specialise(COMMON_SOURCE + _SOURCE, ITEMS=items, MAX_ITEMS=MAX_ITEMS, PAIRWISE_MAX=PAIRWISE_MAX,
                      IN_DTYPE=dtype_code, PER_ROW_K=int(per_row_k), KEEP_LAST=int(keep_last),
                      LAST_IN_BUDGET=int(last_in_budget))


@functools.cache
def _compiled(items: int, dtype_code: int, per_row_k: bool, keep_last: bool, last_in_budget: bool) -> Any:
    src = source(items=items, dtype_code=dtype_code, per_row_k=per_row_k, keep_last=keep_last,
                 last_in_budget=last_in_budget)
    return compile_kernel(src, "sb_topk_lists", "the CUDA top-k kernel")


def launch_shape(n: int, rows: int = 1, sms: int = 132) -> tuple[int, int]:
    """``(threads, items)`` for ``rows`` rows of ``n`` entries on ``sms`` multiprocessors: about 8 entries a
    thread, 256 to 1024 threads; 16 entries a thread instead when there are more rows than multiprocessors (a
    1024-thread block fills an SM's registers, so many rows, e.g. every layer's at once, would take two waves)."""
    threads = block_threads(n)
    if rows > sms and threads > MIN_THREADS and -(-n // (threads // 2)) <= MAX_ITEMS:
        threads //= 2
    return threads, max(1, -(-n // threads))


def launch_topk_lists(x: torch.Tensor, k: int | torch.Tensor, out: torch.Tensor, indices: torch.Tensor,
                      counts: torch.Tensor, *, keep_last: bool, last_in_budget: bool) -> None:
    """Write the top-k mask of ``x`` ``[rows, n]`` (last dim contiguous, ``n <= 16384``) into ``out`` (uint8
    ``[rows, n]``), the kept ids in ascending order into ``indices`` (int32, ``n`` a row) and their number into
    ``counts`` (int32 ``[rows]``). ``k`` is an int or an int64 tensor ``[rows]`` (clamped to ``[0, n]`` on the
    device). The caller (:func:`sparsebench.kernels.topk.topk_select`) has validated everything."""
    rows, n = x.shape
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    threads, items = launch_shape(n, rows, sms)
    per_row = isinstance(k, torch.Tensor)
    kernel = _compiled(items, DTYPE_CODES[x.dtype], per_row, keep_last, last_in_budget)
    k_row = k.to(torch.int64) if per_row else counts  # counts: never read without PER_ROW_K
    kernel(grid=(rows, 1, 1), block=(threads, 1, 1), args=[
        x, k_row, out, indices, counts, n, 0 if per_row else min(int(k), n), x.stride(0)])
