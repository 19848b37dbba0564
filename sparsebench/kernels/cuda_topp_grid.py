"""Sorting-free top-p over several ordinary CTAs a row that meet in global memory (CUDA, NVRTC).

Why this exists next to the one-CTA / cluster kernel (:mod:`sparsebench.kernels.cuda_topp`): that kernel keeps a row
in one CTA, or a thread-block cluster of 2-4, and rows of 64K-128K entries held 43 entries a thread in shared memory
and paid three shared-memory atomics for each in their histogram pass: 19.4 and 30.6 µs for 32 rows on the H200,
2.4x and 3.2x torch's row sum, and about 7.8x and 8.8x the read floor that :mod:`sparsebench.bench.read_floor`
measured later. Here a row takes ``CTAS`` ordinary CTAs (:data:`DEFAULT_CTAS`), each holding a slice in shared memory
with one shared atomic an entry, and the CTAs meet through global memory: 8.2-8.3, 10.4-10.5, 12.9-13.0 and 17.3-17.4
µs at 16K, 32K, 64K and 128K entries (``benchmarks/RESULTS.md``, twenty-first and twenty-second sessions). That is
4.8x, 5.3x, 5.2x and 5.0x one read of the input as :mod:`sparsebench.bench.read_floor` measures it (2x is asked). The
twenty-first session's 2.2 / 1.99 / 1.60 / 1.8x were against torch's row sum, a slow read at these lengths. At 8K it
loses to the radix kernel (8.4 against 7.0 µs, before the range-only slot writes; 7.5 with registers sized to the
row, not merged: the row barriers and the level-1 exchange cost 3-4 µs at any length), so
:func:`~sparsebench.kernels.cuda_topp.launch_topp` takes it from 16K entries up.

Algorithm (every CTA of a row; they meet at two row barriers)
--------------------------------------------------------------
Entries are ``|x|`` float32 bit patterns (bfloat16 / float16 widened), whose integer order is the value order.

1. **Level 1** (no sum or maximum needed first): each CTA bins its slice by ``key >> 20`` (the exponent and three
   mantissa bits: 2048 bins that cover every positive float, 1/8 of a binade each) and adds each entry's 24-bit
   significand (the hidden bit included) to its bin in shared memory. All entries of a bin share an exponent, so a
   bin's sum of significands, times ``2**(max(e, 1) - 150)``, is its exact mass. The CTA writes its non-empty range
   of bins, and that range, to its own slot in global memory and arrives at barrier A (a slot's bins outside its
   range are stale and read as zero: 140-220 bins of softmax(randn x 2) rows, not 2048; 0.1 µs less at 16K-32K,
   0.35 at 128K).
2. **Every CTA** then reads the row's slots, only within the row's non-empty range and 16 bytes at a time, and scans
   them itself: nobody waits for another CTA's scan and nothing is published. The bins within 4 binades of the
   CTA's own non-empty range are requested with the ranges, in the same round trip; the rest, if the row's range
   needs them, after. The fixed-point unit comes from the
   top non-empty bin and the row length (``F_T``, the row's mass in units, stays under ``2**62`` and is at least
   ``2**(61 - L)`` for rows of under ``2**L`` entries). A bin's mass in units is exact, or floored for bins far under
   the top (each floor loses under a unit). A set is accepted when its mass in units reaches
   ``p (F_T + E)(1 + 2**-50) + E + 2``, ``E`` = 2048 + 4 bounding the floors of ``F_T``; its real mass then reaches
   ``p T``. A scan from the top finds the crossing bin ``b1`` (the mass above it is not accepted, with it it is) and
   the need left in it, in the bin's own exact units.
3. **Candidates**: every CTA marks its slice's entries of ``b1`` (a bit each in a thread's mask), places them into
   its own list in global memory (each warp takes its slots with one shared atomic, no block scan), and meets the
   others at barrier B; then each CTA reads every list (the counts and the first entries of each list in one round
   trip) into shared memory, up to :data:`CAND_CAP` (rows of softmax(randn x 2) put up to 2220 of 128K entries
   there). Rows of at most 32 entries a thread of 512-thread CTAs (16K entries in four CTAs) skip the lists and
   barrier B: each thread loads its 32 entries of the whole row into registers before barrier A (as stored,
   converted only when used, so that nothing waits on those loads before the barrier), and each CTA gathers the
   row's candidates from them itself (0.5-0.7 µs less at 16K; at 1024 threads, 64 registers a thread, they would
   spill).
4. **The levels below**, in each CTA alone, in exact integer sums. Up to four candidates a thread (most rows):
   level 2 by bits 19-15 into each warp's own 32 bins, which every warp sums and scans itself (no barrier for a
   result); then the entries of the crossing level-2 bin (1/256 of a binade: 9-28 of them at 8K-32K entries of
   softmax(randn x 2), up to 84 at 128K), where they are at most :data:`PAIR_MAX`, each sum the significands at or
   above their own, pairwise: two block barriers in all, where four more levels of 5 bits cost eight (0.2-0.3 µs
   less at 16K-32K, twenty-first session). A larger crossing bin takes those levels (bits 14-10, 9-5, 4-0: each
   warp adds into its own 32 bins and warp 0 sums and scans them). More candidates take levels of 2048 and 512
   bins (bits 19-9, then 8-0). The crossing pattern is ``t*``, the largest value whose at-or-above mass is accepted,
   and every CTA writes ``x >= t*`` over its slice's positive entries (ties at ``t*`` all kept). Where the lists
   overflow (uniform rows, a few distinct values), each CTA streams the row again from global memory for levels 2
   and 3 instead: slower, as exact.

The acceptance margin is under ``5e-10 T`` at 128K entries: the mask equals the float64 sort-based reference's
(:func:`sparsebench.kernels.topp.topp_mask_torch`) except in near-ties, as for the radix kernel. Measured and not
kept (RESULTS.md, seventeenth and eighteenth sessions): levels 2 and 3 exchanged as histograms too (three barriers);
the last CTA scanning level 1 alone and publishing the crossing (about 8000 cycles for barrier A); all four slots'
2048 bins read in 8-byte words (4600 cycles for the scan); the mask written during the candidates' pass; a shortcut
past level 3; batching the low-word atomics before their carries (slower in this kernel and the radix one); and
(nineteenth session) a row's CTAs as one thread-block cluster, exchanging through distributed shared memory: barrier
A took half the cycles, the level-1 reads of the other CTAs' bins 1200 more, and 32 rows in four-CTA clusters took
17-36 µs (at 70 registers a thread, seemingly two waves). Twentieth session: one CTA a row with no exchange at all
(8K 7.3-7.6 µs against the radix kernel's 7.0); levels 2-5 in warp 0 alone (its same-bin atomics made a row's tail CTA
take 15,000 cycles); a pairwise ending after level 2 in warp 0 alone (faster at 8K, slower from 32K: that warp
scanned all the candidates for the crossing sub-bin's, 32 at a time; step 4's ending has every thread select them);
the whole row copied into shared memory with ``cp.async`` instead of registers (at 32K, 13.2 against 10.8 µs: the
copies' issue and the scan of 64 entries a thread cost more than barrier B); the rare resolve paths out of line
(slower). Twenty-first session: level 2 binned while the candidates are placed, its bins published with the lists
(the atomics inside the unrolled placement loop cost about 1900 cycles at 16K, more than the pass they saved); the
row's registers sized to the row length (8, 16 or 32 entries a thread: 8K 0.9 µs faster, but the kernel built for
rows in lists ran 32K-64K 0.4-0.6 µs slower than the one that holds the registers unused); a ballot a column
gathering the candidates from registers (no faster); at 1024 threads, levels 2-5 without the pairwise ending
(0.5 µs slower at 128K).

**Row barriers** are cooperative groups' grid sync: thread 0 of the row's first CTA adds ``2**31 - (CTAS - 1)``, the
others 1, and all wait for the word's top bit to flip. The arrival is a release reduction with no returned value:
each CTA's thread 0 loads the word into a register at its start, the load in flight while the bins are cleared and
the slice loads (it cannot flip before this CTA arrives, and the launch before has completed).
The words return to their low bits, ready for the next launch whatever its shape, so the kernel is CUDA-graph safe.
A waiting CTA needs the row's other CTAs running, so :func:`launch_topp_grid` refuses grids of more CTAs than
multiprocessors (every multiprocessor holds at least one of its CTAs). A wait longer than about a second gives up and
counts a timeout (:func:`grid_timeouts`); that launch's masks are wrong. One stream a device at a time: launches share
the per-device workspace.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.nvrtc import (
    COMMON_SOURCE,
    DTYPE_CODES,
    GLOBAL_SYNC_SOURCE,
    allow_dynamic_shared,
    compile_kernel,
    specialise,
)

__all__ = ["grid_shape", "grid_timeouts", "launch_topp_grid", "source"]

#: Global-memory words (u64) of a CTA's slot (the kernel's ``HW``): its level-1 histogram, its candidate count, the
#: range of its non-empty bins.
_HIST_WORDS = 2048 + 2
#: u32 words a row keeps between launches: barrier A's word, barrier B's word, padding, the timeouts, padding.
_SYNC_WORDS = 8
#: Candidates (entries of the level-1 crossing bin) a row resolves in shared memory; beyond, each CTA streams the row
#: again for levels 2 and 3.
CAND_CAP = 4096
#: CTAs a row by default.
DEFAULT_CTAS = 4
#: Entries a CTA holds in shared memory at most (128 KB beside its 34 KB of static arrays).
MAX_SLICE = 32768
#: Entries a thread holds at most (its candidates are bits of one 64-bit word, a bit an entry).
MAX_PER_THREAD = 64

_SOURCE = r"""
#define NB1 2048
#define NB3 512
#define SPEC (THREADS >= 1024 ? 1 : 2)  // entries a thread of each CTA's list loaded with the counts
#define HB(b) ((b) + ((b) >> 5))
#define SPIN_LIMIT (1u << 26)
#define LOADS 8
#define SPEC_MARGIN 32  // bins (4 binades) past a CTA's own range it reads before it knows the row's
#define NARROW_MAX (4 * THREADS)  // candidates resolve_narrow takes
#define KEEP_NONE 0xffffffffu
#define KEEP_ALL 0xfffffffeu
#define PRE 32  // entries of the whole row a thread holds at most, where the CTA gathers the row's candidates itself
#define REREAD (THREADS <= 512)  // at 1024 threads (64 registers a thread) the PRE registers would spill
#define PAIR_MAX 256  // entries of the level-2 crossing bin resolved pairwise (their u32 sums cannot wrap)
// MARK(i): thread 0's cycle counter at phase boundary i, for benchmarks/device/topp_grid_probe.py --timeline.
#if TIMELINE
#define MARK(i) do { if (threadIdx.x == 0) timeline[blockIdx.x * 16 + (i)] = clock64(); } while (0)
#else
#define MARK(i)
#endif
// A row's u32 words: sync[0] = barrier A's, sync[1] = barrier B's, sync[3] = waits given up. A CTA's u64 slot (HW
// words): its level-1 bins, its candidate count (word NB1), its non-empty bins' range (word NB1 + 1, low << 32 | top);
// its candidate list: CAND_CAP u32 words.

