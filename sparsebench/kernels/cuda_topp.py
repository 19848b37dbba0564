"""Sorting-free top-p masks by radix selection on exact fixed-point mass, in CUDA (NVRTC).

Why this exists next to the Triton kernel (:mod:`sparsebench.kernels.topp`): the Triton search tests a few
candidate thresholds per pass, and every candidate's mass needs its own reduction tree across the block. On the
H200 that made 32 rows of 1K entries cost 8.6 µs in steady state, against 3.4 µs for one read of the input, and
the 10x over sort that the project targets was out of reach (4.0-6.5x). A *histogram* of the mass needs no
per-candidate reduction: every entry adds its mass to one of 2048 shared-memory bins, and one block-wide scan of
the bins places the threshold. Triton has no shared-memory atomics on computed addresses, so this is CUDA,
compiled at run time by NVRTC like :mod:`sparsebench.kernels.cuda_topk` (its top-k sibling).

Exact mass without float atomics: float additions in atomic (arbitrary) order would make the result depend on
scheduling. Each entry's mass is instead a 64-bit integer, ``f(x) = floor(x * S)`` with ``S = 2**62 / T``
(``T`` the row's float64 sum), and integer sums are exact in any order. A bin holds its mass as two 32-bit
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

Algorithm (one thread block per row, entries ``t, t + blockDim, ...`` in registers as float32 bit patterns)
----------------------------------------------------------------------------------------------------------
1. Block sums: ``T`` (float64), then ``F_T``. ``p == 1`` keeps every positive entry; a zero row keeps nothing;
   a ``p`` so close to 1 that the margin cannot be met keeps every positive entry (mass ``T >= p T``).
2. The threshold ``t*`` (the largest entry whose at-or-above mass is accepted) lies in the bracket ``[lo, hi]``
   of bit patterns, initially ``[1, max]`` (positive entries). A pass bins the bracket's entries into 2048
   bins of ``2**shift`` patterns (``shift`` = bit length of ``hi - lo`` minus 11), adding mass and count per bin
   with shared-memory atomics; a block scan from the top finds the bin where the mass at or above first reaches
   the acceptance level. The mass of the bins over it is added to ``above`` and the bin becomes the bracket.
   At most 3 passes reach a single pattern; usually 1-2.
3. Once the bracket holds at most :data:`PAIRWISE_MAX` (64) entries, each of them computes its exact
   at-or-above mass against the others in shared memory (four or more threads an entry); ``t*`` is the
   largest accepted. The mask is ``x >= t*`` over positive entries: ties at ``t*`` are all kept, as in the
   module :mod:`sparsebench.kernels.topp`'s semantics.

Clusters (compute capability 9.0 or newer)
------------------------------------------
One CTA a row uses 32 multiprocessors for 32 rows, and its time follows its entries a thread: each pass is a
latency-bound chain of per-entry work (shared-memory atomics, and float64 scaling where the masses are not kept).
Longer rows are therefore split over a thread-block cluster of 2-8 CTAs (``CLUSTER``), each holding a contiguous
slice. The CTAs meet at cluster barriers and read each other's shared memory (distributed shared memory, inline
PTX ``mapa`` / ``ld.shared::cluster``):

* the sums ``T``, ``F_T`` and the maximum are each CTA's, combined by thread 0 in rank order, so every CTA holds
  bit-identical values and takes the same branches (and so meets the same barriers);
* a pass builds each CTA's histogram of its slice; CTA ``r`` then sums bins ``[r B / C, (r + 1) B / C)`` over the
  cluster, the range totals give each CTA the mass of the ranges above its own, and the one CTA whose range holds the
  crossing bin writes the new bracket into every CTA's shared memory (three cluster barriers a pass);
* the pairwise step gathers the cluster's candidates (at most 64) into every CTA, in rank order.

The launch shape (:func:`launch_shape`) is a measured table (:data:`CLUSTER_TABLE`): clusters from 8K entries
where the row count leaves them room on the GPU, and always beyond :data:`MAX_N` (rows of up to 256K entries).

Measured on the H200 (``sparsebench bench topp --suites main --calls-per-replay 20 --no-flush``, 32 rows;
``benchmarks/RESULTS.md``, tenth session): exact on every row (0 rows differing from the reference, 1-2 passes).
5.2 / 6.0 / 7.1 / 13.0 / 15.6 / 21.3 / 48.0 / 71.0 µs at 1K-128K entries, against the Triton kernel's 8.6 / 8.6 /
12.4 / 18.2 / 30.2 / 40.1 / 92.4 / 178.7 and sort's 40-658 µs. That makes it the fastest kernel here at every
length, and 7.0-9.6x faster than sort (the project's target is 10x). Before the 32-bit halves it took 6.3-109.6 µs.
Before the clusters (ninth session) 8K-32K took 18.0 / 29.6 / 64.2 µs.
What the time is *not*: the launch (an empty kernel costs 0.7-1.0 µs a call there), the histogram size (fewer bins
were slower), or atomic contention (warp-aggregated adds were 1.4-12x slower). No host synchronisation: CUDA-graph
safe. ``topp_mask(backend="auto")`` still picks the Triton kernel (the policies' GPU tests and graph captures have
not yet run on this one); this one is ``backend="cuda"``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.nvrtc import COMMON_SOURCE, DTYPE_CODES, MAX_THREADS, compile_kernel, specialise

__all__ = [
    "CLUSTER_TABLE",
    "MAX_CLUSTER",
    "MAX_N",
    "PAIRWISE_MAX",
    "check_shape",
    "clusters_supported",
    "launch_shape",
    "launch_topp",
    "max_row",
    "source",
]

#: Longest row one CTA holds in registers (32 entries a thread, 1024 threads).
MAX_N = 32768
#: Most CTAs a row (a thread-block cluster of the portable size): rows of up to ``MAX_CLUSTER * MAX_N`` entries.
MAX_CLUSTER = 8
#: ``(CTAs a row, threads a CTA)`` by row length (the next power of two at or above it), from the H200 sweep of the
#: tenth session (``benchmarks/device/topp_cuda_shapes_probe.py``, 32 rows, 2048 bins, ``results/h200_2026-11-29_s10/
#: topp_clusters/``). Rows up to 4096 entries stay in one CTA (clusters were no faster there). What the table
#: encodes: a CTA's time follows its entries a thread (a latency-bound chain), and a cluster only helps while the
#: row's clusters fit the GPU at once; eight-CTA clusters of 256 threads, or four of 512, did not (2 waves).
CLUSTER_TABLE = {8192: (4, 256), 16384: (4, 256), 32768: (2, 512), 65536: (8, 512), 131072: (8, 512),
                 262144: (8, 1024)}
#: Rows up to this length run in one CTA by default.
CLUSTER_FROM = 4096

#: Largest bracket resolved by pairwise sums instead of another histogram pass.
PAIRWISE_MAX = 64
#: Histogram bins a pass (the launch may ask for fewer: :func:`launch_topp`).
DEFAULT_BINS = 2048

_SOURCE = r"""
#define MAX_PASSES 6
//: Histogram bins each CTA of a cluster reduces over the cluster (all of them with one CTA a row).
#define RANGE_BINS (NBINS / CLUSTER)

