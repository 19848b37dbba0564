"""Top-k block lists by radix selection in CUDA (NVRTC): the Triton top-k's result, with far fewer instructions.

Why this exists: Quest scores every block in every sparse layer, then keeps the top ``k``. On the H200 the
Triton threshold search (:mod:`sparsebench.kernels.topk`) took 28 µs for 8 rows of 8192 blocks under Nsight
Compute (128K context), twice the 13 µs of the scoring kernel that reads 33.5 MB before it; one program per row
issues, by the profile's cycles and issue rate, about 5,500 instructions a thread (an estimate), mostly, by the
kernel's structure, the per-candidate reduction trees of its 4-5 search passes. A
histogram needs no per-candidate reduction: every entry adds one to a shared-memory bin, and one block-wide scan
of the bins places the k-th largest key. This kernel is that, written in CUDA because Triton exposes neither
shared-memory atomics on a computed address nor the block scan it needs.

Algorithm (one thread block per row; thread ``t`` holds entries ``i * THREADS + t``, ``i < ITEMS``, in registers, so a
warp's loads and stores of one item are 32 consecutive entries)
-----------------------------------------------------------------------------------------------------------
1. Each value maps to the Triton kernel's int32 order key (NaN lowest, ``-0.0 == +0.0``; ``LAST_IN_BUDGET``
   ranks the newest entry above all), flipped to an unsigned key with the same order. The bracket starts as every
   key, with ``above = 0`` entries over it.
2. Radix passes over the key's top 11, next 11 and last 10 bits: a pass bins the bracket's entries by those bits
   with shared-memory atomics, and one block scan over the bins finds the bin holding the k-th largest key:
   ``above`` grows by the entries of the bins over it, and the bracket becomes that bin. In practice 1-2 passes:
   the first bins by sign, exponent and two mantissa bits, the second within 1/2048 of that. Two histograms take
   turns, and each thread clears the bins it scanned, so no pass waits for a clearing.
3. The passes stop once the bracket holds at most :data:`PAIRWISE_MAX` (64) entries or one key. The ``r = k -
   above`` entries to keep from it are then all of them (``r`` equals the bracket's count), or are found exactly:
   by pairwise ranking of the bracket entries in shared memory (key descending, then index ascending; several
   threads an entry), or, for a single key (ties), as the first ``r`` of them in index order.
4. Positions in index order (the kept ids in ascending order, and the ties' order in 3) come from one ballot per
   item and warp: each counts a 32-entry segment, and one block scan over the segments' counts, in (item, warp)
   order, which is index order, gives every segment its base. Out: the mask, the kept ids in ascending order and
   their count, which is what the Triton decode kernel reads.

The fifteenth session rewrote steps 1, 2 and 4 (before: ``ITEMS`` consecutive entries a thread, uncoalesced; a
min / max pass first; one histogram cleared behind a barrier each pass). For 240 rows of 8192 blocks (30 layers'
selections at 128K context in one launch) it went from 30.5 to 15.5 µs a launch on the H200, and for Quest's 8 rows
of 8192 from 14.2 to 12.4 µs (``benchmarks/device/topk_rows_probe.py``, ``benchmarks/RESULTS.md``).

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
#define NWARPS (THREADS / 32)
#define PER (NBINS / THREADS)   // histogram bins a thread scans: 2, 4 or 8
#define SEGS (ITEMS * NWARPS)   // 32-entry segments of the row: one per item and warp
// Whether entry j exists: always when the row fills the block (FULL_ROW, n == THREADS * ITEMS), so no test.
#define IN_ROW(j) (FULL_ROW || (j) < n)

// The Triton kernel's int32 order key, flipped so that unsigned order is the same order.
__device__ __forceinline__ u32 order_key(float x) {
    int bits = __float_as_int(x);
    int key = bits < 0 ? (bits ^ 0x7fffffff) : bits;
    if (key == -1) key = 0;           // -0.0 joins +0.0
    if (x != x) key = (int)0x80000000; // NaN below -inf
    return ((u32)key) ^ 0x80000000u;
}

// Thread t's PER bins [t * PER, (t + 1) * PER) of h, read in one or two vector loads (no bank conflicts), then
// zeroed, so that the pass after next finds them clear.
__device__ __forceinline__ void take_bins(u32* h, u32 (&c)[PER]) {
    const int t = threadIdx.x;
#if PER == 2
    uint2 v = reinterpret_cast<uint2*>(h)[t];
    c[0] = v.x; c[1] = v.y;
    reinterpret_cast<uint2*>(h)[t] = make_uint2(0u, 0u);
#else
    #pragma unroll
    for (int q = 0; q < PER / 4; ++q) {
        uint4 v = reinterpret_cast<uint4*>(h)[t * (PER / 4) + q];
        c[4 * q] = v.x; c[4 * q + 1] = v.y; c[4 * q + 2] = v.z; c[4 * q + 3] = v.w;
        reinterpret_cast<uint4*>(h)[t * (PER / 4) + q] = make_uint4(0u, 0u, 0u, 0u);
    }
#endif
}

// Rank in index order among the flagged entries of the row (bit i of `bits`: entry i * THREADS + t), for each of
// this thread's entries (flagged or not), into rank[]; *total gets their number. One ballot per item and warp
// counts a 32-entry segment; one block scan over the SEGS counts in (item, warp) order, which is index order,
// gives each segment its base. seg[SEGS] and ws[32] are scratch; seg[] is read after the last barrier, so a caller
// that writes it again must meet a barrier first.
__device__ __forceinline__ void index_order_ranks(u32 bits, u32 (&rank)[ITEMS], u32* total, u32* seg, u32* ws) {
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const u32 below = (1u << lane) - 1u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const u32 b = __ballot_sync(FULL, (bits >> i) & 1u);
        if (lane == 0) seg[i * NWARPS + warp] = __popc(b);
    }
    __syncthreads();
    const u32 v = t < SEGS ? seg[t] : 0u;
    const u32 base = block_scan_once(v, ws, total);  // every thread has read seg[] before its barrier
    if (t < SEGS) seg[t] = base;
    __syncthreads();
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i)
        rank[i] = seg[i * NWARPS + warp] + __popc(__ballot_sync(FULL, (bits >> i) & 1u) & below);
}

extern "C" __global__ void __launch_bounds__(THREADS) sb_topk_lists(
    const void* __restrict__ x, const long long* __restrict__ k_row, unsigned char* __restrict__ mask,
    int* __restrict__ idx, int* __restrict__ cnt, int n, int k_all, int stride_x)
{
    __shared__ __align__(16) u32 hist[2][NBINS];  // passes alternate, so a pass never waits for its bins' clearing
    __shared__ u32 warp_sums[32];
    __shared__ u32 seg[SEGS];
    __shared__ u32 chosen[SEGS];                   // pairwise winners, one bit an entry
    __shared__ u32 pair_key[PAIRWISE_MAX];
    __shared__ int pair_idx[PAIRWISE_MAX];
    __shared__ u32 s_lo, s_above, s_active, s_npair;

    const int row = blockIdx.x, t = threadIdx.x, lane = t & 31, warp = t >> 5;
    const void* xrow = row_of(x, row, stride_x);
    long long kk = PER_ROW_K ? k_row[row] : (long long)k_all;
    const int k = (int)(kk < 0 ? 0 : (kk > n ? n : kk));

    // Entry j = i * THREADS + t: a warp's loads and stores of one item are 32 consecutive entries.
    u32 key[ITEMS];
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = i * THREADS + t;
        key[i] = IN_ROW(j) ? order_key(load_value(xrow, j)) : 0u;
        if (LAST_IN_BUDGET && j == n - 1) key[i] = FULL;  // int32 max, flipped
    }
    for (int w = t; w < 2 * NBINS; w += THREADS) (&hist[0][0])[w] = 0u;
    for (int w = t; w < SEGS; w += THREADS) chosen[w] = 0u;
    if (t == 0) s_npair = 0u;
    __syncthreads();

    // The bracket: keys equal to lo outside low_bits. `above` entries rank over it, `active` lie in it.
    u32 lo = 0u, above = 0u, active = (u32)n, low_bits = FULL;  // low_bits: the bracket's free bits
    if (k > 0 && k < n && n > PAIRWISE_MAX) {
        // Radix passes over 11, 11 and 10 bits, most significant first, until at most PAIRWISE_MAX entries or one
        // key remain in the bracket. No min / max pass: the first pass bins the sign, exponent and two mantissa bits.
        #pragma unroll 1
        for (int pass = 0; pass < 3; ++pass) {
            const int shift = pass == 2 ? 0 : 32 - BIN_BITS * (pass + 1);  // 21, 10, 0
            const u32 in_mask = ~low_bits;                                  // bits that must equal lo's
            u32* h = hist[pass & 1];
            if (pass == 0) {  // every entry is in the bracket
                #pragma unroll
                for (int i = 0; i < ITEMS; ++i)
                    if (IN_ROW(i * THREADS + t)) atomicAdd(&h[key[i] >> shift], 1u);
            } else {
                #pragma unroll
                for (int i = 0; i < ITEMS; ++i)
                    if (IN_ROW(i * THREADS + t) && ((key[i] ^ lo) & in_mask) == 0u)
                        atomicAdd(&h[(key[i] & low_bits) >> shift], 1u);
            }
            __syncthreads();
            u32 c[PER];
            take_bins(h, c);
            u32 mine = 0u;
            #pragma unroll
            for (int i = 0; i < PER; ++i) mine += c[i];
            u32 total;
            u32 before = block_scan_once(mine, warp_sums, &total);  // bracket entries in lower bins
            // The bin b with before(b) <= T < before(b) + c[b], T = above + total - k: the k-th largest is in it.
            const u32 target = above + total - (u32)k;
            #pragma unroll
            for (int i = 0; i < PER; ++i) {
                if (before <= target && target < before + c[i]) {
                    s_above = above + total - before - c[i];
                    s_active = c[i];
                    s_lo = lo | ((u32)(t * PER + i) << shift);
                }
                before += c[i];
            }
            __syncthreads();  // the next writes of s_* follow the next pass's first barrier: all have read them
            lo = s_lo; above = s_above; active = s_active;
            low_bits = shift == 0 ? 0u : (1u << shift) - 1u;
            if (active <= PAIRWISE_MAX || low_bits == 0u) break;
        }
    }
    const u32 hi = lo | low_bits;

    // Which bracket entries to keep: r of them. All of them; by pairwise rank (key descending, then index
    // ascending); or, for one key (ties), the first r in index order.
    const u32 r = (u32)k - above;
    const bool partial = k > 0 && k < n && r < active;
    const bool pairs = partial && low_bits != 0u;
    if (pairs) {
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) {
            const int j = i * THREADS + t;
            if (IN_ROW(j) && key[i] >= lo && key[i] <= hi) {
                const u32 slot = atomicAdd(&s_npair, 1u);
                if (slot < PAIRWISE_MAX) { pair_key[slot] = key[i]; pair_idx[slot] = j; }
            }
        }
        __syncthreads();
        // tpe consecutive threads rank one entry, each against every tpe-th other, then add up by shuffles.
        const u32 np = min(s_npair, (u32)PAIRWISE_MAX);
        const int tpe = THREADS / PAIRWISE_MAX;  // a power of two from 4 to 16
        const u32 s = t / tpe;
        const int part = t % tpe;
        const u32 mk = s < np ? pair_key[s] : 0u;
        const int mi = s < np ? pair_idx[s] : 0;
        u32 rank = 0u;
        for (u32 q = part; q < np; q += tpe) {
            const u32 ok = pair_key[q];
            rank += (ok > mk) || (ok == mk && pair_idx[q] < mi);
        }
        for (int o = 1; o < tpe; o <<= 1) rank += __shfl_xor_sync(FULL, rank, o);
        if (s < np && part == 0 && rank < r) atomicOr(&chosen[mi >> 5], 1u << (mi & 31));
        __syncthreads();
    }
    u32 ties[ITEMS];
    if (partial && !pairs) {  // ties at one key
        u32 at_lo = 0u, n_ties;
        #pragma unroll
        for (int i = 0; i < ITEMS; ++i) at_lo |= (u32)(IN_ROW(i * THREADS + t) && key[i] == lo) << i;
        index_order_ranks(at_lo, ties, &n_ties, seg, warp_sums);
        __syncthreads();  // every thread has read seg[] before the ranks below rewrite it
    }

    u32 keep = 0u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = i * THREADS + t;
        bool kp = false;
        if (IN_ROW(j)) {
            if (k >= n) kp = true;
            else if (k > 0) {
                if (key[i] > hi) kp = true;
                else if (key[i] >= lo) {
                    if (!partial) kp = true;
                    else if (pairs) kp = (chosen[i * NWARPS + warp] >> lane) & 1u;
                    else kp = ties[i] < r;
                }
            }
            if (KEEP_LAST && j == n - 1) kp = true;
        }
        keep |= (u32)kp << i;
    }
    u32 pos[ITEMS], total_kept;
    index_order_ranks(keep, pos, &total_kept, seg, warp_sums);
    unsigned char* mrow = mask + (long long)row * n;
    int* irow = idx + (long long)row * n;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = i * THREADS + t;
        if (IN_ROW(j)) {
            const bool kp = (keep >> i) & 1u;
            mrow[j] = kp;
            if (kp) irow[pos[i]] = j;
        }
    }
    if (t == 0) cnt[row] = (int)total_kept;
}
"""