// A row barrier, as cooperative groups' grid sync: thread 0 arrives with one reduction (the row's first CTA adds
// 2**31 - (CTAS - 1), the others 1, so the word's top bit flips once all have arrived, and its low bits return to
// where they were) and waits for the flip. `start` is the word as this CTA read it at its start: the flip cannot
// happen before this CTA arrives, and the launch before this one has completed, so its top bit is the one before
// this barrier; the arrival then needs no returned value, which saves a round trip to the L2. Any number of CTAs a
// row works launch after launch. `before` runs in thread 0 after the CTA has met and before it arrives (a word to
// publish).
template <typename F> __device__ __forceinline__ void row_barrier(u32* bar, u32 start, u32* timeouts, F before) {
    __syncthreads();
    if (threadIdx.x == 0) {
        before();
        red_release(bar, blockIdx.x % CTAS == 0 ? 0x80000000u - (CTAS - 1u) : 1u);
        u32 spins = 0u;
        while (((ld_acquire(bar) ^ start) & 0x80000000u) == 0u) {
            if (++spins == SPIN_LIMIT) { atomicAdd(timeouts, 1u); break; }
        }
    }
    __syncthreads();
}

__device__ __forceinline__ void add_significand(u32* hlo, u32* hhi, u32 w, u32 f) {
    const u32 old = atomicAdd(&hlo[w], f);
    if (old + f < old) atomicAdd(&hhi[w], 1u);  // the low word's carry
}