#if CLUSTER > 1
// Thread-block clusters (sm_90): the CTAs of a row meet at cluster barriers and read each other's shared memory.
#define CLUSTER_ATTR __cluster_dims__(CLUSTER, 1, 1)
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ u32 cluster_rank() {
    u32 r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// The address of this CTA's shared variable `local` in the shared memory of the cluster's CTA `rank`.
__device__ __forceinline__ u32 peer(const void* local, u32 rank) {
    unsigned long long s;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(local));
    u32 a;
    asm("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(a) : "r"((u32)s), "r"(rank));
    return a;
}
__device__ __forceinline__ u64 peer_u64(u32 a) {
    u64 v;
    asm volatile("ld.shared::cluster.u64 %0, [%1];" : "=l"(v) : "r"(a) : "memory");
    return v;
}
__device__ __forceinline__ u32 peer_u32(u32 a) {
    u32 v;
    asm volatile("ld.shared::cluster.u32 %0, [%1];" : "=r"(v) : "r"(a) : "memory");
    return v;
}
__device__ __forceinline__ double peer_f64(u32 a) {
    double v;
    asm volatile("ld.shared::cluster.f64 %0, [%1];" : "=d"(v) : "r"(a) : "memory");
    return v;
}
__device__ __forceinline__ void peer_store_u32(u32 a, u32 v) {
    asm volatile("st.shared::cluster.u32 [%0], %1;" :: "r"(a), "r"(v) : "memory");
}
__device__ __forceinline__ void peer_store_u64(u32 a, u64 v) {
    asm volatile("st.shared::cluster.u64 [%0], %1;" :: "r"(a), "l"(v) : "memory");
}
#else
#define CLUSTER_ATTR
#endif

extern "C" __global__ void CLUSTER_ATTR __launch_bounds__(THREADS, 1) sb_topp_mask(
    const void* __restrict__ x, unsigned char* __restrict__ out, int* __restrict__ passes_out,
    int n, int stride_x, int stride_out, double p)
{
    // A bin's mass in two 32-bit halves: 32-bit shared-memory adds are native, 64-bit ones compile to
    // compare-and-swap loops. The low half's carries go into the high half (see the pass), so
    // hi * 2**32 + lo is the exact sum.
    __shared__ u32 hlo[NBINS], hhi[NBINS];
    __shared__ u32 hcnt[NBINS];
    __shared__ u64 ws[33];
    __shared__ double red_d[32];
    __shared__ u32 red_u[32];
    __shared__ u32 pair_key[PAIRWISE_MAX];
    __shared__ u64 pair_mass[PAIRWISE_MAX];
    __shared__ u32 s_lo, s_hi, s_active, s_npair, s_tstar;
    __shared__ u64 s_above;

    const int t = threadIdx.x, nt = blockDim.x;
#if CLUSTER > 1
    // This CTA's slice of the row; the cluster's values (sums, histograms, candidates) are combined in rank order,
    // so every CTA computes bit-identical totals and takes the same branches (and so the same cluster barriers).
    // c_*: this CTA's part, read by the others; *_all: the cluster's value, combined by thread 0 and broadcast
    // (one remote read a CTA per value, not one a thread).
    __shared__ double c_tot, tot_all;
    __shared__ u32 c_kmax, kmax_all, c_npair;
    __shared__ u64 c_ftot, ftot_all, c_range, higher_all;
    __shared__ u64 gmass[RANGE_BINS];
    __shared__ u32 g_key[PAIRWISE_MAX];
    __shared__ u64 g_mass[PAIRWISE_MAX];
    __shared__ u32 s_offset[CLUSTER + 1];
    const u32 rank = cluster_rank();
    const int row = blockIdx.x / CLUSTER;
    const int slice = (n + CLUSTER - 1) / CLUSTER;
    const int first = (int)rank * slice, last = min(n, first + slice);
#else
    const u32 rank = 0u;
    const int row = blockIdx.x, first = 0, last = n;
#endif
    const void* xrow = row_of(x, row, stride_x);
    u32 key[ITEMS];  // |x| bit patterns: their integer order is the value order (-0.0 joins +0.0)
    double tot = 0.0;
    u32 kmax = 0u;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = first + i * nt + t;
        key[i] = 0u;
        if (j < last) {
            key[i] = __float_as_uint(load_value(xrow, j)) & 0x7fffffffu;
            tot += (double)__uint_as_float(key[i]);
            kmax = max(kmax, key[i]);
        }
    }
    if (t == 0) { s_npair = 0u; s_tstar = 0u; }
    tot = block_sum(tot, red_d);
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) kmax = max(kmax, __shfl_xor_sync(FULL, kmax, o));
    if ((t & 31) == 0) red_u[t >> 5] = kmax;
    __syncthreads();
    for (int w = 0; w < (nt >> 5); ++w) kmax = max(kmax, red_u[w]);