def source(*, threads: int, items: int, full_row: bool, dtype_code: int, per_row_k: bool, keep_last: bool,
           last_in_budget: bool) -> str:
    """The kernel source for one specialisation (also what the CPU tests compile with NVRTC when they can).
    ``full_row``: the row has exactly ``threads * items`` entries, so the kernel tests no entry for existence."""
    if not (threads % 32 == 0 and 2048 % threads == 0 and 1 <= items <= 32):
        raise ValueError(f"no top-k kernel for {threads} threads x {items} entries: threads divide 2048 in warps, "
                         "and at most 32 entries a thread (one bit each in a word)")
    return specialise(COMMON_SOURCE + _SOURCE, THREADS=threads, ITEMS=items, FULL_ROW=int(full_row),
                      PAIRWISE_MAX=PAIRWISE_MAX, IN_DTYPE=dtype_code, PER_ROW_K=int(per_row_k),
                      KEEP_LAST=int(keep_last), LAST_IN_BUDGET=int(last_in_budget))


@functools.cache
def _compiled(threads: int, items: int, full_row: bool, dtype_code: int, per_row_k: bool, keep_last: bool,
              last_in_budget: bool) -> Any:
    src = source(threads=threads, items=items, full_row=full_row, dtype_code=dtype_code, per_row_k=per_row_k,
                 keep_last=keep_last, last_in_budget=last_in_budget)
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
    kernel = _compiled(threads, items, threads * items == n, DTYPE_CODES[x.dtype], per_row, keep_last, last_in_budget)
    k_row = k.to(torch.int64) if per_row else counts  # counts: never read without PER_ROW_K
    kernel(grid=(rows, 1, 1), block=(threads, 1, 1), args=[
        x, k_row, out, indices, counts, n, 0 if per_row else min(int(k), n), x.stride(0)])