// An entry's significand as an integer (the hidden bit included; subnormals without it): a bin's entries share an
// exponent, so their significands add up to the bin's exact mass in units of 2**(max(e, 1) - 150).
__device__ __forceinline__ u32 significand(u32 k) { return (k & 0x7fffffu) | (k >= 0x800000u ? 0x800000u : 0u); }

// A thread's PER bins from b0 in each of the row's CTA slots, 16 bytes a load.
template <int PER>
__device__ __forceinline__ void load_slot_bins(const u64* hrow, int b0, ulonglong2 (&v)[CTAS][PER / 2]) {
    #pragma unroll
    for (int c = 0; c < CTAS; ++c) {
        #pragma unroll
        for (int h = 0; h < PER / 2; ++h) v[c][h] = __ldcg((const ulonglong2*)(hrow + c * HW + b0 + 2 * h));
    }
}

// Level 1 of the row, in every CTA alike after barrier A: the sum of the row's CTA histograms (slots of HW words,
// word NB1 + 1 holding the CTA's non-empty range of bins, low << 32 | top), in one fixed-point scale, scanned from
// the top. Stores the crossing bin and the need left in it in its native units, or KEEP_NONE / KEEP_ALL. Every CTA
// reads the same words and computes the same result. The bins are read only within the row's non-empty range, and
// a slot's bins count only within the slot's own range (a CTA writes no others), a thread's PER bins 16 bytes at a
// time: the row's 128 CTAs reading every slot's 2048 bins in 8-byte words took about 4600 cycles (RESULTS.md,
// eighteenth session). Bins within SPEC_MARGIN of this CTA's own non-empty range [own_low, own_top) are requested
// together with the ranges: one round trip where the row's range falls inside that window, as the slices of a row
// mostly do; the others, where the row's range needs them, after.
__device__ __forceinline__ void level1_crossing(const u64* hrow, u32 own_low, u32 own_top, int n, double p, u64* ws,
                                                u32* s_b1, u64* s_need) {
    constexpr int PER = NB1 / THREADS;  // 2 or more, even
    const int t = threadIdx.x, b0 = NB1 - PER * (t + 1);  // this thread's bins: b0 ... b0 + PER - 1, the top first
    const bool early = own_top != 0u && b0 < (int)own_top + SPEC_MARGIN && b0 + PER + SPEC_MARGIN > (int)own_low;
    ulonglong2 v[CTAS][PER / 2];
    if (early) load_slot_bins<PER>(hrow, b0, v);
    u32 low = NB1, top = 0u, clow[CTAS], ctop[CTAS];  // a slot holds only its own non-empty bins [clow, ctop)
    #pragma unroll
    for (int c = 0; c < CTAS; ++c) {
        const u64 r = __ldcg(hrow + c * HW + NB1 + 1);
        clow[c] = (u32)(r >> 32);
        ctop[c] = (u32)r;
        if ((u32)r) { low = min(low, (u32)(r >> 32)); top = max(top, (u32)r); }
    }
    if (top == 0u) {  // every entry zero: uniform
        if (t == 0) *s_b1 = KEEP_NONE;
        __syncthreads();
        return;
    }
    u64 s[PER];
    #pragma unroll
    for (int i = 0; i < PER; ++i) s[i] = 0ull;
    if (b0 < (int)top && b0 + PER > (int)low) {
        if (!early) load_slot_bins<PER>(hrow, b0, v);
        #pragma unroll
        for (int c = 0; c < CTAS; ++c) {
            #pragma unroll
            for (int h = 0; h < PER / 2; ++h) {
                const u32 b = (u32)(b0 + 2 * h);  // bins b (x) and b + 1 (y)
                s[PER - 1 - 2 * h] += b - clow[c] < ctop[c] - clow[c] ? v[c][h].x : 0ull;
                s[PER - 2 - 2 * h] += b + 1u - clow[c] < ctop[c] - clow[c] ? v[c][h].y : 0ull;
            }
        }
    }
    // The unit 2**(eref - 150): an entry is under 2**(24 + etop - eref) units and the row has n < 2**L of them, so
    // F_T < 2**62; F_T is at least the top entry, 2**(61 - L) units or more.
    const int etop = max((int)(top - 1u) >> 3, 1), L = 32 - __clz(n);  // top: the top non-empty bin plus one
    const int eref = etop + 24 + L - 62;
    u64 f[PER], mine = 0ull;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int sh = max((NB1 - 1 - (t * PER + i)) >> 3, 1) - eref;
        f[i] = sh >= 0 ? s[i] << sh : (sh > -64 ? s[i] >> -sh : 0ull);
        mine += f[i];
    }
    u64 total;
    u64 above = block_scan_once(mine, ws, &total);
    const double err = NB1 + 4.0;  // the floors of F_T: under one unit a bin
    const u64 target = __double2ull_ru(p * ((double)total + err) * (1.0 + 0x1p-50) + err + 2.0);
    if (total < target && t == 0) *s_b1 = KEEP_ALL;  // p too close to 1 for the margin: every positive entry
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int b = NB1 - 1 - (t * PER + i);
        if (total >= target && above < target && above + f[i] >= target) {
            // The need left in b, in its native units: sh >= 0, a ceiling of whole multiples of 2**sh; sh < 0, the
            // floor's units are 2**-sh native ones.
            const int sh = max(b >> 3, 1) - eref;
            const u64 r = target - above;
            *s_b1 = (u32)b;
            *s_need = sh >= 0 ? (r + (1ull << sh) - 1ull) >> sh : r << -sh;
        }
        above += f[i];
    }
    __syncthreads();
}

