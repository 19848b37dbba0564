"""Sorting-free top-p masks by radix selection on exact fixed-point mass, in CUDA (NVRTC).

Why this exists next to the Triton kernel (:mod:`sparsebench.kernels.topp`): the Triton search tests a few
candidate thresholds per pass, and every candidate's mass needs its own reduction tree across the block. On the
H200 that made 32 rows of 1K entries cost 8.6 µs in steady state, against 1.4 µs for one read of the input
(:mod:`sparsebench.bench.read_floor`; torch's row sum, the benchmark's read until the twenty-second session, takes
3.4), and the 10x over sort that the project targets was out of reach (4.0-6.5x). A *histogram* of the mass needs no
per-candidate reduction: every entry adds its mass to one of 2048 shared-memory bins, and one block-wide scan of
the bins places the threshold. Triton has no shared-memory atomics on computed addresses, so this is CUDA,
compiled at run time by NVRTC like :mod:`sparsebench.kernels.cuda_topk` (its top-k sibling).

Exact mass without float atomics: float additions in atomic (arbitrary) order would make the result depend on
scheduling. Each entry's mass is instead a 64-bit integer, ``f(x) = floor(x * S)`` with ``S`` about ``2**62 / T``
(``T`` the row's sum, taken in float32: any positive ``S`` keeps what follows exact, because the margin below is
computed from the fixed-point total itself; ``S`` only has to keep that total below ``2**63``), and integer sums
are exact in any order. A bin holds its mass as two 32-bit
words, because 64-bit shared-memory adds compile to compare-and-swap loops while 32-bit ones are native: the add
to the low word returns its old value, its carry goes into the add to the high word, and ``hi * 2**32 + lo`` is
the exact sum. Rows of up to 16 entries a thread keep each ``f(x)`` in registers for the passes.

Every ``f`` is within ``x S 2**-53 + 1`` of the real ``x S``, so any set's fixed-point mass is within
``E = F_T / 2**51 + 2N + 4`` units of its real scaled mass (``F_T`` the row's fixed-point total). A threshold is
accepted only if its set's fixed-point mass reaches ``p (F_T + E) (1 + 2**-50) + E``; then its real mass reaches
``p T`` exactly. That margin is about ``2e-15 T`` plus ``N 2**-61 T``, below the Triton kernel's float64 margin
(``1e-12 T`` at 128K), so the mask equals the float64 sort-based reference's
(:func:`sparsebench.kernels.topp.topp_mask_torch`) except when that reference's set reaches ``p T`` by less than
that margin ("near-tie": then the next lower value is kept too).

Algorithm (one thread block per row, entries ``t, t + blockDim, ...`` held as float32 bit patterns)
---------------------------------------------------------------------------------------------------
0. Where the entries are held: in registers, except at 1024 threads and 16 or more entries a thread
   (:func:`keys_in_shared`), where a thread has 64 registers and they spilled (32-216 bytes); those shapes keep
   them in dynamic shared memory, each thread reading only its own (64K and 128K entries 11-16% faster,
   thirteenth session).
1. The row's sum ``T`` and maximum, behind one barrier. ``p == 1`` keeps every positive entry; a zero row keeps
   nothing.
2. The threshold ``t*`` (the largest entry whose at-or-above mass is accepted) lies in the bracket ``[lo, hi]``
   of bit patterns, initially ``[1, max]`` (positive entries). A pass bins the bracket's entries into 2048
   bins of ``2**shift`` patterns (``shift`` = bit length of ``hi - lo`` minus 11), adding mass (and, in clusters and
   above 16 entries a thread, count) per bin with shared-memory atomics; a block scan (one barrier) gives each thread
   the mass under its bins, and the bin where the mass at or above first reaches the acceptance level becomes the
   bracket (the mass of the bins over it is added to ``above``). Whether another pass is needed follows from the
   bracket's count, or, where the histograms keep no counts, from gathering the bracket's entries as step 3's
   candidates right after the pass (their slot counter is the count): one atomic fewer an entry made 1K-8K entries
   5-8% faster (fourteenth session). The first pass's bins hold every positive entry, so its scan total is ``F_T``: no
   separate reduction. A ``p`` so close to 1 that the margin cannot be met keeps every positive entry (mass
   ``T >= p T``). In shapes of 16-32 entries a thread with at most 512 threads or the entries in shared memory
   (8K-128K entries), the first pass bins only ``[base, max]`` finely, with every entry under ``base`` in bin 0
   (summed in registers and once a warp, not by atomics): ``base`` is half the lower bound ``(1 - p) T / n`` of
   ``t*`` (more than ``(1 - p) T`` lies at or under ``t*``), so the bins are much narrower where ``t*`` is, and
   rows of 8K-32K, which needed a second pass, need one (11-17% faster at 16K-32K, 5% at 8K; slower at 1K-4K,
   where it is off, and it made 1024 threads with the entries in registers spill: ``benchmarks/RESULTS.md``,
   twelfth session; at 64K-128K the bracket one pass leaves holds up to a few hundred entries, which step 3
   takes). At most 3-4 passes reach a single pattern; usually 1-2. Each thread owns consecutive bins and clears
   them once read (no clearing barrier); the bins are padded (one word every 32) so these reads are free of
   shared-memory bank conflicts.
3. Once the bracket holds at most :func:`pairwise_max` entries (64 up to 16K entries, 128-512 beyond), each of
   them computes its exact at-or-above mass against the others in shared memory (one or more threads an entry;
   8-16 in rows up to 16K); ``t*`` is the
   largest accepted. The mask is ``x >= t*`` over positive entries: ties at ``t*`` are all kept, as in the
   module :mod:`sparsebench.kernels.topp`'s semantics.

Clusters (compute capability 9.0 or newer)
------------------------------------------
One CTA a row uses 32 multiprocessors for 32 rows, and its time follows its entries a thread: each pass is a
latency-bound chain of per-entry work (shared-memory atomics, and float64 scaling where the masses are not kept).
Longer rows are therefore split over a thread-block cluster of 2-8 CTAs (``CLUSTER``), each holding a contiguous
slice. The CTAs meet at cluster barriers and read each other's shared memory (distributed shared memory, inline
PTX ``mapa`` / ``ld.shared::cluster``):

* the sum ``T`` and the maximum are each CTA's, combined by thread 0 in rank order, so every CTA holds
  bit-identical values and takes the same branches (and so meets the same barriers);
* a pass builds each CTA's histogram of its slice (first cluster barrier); CTA ``r`` then sums bins
  ``[r ceil(B / C), (r + 1) ceil(B / C))`` (below ``B``) over the cluster and scans them (second barrier); every
  CTA reads the range totals, finds the range that holds the crossing bin and reads that CTA's summed bins to place
  the new bracket itself (two cluster barriers a pass; ``F_T`` is the first pass's sum of range totals);
* the pairwise step gathers the cluster's candidates (at most :func:`pairwise_max`, 128-512; in the words the
  histograms no longer need) into every CTA, in rank order; the last cluster
  barrier (no CTA leaves while another reads its shared memory) is split around the mask write.

The launch shape (:func:`launch_shape`) is a measured table (:data:`CLUSTER_TABLE`): one CTA a row up to 16K
entries, clusters beyond where the row count leaves them room on the GPU (three CTAs instead of four where four
would not all run at once: :data:`CLUSTER_FILL`), and always beyond :data:`MAX_N` (rows of
up to 256K entries).

Measured on the H200 (``sparsebench bench topp --suites main --calls-per-replay 20 --no-flush``, 32 rows,
temperature 2, p 0.9; ``benchmarks/RESULTS.md``, fourteenth session, three runs): exact on every row (0 rows
differing from the reference, one pass at every length). 3.7 / 4.35 / 4.97-4.99 / 7.0 / 10.9-11.0 / 14.1-14.4 / 19.4 /
30.6 µs at 1K-128K entries, against the Triton kernel's 8.6 / 8.6 / 12.4 / 18.2 / 30.4 / 39.8 / 92.6 / 179.3 and
sort's 40-658 µs: 10.0-21.5x faster than sort at every length (the project's target is 10x up to 32K; 4K is
10.01-10.05x), and 0.65-3.2x the time of torch's row sum (then the benchmark's "one read"). Against the read
floor of :mod:`sparsebench.bench.read_floor`, the twenty-second session measured this kernel at 3.7 / 4.3 / 4.9 /
7.0 µs, 2.6 / 3.0 / 3.2 / 4.4x one read at 1K / 2K / 4K / 8K: the target of 2x is missed at every length. The thirteenth
session's kernel took 3.9 / 4.5 / 5.4 / 7.6 µs at 1K-8K: the count histograms left out there are this session's; the
twelfth's took 3.9-62.6 µs (64K 27.8, 128K 62.3). Where the time goes
(``benchmarks/device/topp_timeline_probe.py``, cycles of thread 0 between the ``MARK`` points, fourteenth session):
at 1K about 1400 cycles load and sum, 500 histogram adds, 1300 scan, 550 crossing, 650 + 900 pairwise (gather, then
sums); at 4K 1800 / 1400 / 1000 / 550 / 1100 + 1200; the histogram adds grow with the entries a thread (8200 cycles
at 16K, which keeps its counts). What the time is *not*: the launch (an empty kernel costs 0.7-1.0 µs a call there;
a kernel that only loads and writes its rows, 1.4-2.5 µs at 1K-16K), the histogram size (fewer bins were not faster
overall), or atomic contention (warp-aggregated adds were 1.4-12x slower; warp-aggregated pairwise slots too): the
*number* of atomics an entry is (one fewer: 5-8% at 1K-8K). No host synchronisation: CUDA-graph safe.
``topp_mask(backend="auto")`` picks this kernel on a GPU where NVRTC runs.

Rows of up to 4K entries take the short-row kernel instead (:mod:`sparsebench.kernels.cuda_topp_short`: one CTA a
row, fixed point scaled by the row's maximum, a few hundred bins under it scanned by one warp): 3.18-3.21 / 3.89 /
4.90 µs at 1K / 2K / 4K (twenty-third session), against this kernel's 3.68 / 4.34 / 4.94 (twenty-second); at 4K it
was faster on flatter rows (temperature 1: 5.2 against 6.3 µs). ``launch_topp(short=False)`` runs this one.

Rows over :data:`GRID_FROM` (8K) entries take the grid kernel instead (:mod:`sparsebench.kernels.cuda_topp_grid`:
four ordinary CTAs a row that meet in global memory) where its CTAs all fit the GPU at once (:func:`uses_grid`):
8.3 / 10.4 / 12.9 / 17.3-17.4 µs at 16K / 32K / 64K / 128K (twenty-first session), against this kernel's
10.9 / 14.1 / 19.4 / 30.6. Tried and not merged: a sampled estimate of the threshold before the passes (a sample's
histogram, then one exact pass in registers to confirm the bracket it gives), slower at 8K-32K by 2-3.5 µs (the
phases it adds cost more than the atomics it saves; ``results/h200_2026-11-29_s17/sample/kernel.patch``); and each
pass's low-word mass adds batched before their carries, slower (8K 7.0 to 8.0 µs;
``results/h200_2026-11-29_s18/batched_atomics/``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.cuda_topp_grid import grid_shape, launch_topp_grid
from sparsebench.kernels.cuda_topp_short import DEFAULT_UP_TO as SHORT_UP_TO
from sparsebench.kernels.cuda_topp_short import launch_topp_short
from sparsebench.kernels.nvrtc import (
    CLUSTER_SOURCE,
    COMMON_SOURCE,
    DTYPE_CODES,
    MAX_THREADS,
    allow_dynamic_shared,
    compile_kernel,
    specialise,
)

__all__ = [
    "CLUSTER_TABLE",
    "MAX_CLUSTER",
    "MAX_N",
    "PAIRWISE_CAP",
    "PAIRWISE_MAX",
    "check_shape",
    "clusters_supported",
    "kernel_name",
    "launch_shape",
    "launch_topp",
    "max_row",
    "source",
    "uses_grid",
]

#: Longest row one CTA holds in registers (32 entries a thread, 1024 threads).
MAX_N = 32768
#: Most entries a thread in registers, and in shared memory (:func:`keys_in_shared`; 1024 threads x 44 entries is
#: 176 KB, which fits beside the kernel's static 48 KB in the 227 KB a CTA may have on compute capability 9.0).
MAX_ITEMS, MAX_SMEM_ITEMS = 32, 44
#: Share of the multiprocessors that clusters of one CTA a multiprocessor fill at once: a cluster's CTAs must sit in
#: one GPC. On the H200 (132 multiprocessors) 30 four-CTA clusters of 1024 threads ran in one wave and 32 did not
#: (``benchmarks/device/topp_rows_probe.py``, thirteenth session: 128K entries, 30 rows 24.2 µs, 32 rows 45.7).
CLUSTER_FILL = 120 / 132
#: Most CTAs a row (a thread-block cluster of the portable size): rows of up to ``MAX_CLUSTER * MAX_N`` entries.
MAX_CLUSTER = 8
#: ``(CTAs a row, threads a CTA)`` by row length (the next power of two at or above it), from the H200 sweep of the
#: eleventh session (``benchmarks/device/topp_cuda_shapes_probe.py``, 32 rows, 2048 bins, ``results/
#: h200_2026-11-29_s11/topp/``). Rows up to :data:`CLUSTER_FROM` entries stay in one CTA: with two cluster barriers a
#: pass and the sum, the maximum and the scans behind one barrier each, one CTA of 512 threads took 9.3 µs at 8K
#: against 15.1-17.1 for four-CTA clusters, and 16K was even (13.5-13.8) between one and two CTAs. Beyond, two CTAs
#: of 512 (32K) or 1024 (64K) threads, and four of 1024 (128K), were the fastest; eight-CTA clusters lost at every
#: length (the tenth session's table, measured before the kernel's 32-bit histogram halves and these barrier cuts,
#: chose four-CTA clusters from 8K and eight from 64K).
CLUSTER_TABLE = {32768: (2, 512), 65536: (2, 1024), 131072: (4, 1024), 262144: (8, 1024)}
#: Rows up to this length run in one CTA by default.
CLUSTER_FROM = 16384
#: Rows longer than this take the grid kernel (:mod:`sparsebench.kernels.cuda_topp_grid`: four ordinary CTAs a row
#: that meet in global memory) where the grid fits the GPU at once (:func:`uses_grid`). Measured on the H200
#: (``benchmarks/RESULTS.md``, eighteenth session; 32 rows): faster than one CTA or a cluster from 16K entries up,
#: not at 8K (about 9.8 against 7.0 µs: its two row barriers and the level-1 exchange cost about 4 µs at any length).
GRID_FROM = 8192

#: Largest bracket resolved by pairwise sums instead of another histogram pass, in rows of up to 16K entries
#: (longer rows allow more: :func:`pairwise_max`).
PAIRWISE_MAX = 64
#: The most :func:`pairwise_max` allows (the candidates' arrays are static shared memory, twice in a cluster).
PAIRWISE_CAP = 512
#: Histogram bins a pass (the launch may ask for fewer: :func:`launch_topp`).
DEFAULT_BINS = 2048
#: Bound on the kernel's static shared memory (histograms, cluster exchange), checked at compile time by
#: ``tests/test_nvrtc_sources.py``: what a launch keeping its entries in shared memory adds must fit beside it.
_STATIC_SMEM = 48 * 1024

_SOURCE = r"""
#define MAX_PASSES 6
//: Histogram bins each CTA of a cluster reduces over the cluster (all of them with one CTA a row).
#define RANGE_BINS ((NBINS + CLUSTER - 1) / CLUSTER)  // the last CTA's range ends at NBINS (3, 5-7 CTAs)
//: Bins of that range a thread owns in the scan (threads from RANGE_BINS up own none).
#define PER ((RANGE_BINS + THREADS - 1) / THREADS)
#define OWNERS (RANGE_BINS < THREADS ? RANGE_BINS : THREADS)
// The first pass's window (below) where it was measured faster (session 12): with 1024 threads it spilled registers
// (880 bytes at 4 x 1024) and ran 40-45% slower at 64K-128K entries; at 2-8 entries a thread (1K-4K), where one pass
// suffices anyway, it cost 0.1-0.2 us.
// SMEM_KEYS: the row's bit patterns in (dynamic) shared memory instead of registers, so that rows of 32 entries a
// thread do not spill (at 1024 threads a thread has 64 registers) and the window fits there too.
#ifndef SMEM_KEYS
#define SMEM_KEYS 0
#endif
#define WINDOW ((THREADS <= 512 || SMEM_KEYS) && ITEMS >= 16)
// Shared-memory index of bin b in a histogram of 32-bit words (HB) and of 64-bit words (GB): one padding word every
// 32 words, so that a warp whose threads each read PER consecutive bins (PER a power of two) touches 32 different
// banks. Without it those reads were PER-way bank conflicts: the eleventh session's timeline put the scan phase
// (reading and clearing 3 x 2048 bins) at about 2200 cycles a pass at 512 threads.
#define HB(b) ((b) + ((b) >> 5))
#define GB(b) ((b) + ((b) >> 4))
#define HWORDS HB(NBINS)
// In a cluster: the three histograms, or the pairwise candidates' arrays (this CTA's and the gathered ones) where
// they need more words (PAIRWISE_MAX is even, so the 64-bit arrays stay aligned).
#define HIST_WORDS (3 * HWORDS > 6 * PAIRWISE_MAX ? 3 * HWORDS : 6 * PAIRWISE_MAX)
// MARK(i): a probe's hook at the kernel's phase boundaries (benchmarks/device/topp_timeline_probe.py defines it to
// record the cycle counter); nothing otherwise.
#ifndef MARK
#define MARK(i)
#endif