#if CLUSTER > 1
    if (t == 0) { c_tot = tot; c_kmax = kmax; }
    cluster_sync();
    if (t == 0) {
        double sum = 0.0;
        u32 top = 0u;
        for (u32 r = 0; r < CLUSTER; ++r) {
            sum += peer_f64(peer(&c_tot, r));
            top = max(top, peer_u32(peer(&c_kmax, r)));
        }
        tot_all = sum;
        kmax_all = top;
    }
    __syncthreads();
    tot = tot_all;
    kmax = kmax_all;
#endif

    // Fixed-point mass f(x) = floor(x * scale): exact integer sums (module docstring).
    const double scale = tot > 0.0 ? 4611686018427387904.0 / tot : 0.0;  // 2**62 / T
    u64 fsum = 0ull;
#if ITEMS <= 16
    u64 fm[ITEMS];  // each entry's f(x), kept for the passes (longer rows recompute it: registers)
#define FMASS(i) fm[i]
#else
#define FMASS(i) __double2ull_rz((double)__uint_as_float(key[i]) * scale)
#endif
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const u64 f = __double2ull_rz((double)__uint_as_float(key[i]) * scale);
        fsum += f;
#if ITEMS <= 16
        fm[i] = f;
#endif
    }
    u64 ftot = block_sum(fsum, ws);