// Adds the significands of the entries k with (k >> sel_shift) == sel into bins (k >> bin_shift) & bin_mask: the
// entries are the candidates cand[0, m), or (ROW) the whole row streamed again from global memory.
template <bool ROW> __device__ __forceinline__ void level_adds(const u32* cand, int m, const void* xrow, int n, u32 sel,
                                                              int sel_shift, int bin_shift, u32 bin_mask, u32* hlo,
                                                              u32* hhi) {
    for (int i = threadIdx.x; i < (ROW ? n : m); i += THREADS) {
        const u32 k = ROW ? abs_bits(xrow, i) : cand[i];
        if (k && (k >> sel_shift) == sel) add_significand(hlo, hhi, HB((k >> bin_shift) & bin_mask), significand(k));
    }
    __syncthreads();
}

// The crossing of a level in exact native units over this CTA's bins [0, NB) (cleared once read), from the top:
// the bin whose at-or-above sum first reaches `need`, and the need left inside it.
template <int NB> __device__ __forceinline__ void local_crossing(u32* hlo, u32* hhi, u64 need, u64* ws, u32* s_bin,
                                                                 u64* s_need) {
    constexpr int PER = (NB + THREADS - 1) / THREADS;
    u64 s[PER], mine = 0ull;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int r = threadIdx.x * PER + i, b = NB - 1 - r;
        s[i] = 0ull;
        if (r < NB) {
            s[i] = ((u64)hhi[HB(b)] << 32) | hlo[HB(b)];
            if (s[i]) { hlo[HB(b)] = 0u; hhi[HB(b)] = 0u; }
        }
        mine += s[i];
    }
    u64 total;
    u64 above = block_scan_once(mine, ws, &total);
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int r = threadIdx.x * PER + i;
        if (r < NB && above < need && above + s[i] >= need) { *s_bin = (u32)(NB - 1 - r); *s_need = need - above; }
        above += s[i];
    }
    __syncthreads();
}

// Levels 2 and 3 inside bin b1, in this CTA alone: bits 19-9, then bits 8-0 of the crossing sub-bin. Returns t*.
template <bool ROW> __device__ __forceinline__ u32 resolve(const u32* cand, int m, const void* xrow, int n, u32 b1,
                                                           u64 need, u32* hlo, u32* hhi, u64* ws, u32* s_bin,
                                                           u64* s_need) {
    level_adds<ROW>(cand, m, xrow, n, b1, 20, 9, 2047u, hlo, hhi);
    local_crossing<NB1>(hlo, hhi, need, ws, s_bin, s_need);
    const u32 b2 = (b1 << 11) | *s_bin;
    const u64 need2 = *s_need;
    level_adds<ROW>(cand, m, xrow, n, b2, 9, 0, 511u, hlo, hhi);
    local_crossing<NB3>(hlo, hhi, need2, ws, s_bin, s_need);
    return (b2 << 9) | *s_bin;
}

// In a whole warp: the crossing of 32 bins scanned from the top, lane l holding bin 31 - l's sum s: the bin whose
// at-or-above sum first reaches need (into bin) and the need left inside it (into left), in every lane. False where
// no bin reaches need (their sum is under it).
__device__ __forceinline__ bool warp_crossing32(u64 s, u64 need, u32& bin, u64& left) {
    const int lane = threadIdx.x & 31;
    u64 inc = s;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = __shfl_up_sync(FULL, inc, o);
        if (lane >= o) inc += y;
    }
    const u32 hits = __ballot_sync(FULL, inc - s < need && inc >= need);
    if (hits == 0u) return false;
    const int src = __ffs(hits) - 1;
    bin = (u32)(31 - src);
    left = __shfl_sync(FULL, need - (inc - s), src);
    return true;
}

// Adds the significands of the candidates whose bits above sh + 5 are `prefix` into their warp's 32 bins of bits
// sh + 4 ... sh (part[warp * 32 + bin]; at most 4 candidates a lane, m <= NARROW_MAX, so a word stays under 2**31).
__device__ __forceinline__ void warp_bins_add(const u32* cand, int m, u32 prefix, int sh, u32* part) {
    const int warp = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < m; i += THREADS) {
        const u32 k = cand[i];
        if (k && (k >> (sh + 5)) == prefix) atomicAdd(&part[warp * 32 + ((k >> sh) & 31u)], significand(k));
    }
}

// This lane's bin of the warps' part bins summed (bin 31 - lane: lane 0 holds the top bin).
__device__ __forceinline__ u64 warp_bins_sum(const u32* part) {
    const int lane = threadIdx.x & 31;
    u64 s = 0ull;
    #pragma unroll
    for (int q = 0; q < THREADS / 32; ++q) s += part[q * 32 + 31 - lane];
    return s;
}