// COUNTS: the histograms also count the entries of each bin, and the crossing bin's count says whether the bracket
// is small enough for pairwise sums. Without (one CTA a row of up to 16 entries a thread) the bracket's entries are
// gathered as pairwise candidates after every pass instead, and the gather's slot counter says it: one shared atomic
// fewer an entry. Measured on the H200 (fourteenth session; 32 rows, p 0.9): 1K-8K entries 3.9 / 4.5 / 5.4 / 7.6 to
// 3.7 / 4.3 / 5.0 / 7.0 µs; 16K (32 entries a thread) 10.8 to 11.5-11.7 (168 bytes a thread spilled, not 88), so it
// keeps the counts, as clusters do.
#define COUNTS (CLUSTER > 1 || ITEMS > 16)

// Adds mass f (64-bit fixed point) to histogram word w, in two 32-bit halves: the low half's carry goes into the
// high one (32-bit shared-memory adds are native; 64-bit ones compile to compare-and-swap loops). Keeping three words
// of 16 / 16 / 32 bits of f instead, summed apart with no returned value to wait on, was slower (4K entries: 5.25
// against 4.96 µs, fourteenth session).
__device__ __forceinline__ void mass_add(u32* hlo, u32* hhi, u32 w, u64 f) {
    const u32 f_lo = (u32)f;
    const u32 old = atomicAdd(&hlo[w], f_lo);
    atomicAdd(&hhi[w], (u32)(f >> 32) + (old + f_lo < old ? 1u : 0u));
}

