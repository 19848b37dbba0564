"""Sorting-free top-p over several ordinary CTAs a row that meet in global memory (CUDA, NVRTC).

Why this exists next to the one-CTA / cluster kernel (:mod:`sparsebench.kernels.cuda_topp`): that kernel keeps a row
in one CTA, or a thread-block cluster of 2-4, and rows of 64K-128K entries held 43 entries a thread in shared memory
and paid three shared-memory atomics for each in their histogram pass: 19.4 and 30.6 µs for 32 rows on the H200,
2.4x and 3.2x one read of the input, where the project asks for 2x. Here a row takes ``CTAS`` ordinary CTAs
(:data:`DEFAULT_CTAS`), each holding a slice in shared memory with one shared atomic an entry, and the CTAs meet
through global memory: 17.0 and 21.2 µs (2.1x and 2.2x; ``benchmarks/RESULTS.md``, seventeenth session). At 32K
entries and under it loses to the radix kernel (a row barrier and the last CTA's scan cost about 4 µs whatever the
length), so :func:`~sparsebench.kernels.cuda_topp.launch_topp` takes it only beyond 32K entries.

Algorithm (every CTA of a row; they meet at two row barriers)
--------------------------------------------------------------
Entries are ``|x|`` float32 bit patterns (bfloat16 / float16 widened), whose integer order is the value order.

1. **Level 1** (no sum or maximum needed first): each CTA bins its slice by ``key >> 20`` (the exponent and three
   mantissa bits: 2048 bins that cover every positive float, 1/8 of a binade each) and adds each entry's 24-bit
   significand (the hidden bit included) to its bin in shared memory. All entries of a bin share an exponent, so a
   bin's sum of significands, times ``2**(max(e, 1) - 150)``, is its exact mass. The CTA adds its non-empty bins to
   the row's histogram in global memory (64-bit atomics) and arrives at barrier A.
2. The **last CTA to arrive** reads the row's 2048 bins (and clears them for the next launch), and from their float64
   total ``T`` picks a fixed-point unit that keeps ``F_T`` (the row's mass in units) under ``2**62``. A bin's mass in
   units is exact, or floored where the bin lies more than ~40 binades under ``T`` (each floor loses under a unit). A
   set is accepted when its mass in units reaches ``p (F_T + E)(1 + 2**-50) + E + 2``, ``E`` = 2048 + 4 bounding the
   floors of ``F_T``; its real mass then reaches ``p T``. A scan from the top finds the crossing bin ``b1`` (the mass
   above it is not accepted, with it it is) and the need left in it, in the bin's own exact units. It publishes
   ``b1`` together with the barrier's next generation in one 64-bit release store; the others wait for it.
3. **Candidates**: every CTA gathers its slice's entries of ``b1`` (each warp by ballot into its share of the slots;
   shared atomics on one counter serialised), reserves a range of the row's list in global memory with one atomic,
   writes them, and meets the others at barrier B; then each CTA reads the whole list back (up to
   :data:`CAND_CAP`; rows of softmax(randn x 2) put up to 2220 of 128K entries there).
4. **Levels 2 and 3**, in each CTA alone: the candidates by bits 19-9 (2048 bins of 512 patterns), then those of the
   crossing sub-bin by bits 8-0: exact integer sums. The crossing pattern is ``t*``, the largest value whose
   at-or-above mass is accepted, and every CTA writes ``x >= t*`` over its slice's positive entries (ties at ``t*``
   all kept). Where the list overflows (uniform rows, a few distinct values), each CTA streams the row again from
   global memory for levels 2 and 3 instead: slower, as exact.

The acceptance margin is about ``1e-15 T``: the mask equals the float64 sort-based reference's
(:func:`sparsebench.kernels.topp.topp_mask_torch`) except in near-ties, as for the radix kernel. The first design
exchanged levels 2 and 3 as histograms too (three barriers, fences around each): 8K and 64K entries took 14.4 and 19.0
µs, against 11.3 and 16.9 now (RESULTS.md, seventeenth session).

**Row barriers.** Barrier A counts arrivals (acquire-release atomics; the last arriver resets the count before it
publishes). Barrier B is cooperative groups' grid sync: thread 0 of the row's first CTA adds ``2**31 - (CTAS - 1)``,
the others 1, and all wait for the word's top bit to flip. Both leave their words ready for the next launch, whatever
its shape, so the kernel is CUDA-graph safe. A waiting CTA needs the row's other CTAs running, so
:func:`launch_topp_grid` refuses grids of more CTAs than multiprocessors (every multiprocessor holds at least one of
its CTAs). A wait longer than about a second gives up and counts a timeout (:func:`grid_timeouts`); that
launch's masks are wrong. One stream a device at a time: launches share the per-device workspace.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.nvrtc import COMMON_SOURCE, DTYPE_CODES, allow_dynamic_shared, compile_kernel, specialise

__all__ = ["grid_shape", "grid_timeouts", "launch_topp_grid", "source"]

#: Global-memory words (u64) a row keeps between launches: its level-1 histogram and the published crossing.
_HIST_WORDS = 2048 + 2
#: u32 words a row keeps: barrier A's arrivals, barrier B's word, the candidate count, the timeouts, padding.
_SYNC_WORDS = 8
#: Candidates (entries of the level-1 crossing bin) a row resolves in shared memory; beyond, each CTA streams the row
#: again for levels 2 and 3.
CAND_CAP = 4096
#: CTAs a row by default.
DEFAULT_CTAS = 4
#: Entries a CTA holds in shared memory at most (128 KB beside its 34 KB of static arrays).
MAX_SLICE = 32768

_SOURCE = r"""
#define NB1 2048
#define NB3 512
#define HB(b) ((b) + ((b) >> 5))
#define SPIN_LIMIT (1u << 26)
#define LOADS 8
#define WARPS (THREADS / 32)
#define WCAP (CAND_CAP / WARPS)  // a warp's share of the candidate slots while gathering
#define KEEP_NONE 0xffffffffu
#define KEEP_ALL 0xfffffffeu
// MARK(i): thread 0's cycle counter at phase boundary i, for benchmarks/device/topp_grid_probe.py --timeline.
#if TIMELINE
#define MARK(i) do { if (threadIdx.x == 0) timeline[blockIdx.x * 16 + (i)] = clock64(); } while (0)
#else
#define MARK(i)
#endif
// A row's words: u64 gres[0] = generation << 32 | published level-1 result, gres[1] = its need; u32 sync[0] =
// barrier A's arrivals, sync[1] = barrier B's word, sync[2] = the row's candidate count, sync[3] = timeouts.