// Levels of 5 bits inside a level-1 bin where the candidates are few (m <= NARROW_MAX), in this CTA alone, from bit
// sh0 down, of the candidates whose bits above sh0 + 5 are `prefix`: each warp adds its candidates into its own 32
// bins (part, zero on entry and left zero), and warp 0 alone sums the warps' bins and scans them with shuffles: a
// level costs two block barriers, where the 2048- and 512-bin levels of resolve() each pay a block-wide scan.
// Returns t*.
__device__ __forceinline__ u32 resolve_narrow(const u32* cand, int m, u32 prefix, int sh0, u64 need, u32* part,
                                              u32* s_bin, u64* s_need) {
    const int t = threadIdx.x, lane = t & 31;
    #pragma unroll 1
    for (int sh = sh0; sh >= 0; sh -= 5) {
        warp_bins_add(cand, m, prefix, sh, part);
        __syncthreads();
        if (t < 32) {
            const u64 s = warp_bins_sum(part);
            #pragma unroll
            for (int q = 0; q < THREADS / 32; ++q) part[q * 32 + 31 - lane] = 0u;
            u32 bin;
            u64 left;
            if (warp_crossing32(s, need, bin, left) && lane == 0) { *s_bin = bin; *s_need = left; }
        }
        __syncthreads();
        prefix = (prefix << 5) | *s_bin;
        need = *s_need;
    }
    return prefix;
}

// Levels 2-5 where the candidates are few (m <= NARROW_MAX), ending pairwise. Level 2 (bits 19-15) as a level of
// resolve_narrow, except that every warp sums the warps' bins (part2, zero on entry) and finds the crossing bin
// itself: no barrier for warp 0's result. Then every thread takes that bin's entries of cand (rare: an atomic slot
// each) into sel as significands, which within the bin (one exponent) order as the keys do. After one barrier,
// where the bin holds at most PAIR_MAX entries, thread i sums the significands at or above its own (u32: under
// 256 * 2**24) and, where that reaches the need left, offers its own to *s_tmax (a maximum: ties at t* all count), and
// the caller reads t* after its next barrier (returns true; t* = prefix2 << 15 | *s_tmax's low 15 bits). Otherwise
// levels 3-5 of resolve_narrow run on part (zero) and t* comes back in tstar. sel (PAIR_MAX + 4 words) is zero on
// entry, so that the 16-byte reads past the bin's entries add nothing. Six block barriers fewer than resolve_narrow
// alone: 700-1000 cycles less at 16K-32K entries (median CTA; RESULTS.md, twenty-first session).
__device__ __forceinline__ bool resolve_pairwise(const u32* cand, int m, u32 b1, u64 need, u32* part2, u32* part,
                                                 u32* sel, u32* s_sel, u32* s_tmax, u32* s_bin, u64* s_need,
                                                 u32& prefix2, u32& tstar) {
    const int t = threadIdx.x;
    warp_bins_add(cand, m, b1, 15, part2);
    __syncthreads();
    u32 b2;
    u64 need2;
    if (!warp_crossing32(warp_bins_sum(part2), need, b2, need2)) {  // cannot happen: b1's mass reaches need
        tstar = resolve_narrow(cand, m, b1, 15, need, part, s_bin, s_need);
        return false;
    }
    prefix2 = (b1 << 5) | b2;
    for (int i = t; i < m; i += THREADS) {
        const u32 k = cand[i];
        if ((k >> 15) == prefix2) {
            const u32 slot = atomicAdd(s_sel, 1u);
            if (slot < PAIR_MAX) sel[slot] = significand(k);
        }
    }
    __syncthreads();
    const u32 cnt2 = *s_sel;
    if (cnt2 > PAIR_MAX) {
        tstar = resolve_narrow(cand, m, prefix2, 10, need2, part, s_bin, s_need);
        return false;
    }
    if ((t & ~31) < (int)cnt2) {  // whole warps, for the reduction
        const u32 me = t < (int)cnt2 ? sel[t] : 0u;
        u32 acc = 0u;
        for (int j = 0; j < (int)cnt2; j += 4) {
            const uint4 q = *(const uint4*)&sel[j];
            acc += (q.x >= me ? q.x : 0u) + (q.y >= me ? q.y : 0u) + (q.z >= me ? q.z : 0u) + (q.w >= me ? q.w : 0u);
        }
        const u32 best = __reduce_max_sync(FULL, t < (int)cnt2 && (u64)acc >= need2 ? me : 0u);
        if ((t & 31) == 0 && best) atomicMax(s_tmax, best);
    }
    return true;
}

// This lane's first slot among c slots it takes from *counter (shared memory): its warp's inclusive scan of the
// counts and one atomic a warp, where a block scan would cost a block barrier. The order across warps is arbitrary:
// a list is only summed.
__device__ __forceinline__ u32 warp_reserve(u32 c, u32* counter) {
    const int lane = threadIdx.x & 31;
    u32 inc = c;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u32 y = __shfl_up_sync(FULL, inc, o);
        if (lane >= o) inc += y;
    }
    u32 base = 0u;
    if (lane == 31 && inc) base = atomicAdd(counter, inc);
    return __shfl_sync(FULL, base, 31) + inc - c;
}

// The four keys of this CTA's slice from j (zeros past len).
__device__ __forceinline__ uint4 load_group(const u32* keys, int j, int len) {
    if (j + 3 < len) return *(const uint4*)&keys[j];
    uint4 k;
    k.x = j < len ? keys[j] : 0u;
    k.y = j + 1 < len ? keys[j + 1] : 0u;
    k.z = j + 2 < len ? keys[j + 2] : 0u;
    k.w = 0u;
    return k;
}

// The mask bytes of the four entries from j (keys at or above thr >= 1, so never a zero), one 4-byte store where
// `aligned`.
__device__ __forceinline__ void mask_group(unsigned char* orow, int j, int len, uint4 k, u32 thr, bool aligned) {
    const u32 b = (u32)(k.x >= thr) | (u32)(k.y >= thr) << 8 | (u32)(k.z >= thr) << 16 | (u32)(k.w >= thr) << 24;
    if (aligned && j + 3 < len) {
        *(u32*)(orow + j) = b;
    } else {
        #pragma unroll
        for (int q = 0; q < 4; ++q)
            if (j + q < len) orow[j + q] = (unsigned char)((b >> (8 * q)) & 1u);
    }
}