// Mass f and count c.
__device__ __forceinline__ void hist_add(u32* hlo, u32* hhi, u32* hcnt, u32 w, u64 f, u32 c) {
    mass_add(hlo, hhi, w, f);
    atomicAdd(&hcnt[w], c);
}

// Every entry of the bracket [lo, hi] takes a slot of *counter and, below PAIRWISE_MAX, becomes a pairwise candidate
// (its bit pattern and f(x)); a barrier then makes the candidates and their number visible. A macro: it reads the
// kernel's entries (KEY, FMASS). (Slots taken a warp at a time, by ballot, were slower: 1218 against 765 cycles at
// 1K.)
#define GATHER_CANDIDATES(counter, lo, hi)                                                  \
    do {                                                                                    \
        _Pragma("unroll") for (int i_ = 0; i_ < ITEMS; ++i_) {                              \
            const u32 k_ = KEY(i_);                                                         \
            if (k_ >= (lo) && k_ <= (hi)) {                                                 \
                const u32 slot_ = atomicAdd((counter), 1u);                                 \
                if (slot_ < PAIRWISE_MAX) {                                                 \
                    pair_key[slot_] = k_;                                                   \
                    pair_mass[slot_] = FMASS(i_);                                           \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        __syncthreads();                                                                    \
    } while (0)

#if CLUSTER > 1
// Thread-block clusters (sm_90): the CTAs of a row meet at cluster barriers and read each other's shared memory.
#define CLUSTER_ATTR __cluster_dims__(CLUSTER, 1, 1)""" + CLUSTER_SOURCE + r"""#else
#define CLUSTER_ATTR
#endif

extern "C" __global__ void CLUSTER_ATTR __launch_bounds__(THREADS, 1) sb_topp_mask(
    const void* __restrict__ x, unsigned char* __restrict__ out, int* __restrict__ passes_out,
    int n, int stride_x, int stride_out, double p)
{
    // A bin's mass in two 32-bit halves: 32-bit shared-memory adds are native, 64-bit ones compile to
    // compare-and-swap loops. The low half's carries go into the high half (see the pass), so
    // hi * 2**32 + lo is the exact sum.
#if CLUSTER > 1
    __shared__ __align__(8) u32 hwords[HIST_WORDS];
    u32* const hlo = hwords;
    u32* const hhi = hwords + HWORDS;
    u32* const hcnt = hwords + 2 * HWORDS;
    // The pairwise step's candidates (this CTA's, and every CTA's gathered) reuse the histograms' words: no pass
    // reads them any more by then, and each launch clears them first. Up to 512 candidates (pairwise_max) would
    // not fit beside the histograms in 48 KB of static shared memory at 2 x 1024 threads. (One CTA a row keeps
    // separate arrays: its rows allow 64 candidates, and the shared words changed its register allocation.)
    u32* const pair_key = hwords;
    u64* const pair_mass = (u64*)(hwords + PAIRWISE_MAX);
#else
    __shared__ u32 hlo[HWORDS], hhi[HWORDS];
#if COUNTS
    __shared__ u32 hcnt[HWORDS];
#endif
    __shared__ u32 pair_key[PAIRWISE_MAX];
    __shared__ u64 pair_mass[PAIRWISE_MAX];
#endif
    __shared__ u64 ws[32];
#if CLUSTER == 1
    __shared__ u64 low_m[THREADS / 32];  // a windowed first pass's bin 0, a warp's sum each
#if COUNTS
    __shared__ u32 low_c[THREADS / 32];
#endif
#endif
    __shared__ float red_f[32];
    __shared__ u32 red_u[32];
    __shared__ u32 s_lo, s_hi, s_active, s_tstar;
    __shared__ u32 s_npair[2];  // the gathers' slot counters (without COUNTS, alternate passes')
    __shared__ u64 s_above;

    const int t = threadIdx.x;  // blockDim.x == THREADS
#if CLUSTER > 1
    // This CTA's slice of the row; the cluster's values (sums, histograms, candidates) are combined in rank order,
    // so every CTA computes bit-identical totals and takes the same branches (and so the same cluster barriers).
    // c_*: this CTA's part, read by the others; *_all / s_ranges: the cluster's values, read by thread 0 and
    // broadcast (one remote read a CTA per value, not one a thread).
    __shared__ float c_tot, tot_all;
    __shared__ u32 c_kmax, kmax_all, c_npair;
    __shared__ u64 c_range, s_ranges[CLUSTER];
    // This CTA's range of bins summed over the cluster, and each owner thread's mass of the range's lower bins:
    // read by every CTA once the crossing range is known.
    __shared__ u64 gmass[GB(RANGE_BINS)], gbelow[OWNERS];
    __shared__ u32 gcnt[HB(RANGE_BINS)];
    u32* const g_key = hwords + 3 * PAIRWISE_MAX;  // apart from pair_*, which the other CTAs read meanwhile
    u64* const g_mass = (u64*)(hwords + 4 * PAIRWISE_MAX);
    __shared__ u32 s_offset[CLUSTER + 1];
    const u32 rank = cluster_rank();
    const int row = blockIdx.x / CLUSTER;
    const int slice = (n + CLUSTER - 1) / CLUSTER;
    const int first = (int)rank * slice, last = min(n, first + slice);
#else
    const u32 rank = 0u;
    const int row = blockIdx.x, first = 0, last = n;
#endif
    MARK(0);
    const void* xrow = row_of(x, row, stride_x);
    // |x| bit patterns: their integer order is the value order (-0.0 joins +0.0). Only their own thread reads them.
#if SMEM_KEYS
    extern __shared__ u32 skeys[];  // ITEMS * THREADS words
#define KEY(i) skeys[(i) * THREADS + t]
#else
    u32 key[ITEMS];
#define KEY(i) key[i]
#endif
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = first + i * THREADS + t;
        KEY(i) = j < last ? abs_bits(xrow, j) : 0u;
    }
    // The first pass's histogram is cleared while the row loads; each pass clears its bins once they are read.
    for (int w = t; w < HWORDS; w += THREADS) {
        hlo[w] = 0u;
        hhi[w] = 0u;
#if COUNTS
        hcnt[w] = 0u;
#endif
    }
    if (t == 0) { s_npair[0] = 0u; s_npair[1] = 0u; s_tstar = 0u; }
    // The row's sum T in float32: it only sets the fixed-point scale (below), which needs no more precision.
    float tot = 0.0f;
    u32 kmax = 0u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        tot += __uint_as_float(KEY(i));
        kmax = max(kmax, KEY(i));
    }
    // The sum and the maximum behind one barrier.
    tot = warp_sum(tot);
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) kmax = max(kmax, __shfl_xor_sync(FULL, kmax, o));
    if ((t & 31) == 0) { red_f[t >> 5] = tot; red_u[t >> 5] = kmax; }
    __syncthreads();
    tot = 0.0f;
    for (int w = 0; w < THREADS / 32; ++w) { tot += red_f[w]; kmax = max(kmax, red_u[w]); }
    MARK(1);
#if CLUSTER > 1
    if (t == 0) { c_tot = tot; c_kmax = kmax; }
    cluster_sync();
    if (t == 0) {
        float sum = 0.0f;
        u32 top = 0u;
        for (u32 r = 0; r < CLUSTER; ++r) {
            sum += peer_f32(peer(&c_tot, r));
            top = max(top, peer_u32(peer(&c_kmax, r)));
        }
        tot_all = sum;
        kmax_all = top;
    }
    __syncthreads();
    tot = tot_all;
    kmax = kmax_all;
#endif

    // Fixed-point mass f(x) = floor(x * scale): exact integer sums (module docstring). scale is about 2**62 / T:
    // the float32 sum is within a relative N 2**-24 of T, so F_T stays below 2**63 (the sums' headroom is 2**64),
    // and the acceptance margin is computed from F_T itself, not from the scale. A sum outside float32's comfortable
    // range (entries near its limits) takes the bound T <= n * max instead.
    double scale = 0.0;
    if (tot >= 0x1p-100f && tot <= 0x1p100f) scale = 0x1p62 * (double)__frcp_rn(tot);
    else if (tot > 0.0f) scale = 0x1p62 / ((double)n * (double)__uint_as_float(kmax));
#if ITEMS <= 16
    u64 fm[ITEMS];  // each entry's f(x), kept for the passes (longer rows recompute it: registers)
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) fm[i] = __double2ull_rz((double)__uint_as_float(KEY(i)) * scale);
#define FMASS(i) fm[i]
#else
#define FMASS(i) __double2ull_rz((double)__uint_as_float(KEY(i)) * scale)
#endif
    MARK(2);

    u32 tstar;
    int n_pass = 0;
    if (!(tot > 0.0f)) {
        tstar = FULL;  // nothing to keep
    } else if (p >= 1.0) {
        tstar = 1u;  // every positive entry
    } else {
        u32 lo = 1u, hi = kmax;
        u64 above = 0ull, target = 0ull;
        u32 active = FULL;  // unknown until the first pass; forces one
        bool keep_all = false;  // p too close to 1 for the margin (found in the first pass)
        for (; n_pass < MAX_PASSES && lo < hi && active > PAIRWISE_MAX; ++n_pass) {
            // The first pass bins [base, hi] finely and puts everything under base in bin 0. base is a lower bound
            // on t*: at least (1 - p) T lies at or under t*, so n t* >= (1 - p) T; half of that, from the float32
            // sum, leaves room for its error and the margin. A wrong bound only costs a pass (bin 0 is a bracket
            // like any other). Without it the first pass's bins spanned every bit pattern from 1 up (1/16 of a
            // binade a bin), and rows of 8K-32K entries needed a second pass.
            u32 base = lo, low_bin = 0u;  // low_bin: 1 if bin 0 holds the entries under base
            if (WINDOW && n_pass == 0) {
                const u32 b0 = __float_as_uint(0.5f * (1.0f - (float)p) * tot / (float)n);
                if (b0 > lo && b0 < hi) { base = b0; low_bin = 1u; }
            }
            const u32 span = hi - base;
            int shift = max(0, 32 - __clz(span) - BIN_BITS);
            if ((span >> shift) >= NBINS - low_bin) ++shift;  // bins low_bin..NBINS-1 must hold [base, hi]
            // Entries under base (bin 0; a fifth to a third of them at the benchmark's peakedness and p 0.9-0.95)
            // are summed in registers, then once a warp: added by shared atomics to one word (session 12's first
            // call) they made the windowed pass slower than the plain one.
            u64 low_mass = 0ull;
            u32 low_count = 0u;
            // No branch but the atomics' own: at 16K-32K entries this ran 10% faster than an if / else an entry
            // (which was 5% faster at 8K; session 12).
            #pragma unroll
            for (int i = 0; i < ITEMS; ++i) {
                const u32 k = KEY(i);
                const bool in = k >= lo && k <= hi;  // padding has key 0 < lo
                const bool low = WINDOW && in && k < base;
                const u64 f = FMASS(i);
                low_mass += low ? f : 0ull;
                low_count += low ? 1u : 0u;
#if COUNTS
                if (in && !low) hist_add(hlo, hhi, hcnt, HB(((k - base) >> shift) + low_bin), f, 1u);
#else
                if (in && !low) mass_add(hlo, hhi, HB(((k - base) >> shift) + low_bin), f);
#endif
            }
            if (low_bin) {  // uniform: the same for every thread
                // The warp's sum in integer reductions whose sums fit 32 bits (16 + 5, 16 + 5 and at most 31 bits:
                // the row's F_T is under 2**63).
                const u32 m0 = __reduce_add_sync(FULL, (u32)low_mass & 0xffffu);
                const u32 m1 = __reduce_add_sync(FULL, (u32)(low_mass >> 16) & 0xffffu);
                const u32 m2 = __reduce_add_sync(FULL, (u32)(low_mass >> 32));
                const u64 m = ((u64)m2 << 32) + ((u64)m1 << 16) + m0;
#if COUNTS
                const u32 c = __reduce_add_sync(FULL, low_count);
#endif
#if CLUSTER > 1
                if ((t & 31) == 0 && c) hist_add(hlo, hhi, hcnt, HB(0), m, c);  // other CTAs read this CTA's bin 0
#elif COUNTS
                if ((t & 31) == 0) { low_m[t >> 5] = m; low_c[t >> 5] = c; }  // bin 0's owner adds them up
#else
                if ((t & 31) == 0) low_m[t >> 5] = m;
#endif
            }
            // Thread t owns bins [t PER, (t + 1) PER) of this CTA's range: their mass (and count), in registers.
            u64 hm[PER];
            u32 hc[PER];  // counts (COUNTS only)
            u64 mine = 0ull;
#if CLUSTER > 1
            cluster_sync();  // every CTA's histogram is complete
            MARK(3 + 3 * n_pass);
            // CTA `rank` owns bins [rank * RANGE_BINS, (rank + 1) * RANGE_BINS): it sums them over the cluster.
            #pragma unroll
            for (int i = 0; i < PER; ++i) {
                const int b = t * PER + i;
                u64 m = 0ull;
                u32 c = 0u;
                if (b < RANGE_BINS) {
                    const int g = (int)rank * RANGE_BINS + b;
                    if (g < NBINS) {  // past NBINS (the last range of a cluster that does not divide it): empty
                        const int w = HB(g);
                        #pragma unroll
                        for (u32 r = 0; r < CLUSTER; ++r) {
                            m += ((u64)peer_u32(peer(&hhi[w], r)) << 32) + peer_u32(peer(&hlo[w], r));
                            c += peer_u32(peer(&hcnt[w], r));
                        }
                    }
                    gmass[GB(b)] = m;
                    gcnt[HB(b)] = c;
                }
                mine += m;
            }
#else
            __syncthreads();  // the histogram is complete
            MARK(3 + 3 * n_pass);
            #pragma unroll
            for (int i = 0; i < PER; ++i) {
                const int b = t * PER + i;
                hm[i] = 0ull;
                hc[i] = 0u;
                if (b < RANGE_BINS) {
                    const int w = HB(b);
                    hm[i] = ((u64)hhi[w] << 32) + hlo[w];
                    // Only its owner reads a bin: it clears it for the next pass (most bins of a pass stay empty;
                    // without counts, a bin whose entries' f(x) are all 0 has all-zero words already).
#if COUNTS
                    hc[i] = hcnt[w];
                    if (hc[i]) { hlo[w] = 0u; hhi[w] = 0u; hcnt[w] = 0u; }
                    if (b < (int)low_bin) {  // bin 0 of a windowed pass: the warps' sums, not atomics
                        for (int v = 0; v < THREADS / 32; ++v) { hm[i] += low_m[v]; hc[i] += low_c[v]; }
                    }
#else
                    if (hm[i]) { hlo[w] = 0u; hhi[w] = 0u; }
                    if (b < (int)low_bin) {
                        for (int v = 0; v < THREADS / 32; ++v) hm[i] += low_m[v];
                    }
#endif
                }
                mine += hm[i];
            }
#endif
            u64 total;
            u64 under = block_scan_once(mine, ws, &total);  // mass of this range's bins under this thread's
            // The cluster's mass at or above the crossing range's first bin is above + higher + range total.
            MARK(4 + 3 * n_pass);
            u64 higher = 0ull, range_total = total;
#if CLUSTER > 1
            if (t == 0) c_range = total;
            if (t < OWNERS) gbelow[t] = under;
            cluster_sync();  // range totals and reduced bins visible; no CTA reads the histograms any more
            for (int w = t; w < HWORDS; w += THREADS) { hlo[w] = 0u; hhi[w] = 0u; hcnt[w] = 0u; }
            if (t == 0)
                for (u32 r = 0; r < CLUSTER; ++r) s_ranges[r] = peer_u64(peer(&c_range, r));
            __syncthreads();
            if (n_pass == 0) {
                total = 0ull;
                for (u32 r = 0; r < CLUSTER; ++r) total += s_ranges[r];  // the first pass's bins hold all the mass
            }
#endif
            if (n_pass == 0) {  // the first pass's bracket holds every positive entry: total is F_T
                const double err = (double)total * 0x1p-51 + 2.0 * (double)n + 4.0;
                target = __double2ull_ru(p * ((double)total + err) * (1.0 + 0x1p-50) + err + 2.0);
                if (total < target) { keep_all = true; break; }  // every positive entry (mass T >= p T)
            }
#if CLUSTER > 1
            // The crossing range: the highest CTA whose range brings the at-or-above mass to the target (the
            // invariant: above + the bracket's mass reaches it). Every CTA reads that CTA's reduced bins.
            u32 owner = 0u;
            for (u32 r = CLUSTER - 1; r > 0; --r) {
                if (above + higher + s_ranges[r] >= target) { owner = r; break; }
                higher += s_ranges[r];
            }
            range_total = s_ranges[owner];
            if (t < OWNERS) under = peer_u64(peer(&gbelow[t], owner));
            #pragma unroll
            for (int i = 0; i < PER; ++i) {
                const int b = t * PER + i;
                hm[i] = 0ull;
                hc[i] = 0u;
                if (b < RANGE_BINS) {
                    hm[i] = peer_u64(peer(&gmass[GB(b)], owner));
                    hc[i] = peer_u32(peer(&gcnt[HB(b)], owner));
                }
            }
#else
            const u32 owner = 0u;
#endif
            // at-or-above mass of bin b = above + higher + range_total - (mass of the range's bins under b); find
            // where it reaches target (one bin does).
            #pragma unroll
            for (int i = 0; i < PER; ++i) {
                const int b = t * PER + i;
                const u64 at_or_above = above + higher + range_total - under;
                if (b < RANGE_BINS && at_or_above >= target && at_or_above - hm[i] < target) {
                    const u32 gb = owner * RANGE_BINS + (u32)b;
                    s_above = at_or_above - hm[i];
                    s_active = hc[i];  // COUNTS only
                    if (gb < low_bin) {  // bin 0 of a windowed pass: everything under base
                        s_lo = lo;
                        s_hi = base - 1u;
                    } else {
                        const u32 q = gb - low_bin;
                        const u64 top = (u64)base + (((u64)q + 1ull) << shift) - 1ull;
                        s_lo = base + (q << shift);
                        s_hi = top < (u64)hi ? (u32)top : hi;
                    }
                }
                under += hm[i];
            }
            __syncthreads();
            MARK(5 + 3 * n_pass);
            lo = s_lo; hi = s_hi; above = s_above;
            // s_* are next written after the next pass's barriers: no barrier needed here.
#if COUNTS
            active = s_active;
#else
            // The bracket's entries become the pairwise candidates now; if there are too many, another pass.
            GATHER_CANDIDATES(&s_npair[n_pass & 1], lo, hi);
            active = s_npair[n_pass & 1];
            if (t == 0) s_npair[(n_pass + 1) & 1] = 0u;  // the next gather's counter: every read of it is done
#endif
        }
        if (keep_all) {
            tstar = 1u;
        } else if (lo == hi) {
            tstar = lo;
        } else {
            // At most PAIRWISE_MAX entries in [lo, hi] (over the whole row): each one's exact at-or-above mass.
#if COUNTS
            GATHER_CANDIDATES(&s_npair[0], lo, hi);
#endif
#if CLUSTER > 1
            // Every CTA gathers the cluster's candidates, in rank order.
            if (t == 0) c_npair = min(s_npair[0], (u32)PAIRWISE_MAX);
            cluster_sync();
            if (t == 0) {
                u32 off = 0u;
                for (u32 r = 0; r < CLUSTER; ++r) {
                    s_offset[r] = off;
                    off = min(off + peer_u32(peer(&c_npair, r)), (u32)PAIRWISE_MAX);
                }
                s_offset[CLUSTER] = off;
            }
            __syncthreads();
            for (u32 r = 0; r < CLUSTER; ++r) {
                const u32 dst = s_offset[r] + (u32)t;
                if (dst < s_offset[r + 1]) {
                    g_key[dst] = peer_u32(peer(&pair_key[t], r));
                    g_mass[dst] = peer_u64(peer(&pair_mass[t], r));
                }
            }
            __syncthreads();
            const u32 np = s_offset[CLUSTER];
            const u32* cand_key = g_key;
            const u64* cand_mass = g_mass;
#else
            const u32 np = min(COUNTS ? s_npair[0] : active, (u32)PAIRWISE_MAX);  // (without COUNTS: the last pass's)
            const u32* cand_key = pair_key;
            const u64* cand_mass = pair_mass;
#endif
            MARK(12);
            const int tpe = THREADS / PAIRWISE_MAX;  // 1 to 16 threads an entry (a power of two)
            const u32 s = t / tpe;
            const int part = t % tpe;
            const u32 mk = s < np ? cand_key[s] : FULL;
            u64 m = 0ull;
            #pragma unroll 4
            for (u32 q = part; q < np; q += tpe)  // (unrolled so loads overlap; not measured on its own)
                if (cand_key[q] >= mk) m += cand_mass[q];
            for (int o = 1; o < tpe; o <<= 1) m += __shfl_xor_sync(FULL, m, o);
            if (s < np && part == 0 && above + m >= target) atomicMax(&s_tstar, mk);
            __syncthreads();
            tstar = max(s_tstar, lo);  // lo is accepted (invariant), so some entry >= lo is
            MARK(13);
        }
    }