__device__ __forceinline__ u32 ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u64 ld_acquire64(const u64* p) {
    u64 v;
    asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_release64(u64* p, u64 v) {
    asm volatile("st.release.gpu.global.u64 [%0], %1;" :: "l"(p), "l"(v) : "memory");
}
// An arrival: releases what this CTA wrote before its barrier, acquires what the CTAs before it released.
__device__ __forceinline__ u32 add_acq_rel(u32* p, u32 v) {
    u32 old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}

// Barrier B, as cooperative groups' grid sync: thread 0 arrives with one atomic (the row's first CTA adds
// 2**31 - (CTAS - 1), the others 1, so the word's top bit flips once all have arrived) and waits for the flip. The
// word returns to its low bits, so any number of CTAs a row works launch after launch.
__device__ __forceinline__ void row_barrier(u32* bar, u32* timeouts) {
    __syncthreads();
    if (threadIdx.x == 0) {
        const u32 old = add_acq_rel(bar, blockIdx.x % CTAS == 0 ? 0x80000000u - (CTAS - 1u) : 1u);
        u32 spins = 0u;
        while (((ld_acquire(bar) ^ old) & 0x80000000u) == 0u) {
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

// Level 1 of the row, by its last CTA to arrive: the row's 2048 bins (cleared once read) in one fixed-point scale,
// scanned from the top. Stores the crossing bin and the need left in it in its native units, or KEEP_NONE / KEEP_ALL.
__device__ __forceinline__ void level1_crossing(u64* g1, double p, u64* ws, double* red_d, u32* s_b1, u64* s_need) {
    constexpr int PER = NB1 / THREADS;
    const int t = threadIdx.x;
    u64 s[PER];
    double td = 0.0;
    #pragma unroll
    for (int i = 0; i < PER; ++i) {
        const int b = NB1 - 1 - (t * PER + i);  // descending: thread 0 holds the top bins
        s[i] = __ldcg(g1 + b);
        __stcg(g1 + b, 0ull);
        td += ldexp((double)s[i], max(b >> 3, 1) - 150);
    }
    td = warp_sum(td);
    if ((t & 31) == 0) red_d[t >> 5] = td;
    __syncthreads();
    td = 0.0;
    for (int w = 0; w < WARPS; ++w) td += red_d[w];
    if (!(td > 0.0)) {  // uniform
        if (t == 0) *s_b1 = KEEP_NONE;
        __syncthreads();
        return;
    }
    int et;
    frexp(td, &et);  // T < 2**et, so F_T < 2**62 in units of 2**(eref - 150)
    const int eref = et + 150 - 62;
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

extern "C" __global__ void __launch_bounds__(THREADS, 1) sb_topp_grid(
    const void* __restrict__ x, unsigned char* __restrict__ out, int* __restrict__ passes_out, int n, int stride_x,
    int stride_out, double p, int slice, u64* __restrict__ ws_hist, u32* __restrict__ ws_sync,
    u32* __restrict__ ws_cand, u64* __restrict__ timeline)
{
    extern __shared__ __align__(16) u32 keys[];  // this CTA's slice, |x| bit patterns
    __shared__ u32 hlo[HB(NB1)], hhi[HB(NB1)];
    __shared__ u32 cand[CAND_CAP];
    __shared__ u64 ws[32];
    __shared__ double red_d[32];
    __shared__ u32 s_b1, s_bin, s_last, s_cnt, s_base, s_wcnt[WARPS];
    __shared__ u64 s_gres, s_need;
    const int t = threadIdx.x, lane = t & 31, warp = t >> 5, row = blockIdx.x / CTAS, c = blockIdx.x % CTAS;
    const int first = c * slice, len = max(0, min(n, first + slice) - first);
    u64* const g1 = ws_hist + (long long)row * (NB1 + 2);
    u64* const gres = g1 + NB1;
    u32* const sync = ws_sync + row * 8;
    u32* const gcand = ws_cand + (long long)row * CAND_CAP;
    for (int w = t; w < HB(NB1); w += THREADS) { hlo[w] = 0u; hhi[w] = 0u; }
    __syncthreads();
    MARK(0);

    // Level 1: load the slice, LOADS entries a thread in flight at a time (the atomics would otherwise keep each
    // load waiting for the last), and bin by exponent and 3 mantissa bits.
    const bool search = p < 1.0;  // uniform
    const void* xrow = row_of(x, row, stride_x);
    for (int j0 = t; j0 < len; j0 += LOADS * THREADS) {
        u32 v[LOADS];
        #pragma unroll
        for (int u = 0; u < LOADS; ++u) {
            const int j = j0 + u * THREADS;
            v[u] = j < len ? abs_bits(xrow, first + j) : 0u;
        }
        #pragma unroll
        for (int u = 0; u < LOADS; ++u) {
            const int j = j0 + u * THREADS;
            if (j < len) keys[j] = v[u];
            if (search && v[u]) add_significand(hlo, hhi, HB(v[u] >> 20), significand(v[u]));
        }
    }
    u32 tstar = 1u;  // p >= 1: every positive entry
    int levels = 0;
    MARK(1);
    if (search) {
        // This CTA's non-empty bins into the row's histogram (and cleared for levels 2-3).
        __syncthreads();
        for (int b = t; b < NB1; b += THREADS) {
            const u64 m = ((u64)hhi[HB(b)] << 32) | hlo[HB(b)];
            if (m) { atomicAdd(g1 + b, m); hlo[HB(b)] = 0u; hhi[HB(b)] = 0u; }
        }
        __syncthreads();
        MARK(2);
        // Barrier A: the last CTA to arrive scans the row's bins and publishes the crossing together with the next
        // generation (one release store); the others wait for the generation and read the crossing in the same word.
        if (t == 0) {
            s_gres = ld_acquire64(gres);  // this launch's generation: it cannot move on before this CTA arrives
            s_last = add_acq_rel(sync, 1u) == CTAS - 1;
        }
        __syncthreads();
        if (s_last) {
            level1_crossing(g1, p, ws, red_d, &s_b1, &s_need);
            if (t == 0) {
                gres[1] = s_need;
                sync[0] = 0u;
                sync[2] = 0u;  // the row's candidate count: no CTA adds to it before this barrier ends
                st_release64(gres, (((s_gres >> 32) + 1ull) << 32) | s_b1);
            }
        } else if (t == 0) {
            const u32 gen = (u32)(s_gres >> 32);
            u32 spins = 0u;
            u64 r;
            while ((u32)((r = ld_acquire64(gres)) >> 32) == gen) {
                if (++spins == SPIN_LIMIT) { atomicAdd(sync + 3, 1u); break; }
            }
            s_b1 = (u32)r;
        }
        __syncthreads();
        MARK(3);
        const u32 b1 = s_b1;
        if (b1 == KEEP_NONE) {
            tstar = FULL;
        } else if (b1 != KEEP_ALL) {
            // The candidates (the row's entries in b1): each warp gathers its own in its share of the slots, by
            // ballot (shared atomics on one counter serialised: about 7000 cycles at 128K entries); the CTA
            // reserves its range of the row's list with one atomic, the row meets (barrier B), and each CTA reads
            // the list back. A warp whose share overflows makes the row's count overflow, so that every CTA takes
            // the streaming path below.
            // Four entries a thread a step (one 16-byte shared load); a warp takes the ballots only in the few steps
            // where one of its lanes holds a candidate.
            u32 wcount = 0u;
            const int groups = (len + 3) >> 2;
            for (int g0 = 0; g0 < groups; g0 += THREADS) {
                const int j = 4 * (g0 + t);
                uint4 k4;
                if (j + 3 < len) {
                    k4 = *(const uint4*)&keys[j];
                } else {
                    k4.x = j < len ? keys[j] : 0u;
                    k4.y = j + 1 < len ? keys[j + 1] : 0u;
                    k4.z = j + 2 < len ? keys[j + 2] : 0u;
                    k4.w = 0u;
                }
                const u32 kq[4] = {k4.x, k4.y, k4.z, k4.w};
                bool hq[4], any = false;
                #pragma unroll
                for (int q = 0; q < 4; ++q) { hq[q] = kq[q] && (kq[q] >> 20) == b1; any |= hq[q]; }
                if (__any_sync(FULL, any)) {
                    #pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const u32 ballot = __ballot_sync(FULL, hq[q]);
                        const u32 slot = wcount + __popc(ballot & ((1u << lane) - 1u));
                        if (hq[q] && slot < WCAP) cand[warp * WCAP + slot] = kq[q];
                        wcount += __popc(ballot);
                    }
                }
            }
            if (lane == 0) s_wcnt[warp] = wcount;
            __syncthreads();
            u32 before = 0u, mine = 0u, total = 0u;
            bool spilled = false;
            for (int w = 0; w < WARPS; ++w) {
                const u32 wc = s_wcnt[w];
                if (w < warp) before += min(wc, (u32)WCAP);
                total += wc;
                spilled |= wc > WCAP;
            }
            mine = min(wcount, (u32)WCAP);
            if (t == 0) s_base = atomicAdd(sync + 2, spilled ? CAND_CAP + 1u : total);
            __syncthreads();
            for (u32 i = lane; i < mine; i += 32)
                if (s_base + before + i < CAND_CAP) gcand[s_base + before + i] = cand[warp * WCAP + i];
            MARK(4);
            row_barrier(sync + 1, sync + 3);
            if (t == 0) { s_cnt = __ldcg(sync + 2); s_need = __ldcg(gres + 1); }
            __syncthreads();
            const u32 m = s_cnt;
            const u64 need = s_need;
            for (u32 i = t; i < min(m, (u32)CAND_CAP); i += THREADS) cand[i] = __ldcg(gcand + i);
            __syncthreads();
            MARK(5);
            // Levels 2 and 3 on the candidates, or on the row streamed again where they overflowed.
            tstar = m <= CAND_CAP ? resolve<false>(cand, (int)m, xrow, n, b1, need, hlo, hhi, ws, &s_bin, &s_need)
                                  : resolve<true>(cand, 0, xrow, n, b1, need, hlo, hhi, ws, &s_bin, &s_need);
            levels = 3;
            MARK(6);
        }
    }
    // The mask, four entries a store where the row's bytes allow (entries other threads loaded: a barrier first,
    // which the p >= 1 path has not met since the loads).
    __syncthreads();
    unsigned char* orow = out + (long long)row * stride_out + first;
    if ((((unsigned long long)orow) & 3ull) == 0ull) {
        const int len4 = len & ~3;
        for (int j = 4 * t; j < len4; j += 4 * THREADS) {
            const uint4 k = *(const uint4*)&keys[j];
            *(u32*)(orow + j) = (u32)(k.x >= tstar && k.x > 0u) | (u32)(k.y >= tstar && k.y > 0u) << 8
                                | (u32)(k.z >= tstar && k.z > 0u) << 16 | (u32)(k.w >= tstar && k.w > 0u) << 24;
        }
        for (int j = len4 + t; j < len; j += THREADS) orow[j] = keys[j] >= tstar && keys[j] > 0u;
    } else {
        for (int j = t; j < len; j += THREADS) orow[j] = keys[j] >= tstar && keys[j] > 0u;
    }
    if (WRITE_PASSES && t == 0 && c == 0) passes_out[row] = levels;
    MARK(7);
}
"""


def source(*, threads: int, ctas: int, dtype_code: int, write_passes: bool, timeline: bool = False) -> str:
    """The kernel source for one specialisation: ``ctas`` CTAs of ``threads`` threads a row. ``timeline``: thread 0
    of each CTA records its cycle counter at 8 phase boundaries (the probe's)."""
    return specialise(COMMON_SOURCE + _SOURCE, THREADS=threads, CTAS=ctas, IN_DTYPE=dtype_code,
                      WRITE_PASSES=int(write_passes), CAND_CAP=CAND_CAP, TIMELINE=int(timeline))


@functools.cache
def _compiled(threads: int, ctas: int, dtype_code: int, write_passes: bool, timeline: bool) -> Any:
    kernel = compile_kernel(source(threads=threads, ctas=ctas, dtype_code=dtype_code, write_passes=write_passes,
                                   timeline=timeline), "sb_topp_grid", "the grid CUDA top-p kernel")
    allow_dynamic_shared(kernel, 4 * MAX_SLICE, "the grid CUDA top-p kernel")
    return kernel


_WORKSPACE: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-device histograms, barrier words and candidate lists, allocated zeroed once and reused: each launch
    leaves the histograms cleared and the barriers ready for the next. One stream a device at a time. A launch has at
    most one row a multiprocessor (:func:`grid_shape`), so 256 rows' worth is never replaced under a CUDA graph that
    captured it."""
    key = (device.type, device.index)
    ws = _WORKSPACE.get(key)
    if ws is None or ws[1].numel() < _SYNC_WORDS * rows:
        cap = max(rows, 256)
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
    return (1024 if -(-n // ctas) > 8192 else 512), ctas


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
    if threads & (threads - 1) or not 64 <= threads <= 1024:
        raise UsageError(f"grid CUDA top-p: threads must be a power of two from 64 to 1024, got {threads}")
    slice_n = -(-n // ctas)
    hist, sync, cand = _workspace(x.device, rows)
    kernel = _compiled(threads, ctas, DTYPE_CODES[x.dtype], passes_out is not None, timeline is not None)
    kernel(grid=(rows * ctas, 1, 1), block=(threads, 1, 1), shared_mem=4 * slice_n, args=[
        x, out, passes_out if passes_out is not None else out, n, x.stride(0), out.stride(0), float(p), slice_n,
        hist, sync, cand, timeline if timeline is not None else hist])