extern "C" __global__ void __launch_bounds__(THREADS, 1) sb_topp_grid(
    const void* __restrict__ x, unsigned char* __restrict__ out, int* __restrict__ passes_out, int n, int stride_x,
    int stride_out, double p, int slice, u64* __restrict__ ws_hist, u32* __restrict__ ws_sync,
    u32* __restrict__ ws_cand, u64* __restrict__ timeline)
{
    extern __shared__ __align__(16) u32 keys[];  // this CTA's slice, |x| bit patterns
    __shared__ u32 hlo[HB(NB1)], hhi[HB(NB1)];
    __shared__ u32 cand[CAND_CAP];
    __shared__ u64 ws[32];
    __shared__ u32 s_b1, s_bin, s_top, s_low, s_count, s_sel, s_tmax;
    __shared__ __align__(16) u32 sel[PAIR_MAX + 4];
    __shared__ u64 s_need;
    const int t = threadIdx.x, row = blockIdx.x / CTAS, c = blockIdx.x % CTAS;
    const int first = c * slice, len = max(0, min(n, first + slice) - first), groups = (len + 3) >> 2;
    unsigned char* const orow = out + (long long)row * stride_out + first;
    const bool aligned = (((unsigned long long)orow) & 3ull) == 0ull;
    const u64* const hrow = ws_hist + (long long)row * CTAS * HW;  // the row's CTA slots, in CTA order
    u64* const hmine = ws_hist + (long long)blockIdx.x * HW;
    u32* const sync = ws_sync + row * 8;
    const bool search = p < 1.0;  // uniform
    // The barrier words as they stand (thread 0 alone waits at the barriers) and the slice's first LOADS entries a
    // thread, requested before the bins are cleared: neither round trip holds up the block's first barrier.
    u32 start_a = 0u, start_b = 0u;
    if (t == 0 && search) { start_a = ld_relaxed(sync); start_b = ld_relaxed(sync + 1); }
    const void* xrow = row_of(x, row, stride_x);
    u32 v[LOADS];
    #pragma unroll
    for (int u = 0; u < LOADS; ++u) v[u] = t + u * THREADS < len ? abs_bits(xrow, first + t + u * THREADS) : 0u;
    for (int w = t; w < HB(NB1); w += THREADS) { hlo[w] = 0u; hhi[w] = 0u; }
    for (int w = t; w < PAIR_MAX + 4; w += THREADS) sel[w] = 0u;
    if (t == 0) {
        s_top = 0u;
        s_low = NB1;
        s_count = 0u;
        s_sel = 0u;
        s_tmax = 0u;
    }
    __syncthreads();
    MARK(0);

    // Level 1: the slice, LOADS entries a thread at a time, the next LOADS already in flight while these are binned
    // (the atomics would otherwise keep each load waiting for the last), by exponent and 3 mantissa bits.
    for (int j0 = t; j0 < len; j0 += LOADS * THREADS) {
        u32 w[LOADS];
        #pragma unroll
        for (int u = 0; u < LOADS; ++u) {
            const int j = j0 + (LOADS + u) * THREADS;
            w[u] = j < len ? abs_bits(xrow, first + j) : 0u;
        }
        #pragma unroll
        for (int u = 0; u < LOADS; ++u) {
            const int j = j0 + u * THREADS;
            if (j < len) keys[j] = v[u];
            if (search && v[u]) add_significand(hlo, hhi, HB(v[u] >> 20), significand(v[u]));
            v[u] = w[u];
        }
    }
    u32 tstar = 1u;  // p >= 1: every positive entry
    int levels = 0;
    bool pair = false;  // t* comes from resolve_pairwise, after the mask's barrier
    u32 prefix2 = 0u;
    MARK(1);
    if (search) {
        // REREAD (rows of up to PRE entries a thread): the whole row as stored, requested now so that it arrives while
        // the CTA meets the others at barrier A (nothing uses a value before then); each CTA then gathers the row's
        // candidates itself, and no CTA waits at barrier B or reads another's list.
        const bool reread = REREAD && n <= PRE * THREADS;
        u32 pre[PRE];
        if (reread) {
            #pragma unroll
            for (int i = 0; i < PRE; ++i) pre[i] = t + i * THREADS < n ? raw_bits(xrow, t + i * THREADS) : 0u;
        }
        // This CTA's non-empty range of bins into its own slot (the others there are stale: readers skip them), and
        // the bins cleared here for the levels below.
        __syncthreads();
        u32 low = NB1, top = 0u;  // this CTA's non-empty bins: [low, top)
        u64 mine[NB1 / THREADS];
        #pragma unroll
        for (int i = 0; i < NB1 / THREADS; ++i) {
            const int b = t + i * THREADS;
            const u32 lo = hlo[HB(b)], hi = hhi[HB(b)];
            mine[i] = ((u64)hi << 32) | lo;
            if (lo | hi) { hlo[HB(b)] = 0u; hhi[HB(b)] = 0u; low = min(low, (u32)b); top = b + 1u; }
        }
        #pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            low = min(low, __shfl_xor_sync(FULL, low, o));
            top = max(top, __shfl_xor_sync(FULL, top, o));
        }
        if ((t & 31) == 0 && top) { atomicMin(&s_low, low); atomicMax(&s_top, top); }
        __syncthreads();
        {  // only the non-empty range into the slot: readers take a slot's bins within its own range alone
            const u32 l = s_low, h = s_top;
            #pragma unroll
            for (int i = 0; i < NB1 / THREADS; ++i) {
                const u32 b = (u32)(t + i * THREADS);
                if (b - l < h - l) __stcg(hmine + b, mine[i]);
            }
        }
        MARK(2);
        // Barrier A; then every CTA sums the row's slots and finds the crossing itself (no CTA waits on another's
        // scan, and no result is published).
        row_barrier(sync, start_a, sync + 3, [&] { __stcg(hmine + NB1 + 1, (u64)s_low << 32 | s_top); });
        MARK(3);
        level1_crossing(hrow, s_low, s_top, n, p, ws, &s_b1, &s_need);
        MARK(4);
        const u32 b1 = s_b1;
        if (b1 == KEEP_NONE) {
            tstar = FULL;
        } else if (b1 != KEEP_ALL) {
            const u64 need = s_need;
            // The candidates (the row's entries in b1): where the row is in registers (pre), the bits of a thread's
            // entries, and each thread writes its own into shared memory at its warp's slots. Otherwise the slice's:
            // a bit each in a thread's mask over its groups of four (group g = st * THREADS + t, bit 4 st + q), and
            // each thread writes its own into this CTA's list in global memory at its warp's slots; the count goes
            // to the slot's word NB1.
            // A key k is in b1 when k - lo < width, unsigned (bin 0 without the zeros). The mask is built in two
            // 32-bit halves: with one 64-bit word and its variable shifts the loop issued about 48 instructions a
            // step (4600 cycles at 128K entries); unrolled over every possible step, short slices paid for the
            // steps they do not have.
            const u32 lo = (b1 << 20) | (b1 == 0u), width = (1u << 20) - (b1 == 0u);
            u32 m;
            if (reread) {
                u32 in = 0u;  // bit i: pre[i] is in b1
                #pragma unroll
                for (int i = 0; i < PRE; ++i) in |= (key_of_raw(pre[i]) - lo < width ? 1u : 0u) << i;
                MARK(5);
                const u32 at = warp_reserve(__popc(in), &s_count);
                if (at + __popc(in) <= CAND_CAP) {  // else the count alone matters: m > CAND_CAP streams the row
                    // One shared-space address, stepped past each candidate stored: through generic pointers the
                    // compiler rebuilt the array's address at every one of the 32 steps (9 SASS instructions a step,
                    // now 3; 16K 8.66 -> 8.27 µs, twenty-first session).
                    u32 dst = (u32)__cvta_generic_to_shared(cand + at);
                    #pragma unroll
                    for (int i = 0; i < PRE; ++i) {  // unrolled, so that pre stays in registers
                        if ((in >> i) & 1u) {
                            asm volatile("st.shared.u32 [%0], %1;" :: "r"(dst), "r"(key_of_raw(pre[i])) : "memory");
                            dst += 4u;
                        }
                    }
                }
                __syncthreads();
                MARK(6);
                m = min(s_count, (u32)CAND_CAP + 1u);
            } else {
                u32 half[2] = {0u, 0u};  // steps 0-7, then 8-15 (MAX_PER_THREAD / 4 steps at most)
                for (int st = 0, g = t; g < groups; ++st, g += THREADS) {
                    const uint4 k4 = load_group(keys, 4 * g, len);
                    const u32 q4 = (k4.x - lo < width ? 1u : 0u) | (k4.y - lo < width ? 2u : 0u)
                                   | (k4.z - lo < width ? 4u : 0u) | (k4.w - lo < width ? 8u : 0u);
                    if (st < 8) half[0] |= q4 << (4 * st);
                    else half[1] |= q4 << (4 * st - 32);
                }
                const u64 bits = (u64)half[1] << 32 | half[0];
                MARK(5);
                u32 at = warp_reserve(__popcll(bits), &s_count);
                u32* const cmine = ws_cand + (long long)blockIdx.x * CAND_CAP;
                for (u64 r = bits; r != 0ull && at < CAND_CAP; r &= r - 1ull, ++at) {
                    const int b = __ffsll((long long)r) - 1;
                    cmine[at] = keys[4 * ((b >> 2) * THREADS + t) + (b & 3)];
                }
                MARK(6);
                row_barrier(sync + 1, start_b, sync + 3, [&] { __stcg(hmine + NB1, (u64)s_count); });
                // Every CTA's count, and (where they all fit) their lists into shared memory, in CTA order: the first
                // SPEC entries a thread of each list are loaded together with the counts, in one round trip to the L2.
                u32 cnt[CTAS], spec[CTAS][SPEC];
                m = 0u;
                #pragma unroll
                for (int k = 0; k < CTAS; ++k) {
                    const u32* src = ws_cand + (long long)(row * CTAS + k) * CAND_CAP;
                    cnt[k] = (u32)min(__ldcg(hrow + k * HW + NB1), (u64)CAND_CAP + 1ull);
                    #pragma unroll
                    for (int q = 0; q < SPEC; ++q) spec[k][q] = __ldcg(src + t + q * THREADS);
                }
                #pragma unroll
                for (int k = 0; k < CTAS; ++k) m += cnt[k];
                if (m <= CAND_CAP) {
                    u32 base = 0u;
                    #pragma unroll
                    for (int k = 0; k < CTAS; ++k) {
                        #pragma unroll
                        for (int q = 0; q < SPEC; ++q)
                            if (t + q * THREADS < cnt[k]) cand[base + t + q * THREADS] = spec[k][q];
                        const u32* src = ws_cand + (long long)(row * CTAS + k) * CAND_CAP;
                        for (u32 i = t + SPEC * THREADS; i < cnt[k]; i += THREADS) cand[base + i] = __ldcg(src + i);
                        base += cnt[k];
                    }
                }
            }
            __syncthreads();
            MARK(7);
            // Levels 2-5 on few candidates, ending pairwise (level 2's bins in hhi, those below in hlo); levels 2
            // and 3 of 2048 and 512 bins on more; on the row streamed again where they overflowed.
            if (m <= NARROW_MAX)
                pair = resolve_pairwise(cand, (int)m, b1, need, hhi, hlo, sel, &s_sel, &s_tmax, &s_bin, &s_need,
                                        prefix2, tstar);
            else if (m <= CAND_CAP)
                tstar = resolve<false>(cand, (int)m, xrow, n, b1, need, hlo, hhi, ws, &s_bin, &s_need);
            else
                tstar = resolve<true>(cand, 0, xrow, n, b1, need, hlo, hhi, ws, &s_bin, &s_need);
            levels = 3;
            MARK(8);
        }
    }
    // The mask (entries other threads loaded: a barrier first, which p >= 1 has not met since the loads).
    __syncthreads();
    if (pair) tstar = (prefix2 << 15) | (s_tmax & 0x7fffu);
    for (int g = t; g < groups; g += THREADS)
        mask_group(orow, 4 * g, len, load_group(keys, 4 * g, len), tstar, aligned);
    if (WRITE_PASSES && t == 0 && c == 0) passes_out[row] = levels;
    MARK(9);
}
"""


def source(*, threads: int, ctas: int, dtype_code: int, write_passes: bool, timeline: bool = False) -> str:
    """The kernel source for one specialisation: ``ctas`` CTAs of ``threads`` threads a row. ``timeline``: thread 0
    of each CTA records its cycle counter at 10 phase boundaries (the probe's)."""
    return specialise(COMMON_SOURCE + GLOBAL_SYNC_SOURCE + _SOURCE, THREADS=threads, CTAS=ctas, IN_DTYPE=dtype_code,
                      WRITE_PASSES=int(write_passes), CAND_CAP=CAND_CAP, MAX_PER_THREAD=MAX_PER_THREAD,
                      HW=_HIST_WORDS, TIMELINE=int(timeline))


@functools.cache
def _compiled(threads: int, ctas: int, dtype_code: int, write_passes: bool, timeline: bool) -> Any:
    kernel = compile_kernel(source(threads=threads, ctas=ctas, dtype_code=dtype_code, write_passes=write_passes,
                                   timeline=timeline), "sb_topp_grid", "the grid CUDA top-p kernel")
    allow_dynamic_shared(kernel, 4 * MAX_SLICE, "the grid CUDA top-p kernel")
    return kernel


_WORKSPACE: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, ctas: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-device CTA slots (histogram and candidate count), row barrier words and CTA candidate lists for a launch
    of ``ctas`` CTAs in all, allocated zeroed once and reused: a launch rewrites what it reads of its slots and lists
    before reading it, and leaves the barriers ready for the next. One stream a device at a time. A launch has at
    most one CTA a multiprocessor (:func:`grid_shape`), so 256 CTAs' worth is never replaced under a CUDA graph that
    captured it."""
    key = (device.type, device.index)
    ws = _WORKSPACE.get(key)
    if ws is None or ws[1].numel() < _SYNC_WORDS * ctas:
        cap = max(ctas, 256)
        ws = (torch.zeros(cap * _HIST_WORDS, dtype=torch.int64, device=device),
              torch.zeros(cap * _SYNC_WORDS, dtype=torch.int32, device=device),
              torch.zeros(cap * CAND_CAP, dtype=torch.int32, device=device))
        _WORKSPACE[key] = ws
    return ws


def grid_timeouts(device: torch.device | str = "cuda") -> int:
    """Row-barrier waits abandoned on ``device`` since the process started (0 when all is well; otherwise some
    launch's CTAs could not all run at once, and its masks are wrong)."""
    dev = torch.device(device)
    ws = _WORKSPACE.get((dev.type, dev.index))
    return 0 if ws is None else int(ws[1].view(-1, _SYNC_WORDS)[:, 3].sum())


def grid_shape(n: int, rows: int, sms: int, ctas: int | None = None) -> tuple[int, int] | None:
    """``(threads, ctas)`` for ``rows`` rows of ``n`` entries, or None where the grid would not fit the ``sms``
    multiprocessors at once (its row barriers need every CTA running) or a slice would exceed :data:`MAX_SLICE`."""
    ctas = ctas or DEFAULT_CTAS
    if not 1 <= ctas <= 32 or rows * ctas > sms or -(-n // ctas) > MAX_SLICE:
        return None
    return (1024 if -(-n // ctas) > 16384 else 512), ctas


def launch_topp_grid(x: torch.Tensor, p: float, out: torch.Tensor, passes_out: torch.Tensor | None = None, *,
                     ctas: int | None = None, threads: int | None = None,
                     timeline: torch.Tensor | None = None) -> None:
    """Write the top-p mask of ``x`` ``[rows, n]`` (float32/bfloat16/float16, last dim contiguous, values validated
    by the caller) into ``out`` (uint8 ``[rows, n]``); ``passes_out`` (int32 ``[rows]``) gets 3 (the levels) for
    rows that searched. ``ctas`` and ``threads`` override the shape, for sweeps; ``timeline`` (int64
    ``[rows * ctas, 16]``) receives each CTA's phase boundaries in cycles, for the probe."""
    rows, n = x.shape
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    shape = grid_shape(n, rows, sms, ctas)
    if shape is None:
        raise UsageError(f"grid CUDA top-p: {rows} rows of {n} entries in {ctas or DEFAULT_CTAS} CTAs a row do not "
                         f"fit {sms} multiprocessors at once with at most {MAX_SLICE} entries a CTA")
    threads = threads or shape[0]
    ctas = shape[1]
    slice_n = -(-n // ctas)
    if threads & (threads - 1) or not 64 <= threads <= 1024 or slice_n > MAX_PER_THREAD * threads:
        raise UsageError(f"grid CUDA top-p: threads must be a power of two from 64 to 1024 and hold at most "
                         f"{MAX_PER_THREAD} entries each, got {threads} threads for {slice_n} entries a CTA")
    hist, sync, cand = _workspace(x.device, rows * ctas)
    kernel = _compiled(threads, ctas, DTYPE_CODES[x.dtype], passes_out is not None, timeline is not None)
    kernel(grid=(rows * ctas, 1, 1), block=(threads, 1, 1), shared_mem=4 * slice_n, args=[
        x, out, passes_out if passes_out is not None else out, n, x.stride(0), out.stride(0), float(p), slice_n,
        hist, sync, cand, timeline if timeline is not None else hist])