#if CLUSTER > 1
    // No CTA leaves while another may still read its shared memory: every remote read is above, so arrive now and
    // wait only after writing the mask.
    cluster_arrive();
#endif
    unsigned char* orow = out + (long long)row * stride_out;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = first + i * THREADS + t;
        if (j < last) orow[j] = (KEY(i) >= tstar) && (KEY(i) > 0u);
    }
    if (WRITE_PASSES && t == 0 && rank == 0u) passes_out[row] = n_pass;
    MARK(14);
#if CLUSTER > 1
    cluster_wait();
#endif
}
"""


def source(*, items: int, dtype_code: int, write_passes: bool, bins: int = DEFAULT_BINS, threads: int = 1024,
           cluster: int = 1, smem_keys: bool = False, pairwise: int = PAIRWISE_MAX) -> str:
    """The kernel source for one specialisation (the CPU tests compile it with NVRTC when they can). ``threads``
    is the block size it is launched with at most: its register budget follows from it (a 64-register budget for
    every block size made rows of 16 or 32 entries a thread spill). ``cluster``: CTAs a row (a thread-block
    cluster, compute capability 9.0 or newer), each holding ``items`` entries a thread of its slice. ``smem_keys``:
    the entries in dynamic shared memory (:func:`keys_bytes`) instead of registers. ``pairwise``: the largest
    bracket resolved by pairwise sums (:func:`pairwise_max`; at most ``threads``)."""
    return specialise(COMMON_SOURCE + _SOURCE, ITEMS=items, PAIRWISE_MAX=pairwise, IN_DTYPE=dtype_code,
                      WRITE_PASSES=int(write_passes), NBINS=bins, BIN_BITS=bins.bit_length() - 1, THREADS=threads,
                      CLUSTER=cluster, SMEM_KEYS=int(smem_keys))


def keys_in_shared(threads: int, items: int) -> bool:
    """Whether a CTA of ``threads`` holding ``items`` entries a thread keeps them in shared memory (``SMEM_KEYS``)
    rather than in registers: at 1024 threads (64 registers a thread) and 16 or more entries a thread.

    Measured on the H200 (``benchmarks/RESULTS.md``, thirteenth session; 32 rows, temperature 2, p 0.9): in
    registers these shapes spilled 32-216 bytes a thread, and the first pass's window was off for them. In shared
    memory (no spills, window on) 64K entries on 2 x 1024 threads took 24.6 against 28.3 µs, and 128K on 4 x 1024
    52.0 against 63.3 µs. At 512 threads (128 registers) shared memory was 2-8% slower, so they keep registers."""
    return threads >= 1024 and items >= 16


def pairwise_max(n: int, threads: int) -> int:
    """The largest bracket a launch for rows of ``n`` entries resolves by pairwise sums rather than by another
    histogram pass: :data:`PAIRWISE_MAX` (64) up to 16K entries, doubling with the row beyond, at most
    :data:`PAIRWISE_CAP` and ``threads`` (one thread or more a candidate).

    Why it grows: after one pass of 2048 bins the bracket holds about a 1/2000 slice of the window's bit patterns,
    so its entries grow with the row. On softmax(randn x T) rows at p 0.9 (``benchmarks/topp_pass_model.py``, 32
    rows) the last bracket held up to 76 entries at 32K (T 1), 128 at 64K and 251 at 128K, and a 64-entry limit sent
    nearly every row of 64K-128K to a second pass, which costs far more than pairwise sums over a few hundred
    candidates. Small rows keep 64, so their pairwise step keeps 8-16 threads a candidate."""
    grow = max(1, -(-n // 16384))
    return min(PAIRWISE_MAX * (1 << (grow - 1).bit_length()), PAIRWISE_CAP, threads)


def keys_bytes(items: int, threads: int) -> int:
    """Dynamic shared memory of a launch that keeps its entries there (the kernel's own arrays are static)."""
    return 4 * items * threads


@functools.cache
def _compiled(items: int, dtype_code: int, write_passes: bool, bins: int, threads: int, cluster: int,
              smem_keys: bool, pairwise: int) -> Any:
    kernel = compile_kernel(source(items=items, dtype_code=dtype_code, write_passes=write_passes, bins=bins,
                                   threads=threads, cluster=cluster, smem_keys=smem_keys, pairwise=pairwise),
                            "sb_topp_mask", "the CUDA top-p kernel")
    if smem_keys:
        allow_keys_in_shared(kernel, items, threads)
    return kernel


def allow_keys_in_shared(kernel: Any, items: int, threads: int) -> None:
    """Let a compiled kernel that keeps its entries in shared memory (``smem_keys``) launch with
    :func:`keys_bytes` of it (its static arrays come on top)."""
    allow_dynamic_shared(kernel, keys_bytes(items, threads), "the CUDA top-p kernel")


def clusters_supported(device: torch.device | int) -> bool:
    """Whether CUDA ``device`` runs thread-block clusters (compute capability 9.0 or newer)."""
    return torch.cuda.get_device_properties(device).major >= 9


def max_row(clusters: bool) -> int:
    """Longest row the kernel takes: :data:`MAX_N` in one CTA, :data:`MAX_CLUSTER` times that in a cluster."""
    return MAX_N * (MAX_CLUSTER if clusters else 1)


def launch_shape(n: int, clusters: bool = True, rows: int = 1, sms: int = 132) -> tuple[int, int, int]:
    """``(threads, items, cluster)`` for ``rows`` rows of ``n`` entries on a GPU of ``sms`` multiprocessors.

    One CTA a row (512 threads while a row is up to 16384 entries, 1024 above; at most 32 entries a thread) up to
    :data:`CLUSTER_FROM` entries, or when ``rows`` already give every multiprocessor a CTA; beyond, where
    ``clusters``, the :data:`CLUSTER_TABLE` shape; rows longer than :data:`MAX_N` always take a cluster that holds
    them. Where the table's clusters would not all run at once (:data:`CLUSTER_FILL`) but fewer CTAs of 1024
    threads holding up to :data:`MAX_SMEM_ITEMS` entries each in shared memory would, it takes those: 32 rows of
    128K entries on the H200 took 30.6 µs on 3 CTAs a row against 45.9 on 4 (``bench topp``, same call; the
    rows probe: 28.0 against 45.7). Measured on the H200
    (``benchmarks/device/topp_cuda_shapes_probe.py``, 32 rows): with one CTA a row, 512 threads and 2048 bins was
    the fastest at every length from 1K to 16K, by 9-16% over the 256 threads that about 8 entries a thread gave to
    rows of 1K-2K."""
    cluster, threads = 1, 0
    if clusters and n > CLUSTER_FROM:
        want, want_threads = CLUSTER_TABLE[min(max(1 << (n - 1).bit_length(), min(CLUSTER_TABLE)), max(CLUSTER_TABLE))]
        if rows * want <= sms or n > MAX_N:
            cluster, threads = want, want_threads
        fewest = -(-n // (MAX_SMEM_ITEMS * MAX_THREADS))  # CTAs a row with their entries in shared memory
        if n > MAX_N and rows * want > CLUSTER_FILL * sms and 1 < fewest < want and rows * fewest <= CLUSTER_FILL * sms:
            return MAX_THREADS, _items(n, MAX_THREADS, fewest), fewest
    while cluster < MAX_CLUSTER and -(-n // cluster) > MAX_N:  # a slice must fit a CTA's registers
        cluster, threads = cluster * 2, 0
    if not threads or _items(n, threads, cluster) > 32:
        threads = 512 if -(-n // cluster) <= 512 * 32 else MAX_THREADS
    return threads, _items(n, threads, cluster), cluster


def _items(n: int, threads: int, cluster: int) -> int:
    """Entries a thread holds: its CTA's slice of a row of ``n`` (``ceil(n / cluster)``) over ``threads``."""
    slice_n = -(-n // cluster)
    return max(1, -(-slice_n // threads))


def check_shape(n: int, threads: int, bins: int, cluster: int = 1) -> str | None:
    """Why ``threads``, ``bins`` and ``cluster`` cannot serve rows of ``n`` entries, or None: a power of two from 64
    to 1024 threads (the pairwise step gives each of its 64 or more candidates a thread or more), 1 to
    :data:`MAX_CLUSTER` CTAs a row, at most 32 entries a thread (44 where they are kept in shared memory:
    :func:`keys_in_shared`), and up to 2048 bins: with one CTA from ``threads`` up (each thread scans one or more),
    with a cluster from ``cluster`` up (each CTA reduces one or more)."""
    if not (threads & (threads - 1) == 0 and 64 <= threads <= 1024):
        return f"threads must be a power of two from 64 to 1024, got {threads}"
    if not 1 <= cluster <= MAX_CLUSTER:
        return f"cluster must be 1 to {MAX_CLUSTER} CTAs a row, got {cluster}"
    items = _items(n, threads, cluster)
    most = MAX_SMEM_ITEMS if keys_in_shared(threads, items) else MAX_ITEMS
    if items > most:
        return (f"{cluster} CTA(s) of {threads} threads hold at most {most * threads * cluster} entries, got rows "
                f"of {n}")
    low = threads if cluster == 1 else cluster
    if not (bins & (bins - 1) == 0 and low <= bins <= 2048):
        what = "the thread count" if cluster == 1 else "the cluster size"
        return f"bins must be a power of two from {what} ({low}) to 2048, got {bins}"
    return None


def uses_grid(n: int, rows: int, sms: int) -> bool:
    """Whether ``rows`` rows of ``n`` entries take the grid kernel by default on a GPU of ``sms`` multiprocessors:
    beyond :data:`GRID_FROM` entries, where its CTAs all fit at once (:func:`~sparsebench.kernels.cuda_topp_grid.
    grid_shape`)."""
    return n > GRID_FROM and grid_shape(n, rows, sms) is not None


def kernel_name(n: int, rows: int, device: torch.device | int) -> str:
    """Which CUDA top-p kernel :func:`launch_topp` runs by default for ``rows`` rows of ``n`` entries: "short, one
    CTA a row", "grid", "radix, cluster of C" or "radix, one CTA a row" (for the benchmark's tables)."""
    if n <= SHORT_UP_TO:
        return "short, one CTA a row"
    props = torch.cuda.get_device_properties(device)
    if uses_grid(n, rows, props.multi_processor_count):
        return "grid"
    cluster = launch_shape(n, props.major >= 9, rows, props.multi_processor_count)[2]
    return f"radix, cluster of {cluster}" if cluster > 1 else "radix, one CTA a row"


def launch_topp(x: torch.Tensor, p: float, out: torch.Tensor, passes_out: torch.Tensor | None = None, *,
                threads: int | None = None, bins: int | None = None, cluster: int | None = None,
                smem_keys: bool | None = None, grid: bool | None = None, short: bool | None = None) -> None:
    """Write the top-p mask of ``x`` ``[rows, n]`` (float32/bfloat16/float16, last dim contiguous, ``n`` at most
    :func:`max_row`, values validated by the caller) into ``out`` (uint8 ``[rows, n]``); ``passes_out`` (int32
    ``[rows]``) gets each row's histogram passes. :func:`sparsebench.kernels.topp.topp_mask` validates.
    ``threads``, ``bins`` and ``cluster`` override the launch shape and the histogram size, and ``smem_keys``
    where the entries are kept (default: :func:`keys_in_shared`), for the benchmark's sweeps. ``grid``: the grid
    kernel (:mod:`sparsebench.kernels.cuda_topp_grid`; ``passes_out`` then gets 3, its levels, or 0) or not; by
    default where :func:`uses_grid` says so and no radix shape is asked for. ``short``: the short-row kernel
    (:mod:`sparsebench.kernels.cuda_topp_short`) or not; by default for rows of up to ``SHORT_UP_TO`` (4096) entries
    where neither a radix shape nor ``grid`` is asked for."""
    rows, n = x.shape
    if short is None:
        short = (n <= SHORT_UP_TO and threads is None and bins is None and cluster is None and smem_keys is None
                 and grid is None)
    if short:
        launch_topp_short(x, p, out, passes_out)
        return
    props = torch.cuda.get_device_properties(x.device)
    if grid is None:
        grid = (threads is None and bins is None and cluster is None and smem_keys is None
                and uses_grid(n, rows, props.multi_processor_count))
    if grid:
        launch_topp_grid(x, p, out, passes_out)
        return
    can_cluster = props.major >= 9
    default_threads, _, default_cluster = launch_shape(n, can_cluster, rows, props.multi_processor_count)
    if cluster is None or cluster == default_cluster:
        cluster, threads = default_cluster, threads or default_threads
    else:
        threads = threads or launch_shape(-(-n // cluster), False)[0]
    bins = bins or DEFAULT_BINS
    why = check_shape(n, threads, bins, cluster)
    if why is None and cluster > 1 and not can_cluster:
        why = f"clusters of CTAs need compute capability 9.0 or newer (got {cluster} CTAs a row)"
    if why is not None:
        raise UsageError(f"CUDA top-p launch: {why}")
    items = _items(n, threads, cluster)
    # What a CTA may add to its static arrays (torch builds without the property: nothing, registers as before).
    room = getattr(props, "shared_memory_per_block_optin", _STATIC_SMEM) - _STATIC_SMEM
    if smem_keys is None:
        smem_keys = keys_in_shared(threads, items) and keys_bytes(items, threads) <= room
    elif smem_keys and keys_bytes(items, threads) > room:
        raise UsageError(f"CUDA top-p launch: {items} x {threads} entries in shared memory need "
                         f"{keys_bytes(items, threads)} bytes, this GPU gives a CTA {room} besides the kernel's own; "
                         "leave smem_keys unset")
    if not smem_keys and items > MAX_ITEMS:
        raise UsageError(f"CUDA top-p launch: {items} entries a thread do not fit in registers (at most {MAX_ITEMS}) "
                         f"and this launch keeps them there; use more CTAs a row (cluster) or leave the shape unset")
    kernel = _compiled(items, DTYPE_CODES[x.dtype], passes_out is not None, bins, threads, cluster, smem_keys,
                       pairwise_max(n, threads))
    kernel(grid=(rows * cluster, 1, 1), block=(threads, 1, 1),
           shared_mem=keys_bytes(items, threads) if smem_keys else 0, args=[
        x, out, passes_out if passes_out is not None else out, n, x.stride(0), out.stride(0), float(p)])