#if CLUSTER > 1
    if (t == 0) c_ftot = ftot;
    cluster_sync();
    if (t == 0) {
        u64 sum = 0ull;
        for (u32 r = 0; r < CLUSTER; ++r) sum += peer_u64(peer(&c_ftot, r));
        ftot_all = sum;
    }
    __syncthreads();
    ftot = ftot_all;
#endif
    const double err = (double)ftot * 0x1p-51 + 2.0 * (double)n + 4.0;
    const u64 target = __double2ull_ru(p * ((double)ftot + err) * (1.0 + 0x1p-50) + err + 2.0);

    u32 tstar;
    int n_pass = 0;
    if (!(tot > 0.0)) {
        tstar = FULL;  // nothing to keep
    } else if (p >= 1.0 || ftot < target) {
        tstar = 1u;  // every positive entry (p == 1, or p too close to 1 for the margin)
    } else {
        u32 lo = 1u, hi = kmax;
        u64 above = 0ull;
        u32 active = FULL;  // unknown until the first pass; forces one
        for (; n_pass < MAX_PASSES && lo < hi && active > PAIRWISE_MAX; ++n_pass) {
            const u32 span = hi - lo;
            const int shift = max(0, 32 - __clz(span) - BIN_BITS);
            for (int b = t; b < NBINS; b += nt) { hlo[b] = 0u; hhi[b] = 0u; hcnt[b] = 0u; }
            __syncthreads();
            #pragma unroll
            for (int i = 0; i < ITEMS; ++i) {
                const u32 k = key[i];
                if (k >= lo && k <= hi) {  // padding has key 0 < lo
                    const u32 b = (k - lo) >> shift;
                    const u64 f = FMASS(i);
                    const u32 f_lo = (u32)f;
                    const u32 old = atomicAdd(&hlo[b], f_lo);
                    atomicAdd(&hhi[b], (u32)(f >> 32) + (old + f_lo < old ? 1u : 0u));  // with this add's carry
                    atomicAdd(&hcnt[b], 1u);
                }
            }
            __syncthreads();
#if CLUSTER > 1
            // CTA `rank` owns bins [rank * RANGE_BINS, (rank + 1) * RANGE_BINS): it sums them over the cluster.
            cluster_sync();
            for (int i = t; i < RANGE_BINS; i += nt) {
                const int b = (int)rank * RANGE_BINS + i;
                u64 m = 0ull;
                #pragma unroll
                for (u32 r = 0; r < CLUSTER; ++r)
                    m += ((u64)peer_u32(peer(&hhi[b], r)) << 32) + peer_u32(peer(&hlo[b], r));
                gmass[i] = m;
            }
            __syncthreads();
#define BIN_MASS(b) gmass[b]
#else
#define BIN_MASS(b) ((((u64)hhi[b]) << 32) + hlo[b])
#endif
            const int per = (RANGE_BINS + nt - 1) / nt;
            u64 mine = 0ull;
            for (int i = 0; i < per; ++i) {
                const int b = t * per + i;
                if (b < RANGE_BINS) mine += BIN_MASS(b);
            }
            u64 total;
            const u64 below = block_scan(mine, ws, &total);  // mass of this range's lower bins
            u64 higher = 0ull;  // mass of the ranges over this one (other CTAs' bins)
#if CLUSTER > 1
            if (t == 0) c_range = total;
            cluster_sync();
            if (t == 0) {
                for (u32 r = rank + 1; r < CLUSTER; ++r) higher += peer_u64(peer(&c_range, r));
                higher_all = higher;
            }
            __syncthreads();
            higher = higher_all;
#endif
            // at-or-above mass of bin b = above + higher + total - (mass of this range's bins under b); find where
            // it reaches target (one bin of one CTA does).
            u64 under = below;
            for (int i = 0; i < per; ++i) {
                const int b = t * per + i;
                if (b >= RANGE_BINS) break;
                const u64 h = BIN_MASS(b);
                const u64 at_or_above = above + higher + total - under;
                if (at_or_above >= target && at_or_above - h < target) {
                    const u32 gb = rank * RANGE_BINS + (u32)b;
                    const u64 top = (u64)lo + (((u64)gb + 1ull) << shift) - 1ull;
                    const u32 new_lo = lo + (gb << shift), new_hi = top < (u64)hi ? (u32)top : hi;
#if CLUSTER > 1
                    u32 count = 0u;  // the crossing bin's entries over the cluster (the only count needed)
                    for (u32 r = 0; r < CLUSTER; ++r) count += peer_u32(peer(&hcnt[gb], r));
                    for (u32 r = 0; r < CLUSTER; ++r) {
                        peer_store_u64(peer(&s_above, r), at_or_above - h);
                        peer_store_u32(peer(&s_active, r), count);
                        peer_store_u32(peer(&s_lo, r), new_lo);
                        peer_store_u32(peer(&s_hi, r), new_hi);
                    }
#else
                    s_above = at_or_above - h;
                    s_active = hcnt[b];
                    s_lo = new_lo;
                    s_hi = new_hi;
#endif
                }
                under += h;
            }
#if CLUSTER > 1
            cluster_sync();
#else
            __syncthreads();
#endif
            lo = s_lo; hi = s_hi; above = s_above; active = s_active;
            __syncthreads();
        }
        if (lo == hi) {
            tstar = lo;
        } else {
            // At most PAIRWISE_MAX entries in [lo, hi] (over the whole row): each one's exact at-or-above mass.
            #pragma unroll
            for (int i = 0; i < ITEMS; ++i) {
                const u32 k = key[i];
                if (k >= lo && k <= hi) {
                    const u32 slot = atomicAdd(&s_npair, 1u);
                    if (slot < PAIRWISE_MAX) {
                        pair_key[slot] = k;
                        pair_mass[slot] = FMASS(i);
                    }
                }
            }
            __syncthreads();
#if CLUSTER > 1
            // Every CTA gathers the cluster's candidates, in rank order.
            if (t == 0) c_npair = min(s_npair, (u32)PAIRWISE_MAX);
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
            const u32 np = min(s_npair, (u32)PAIRWISE_MAX);
            const u32* cand_key = pair_key;
            const u64* cand_mass = pair_mass;
#endif
            const int tpe = nt / PAIRWISE_MAX;  // 1 to 16 threads an entry
            const u32 s = t / tpe;
            const int part = t % tpe;
            const u32 mk = s < np ? cand_key[s] : FULL;
            u64 m = 0ull;
            for (u32 q = part; q < np; q += tpe)
                if (cand_key[q] >= mk) m += cand_mass[q];
            for (int o = 1; o < tpe; o <<= 1) m += __shfl_xor_sync(FULL, m, o);
            if (s < np && part == 0 && above + m >= target) atomicMax(&s_tstar, mk);
            __syncthreads();
            tstar = max(s_tstar, lo);  // lo is accepted (invariant), so some entry >= lo is
        }
    }
#if CLUSTER > 1
    cluster_sync();  // no CTA leaves while another may still read its shared memory
#endif
    unsigned char* orow = out + (long long)row * stride_out;
    #pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        const int j = first + i * nt + t;
        if (j < last) orow[j] = (key[i] >= tstar) && (key[i] > 0u);
    }
    if (WRITE_PASSES && t == 0 && rank == 0u) passes_out[row] = n_pass;
}
"""


def source(*, items: int, dtype_code: int, write_passes: bool, bins: int = DEFAULT_BINS, threads: int = 1024,
           cluster: int = 1) -> str:
    """The kernel source for one specialisation (the CPU tests compile it with NVRTC when they can). ``threads``
    is the block size it is launched with at most: its register budget follows from it (a 64-register budget for
    every block size made rows of 16 or 32 entries a thread spill). ``cluster``: CTAs a row (a thread-block
    cluster, compute capability 9.0 or newer), each holding ``items`` entries a thread of its slice."""
    return specialise(COMMON_SOURCE + _SOURCE, ITEMS=items, PAIRWISE_MAX=PAIRWISE_MAX, IN_DTYPE=dtype_code,
                      WRITE_PASSES=int(write_passes), NBINS=bins, BIN_BITS=bins.bit_length() - 1, THREADS=threads,
                      CLUSTER=cluster)


@functools.cache
def _compiled(items: int, dtype_code: int, write_passes: bool, bins: int, threads: int, cluster: int) -> Any:
    return compile_kernel(source(items=items, dtype_code=dtype_code, write_passes=write_passes, bins=bins,
                                 threads=threads, cluster=cluster), "sb_topp_mask", "the CUDA top-p kernel")


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
    ``clusters``, the :data:`CLUSTER_TABLE` shape; rows longer than :data:`MAX_N` always take the smallest cluster
    that holds them. Measured on the H200 (``benchmarks/device/topp_cuda_shapes_probe.py``, 32 rows): with one CTA
    a row, 512 threads and 2048 bins was the fastest at every length from 1K to 16K, by 9-16% over the 256 threads
    that about 8 entries a thread gave to rows of 1K-2K."""
    cluster, threads = 1, 0
    if clusters and n > CLUSTER_FROM:
        want, want_threads = CLUSTER_TABLE[min(max(1 << (n - 1).bit_length(), min(CLUSTER_TABLE)), max(CLUSTER_TABLE))]
        if rows * want <= sms or n > MAX_N:
            cluster, threads = want, want_threads
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
    """Why ``threads``, ``bins`` and ``cluster`` cannot serve rows of ``n`` entries, or None: powers of two, 64 to
    1024 threads (the pairwise step gives each of its 64 candidates a thread or more), 1 to :data:`MAX_CLUSTER` CTAs
    a row, at most 32 entries a thread (held in registers), and up to 2048 bins: with one CTA from ``threads`` up
    (each thread scans one or more), with a cluster from ``cluster`` up (each CTA reduces one or more)."""
    if not (threads & (threads - 1) == 0 and 64 <= threads <= 1024):
        return f"threads must be a power of two from 64 to 1024, got {threads}"
    if not (cluster & (cluster - 1) == 0 and 1 <= cluster <= MAX_CLUSTER):
        return f"cluster must be a power of two from 1 to {MAX_CLUSTER} CTAs a row, got {cluster}"
    if _items(n, threads, cluster) > 32:
        return f"{cluster} CTA(s) of {threads} threads hold at most {32 * threads * cluster} entries, got rows of {n}"
    low = threads if cluster == 1 else cluster
    if not (bins & (bins - 1) == 0 and low <= bins <= 2048):
        what = "the thread count" if cluster == 1 else "the cluster size"
        return f"bins must be a power of two from {what} ({low}) to 2048, got {bins}"
    return None


def launch_topp(x: torch.Tensor, p: float, out: torch.Tensor, passes_out: torch.Tensor | None = None, *,
                threads: int | None = None, bins: int | None = None, cluster: int | None = None) -> None:
    """Write the top-p mask of ``x`` ``[rows, n]`` (float32/bfloat16/float16, last dim contiguous, ``n`` at most
    :func:`max_row`, values validated by the caller) into ``out`` (uint8 ``[rows, n]``); ``passes_out`` (int32
    ``[rows]``) gets each row's histogram passes. :func:`sparsebench.kernels.topp.topp_mask` validates.
    ``threads``, ``bins`` and ``cluster`` override the launch shape and the histogram size (the benchmark's
    sweep)."""
    rows, n = x.shape
    props = torch.cuda.get_device_properties(x.device)
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
    kernel = _compiled(_items(n, threads, cluster), DTYPE_CODES[x.dtype], passes_out is not None, bins, threads,
                       cluster)
    kernel(grid=(rows * cluster, 1, 1), block=(threads, 1, 1), args=[
        x, out, passes_out if passes_out is not None else out, n, x.stride(0), out.stride(0), float(p)])
