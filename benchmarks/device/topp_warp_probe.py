"""Feasibility probe: a top-p kernel with one warp a row and no block barriers, for rows of 1K-4K entries.

Why: against a true read floor (``sparsebench/bench/read_floor.py``, twenty-second session) the one-CTA radix kernel
is 2.6-3.2x one read at 1K-4K entries, where 2x is asked. Its phase timeline at 1K spends 1,366 cycles loading and
summing and 1,272 scanning 2,048 bins, behind block barriers of 16 warps. A warp that owns a row needs no block
barrier at all: the load is ``E = N / 32`` float4-wide entries a lane kept in registers, the sum and maximum are
shuffles, the histogram (256 bins of 1/8 binade under the row's maximum, two 32-bit words a bin as in the radix
kernel) lives in the warp's own shared memory, its scan is 8 bins a lane and one shuffle scan, and the crossing bin's
entries are gathered with ballots and resolved pairwise.

This probe is not the product: it has no near-tie margin, no second pass where the crossing bin holds more than
``CMAX`` entries (it counts such rows and marks them as failed), and float32 input only. It answers one question:
what does this structure cost at 1K-4K, against one read and against the radix kernel? Each row's mask is compared
with the float64 reference so that the timed work is the real work.

    python3 benchmarks/device/topp_warp_probe.py --out DIR [--sizes 1024,2048,4096] [--warps 1,2,4]
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.read_floor import read_variants
from sparsebench.bench.topp import make_probs, time_gpu
from sparsebench.kernels.nvrtc import COMMON_SOURCE, compile_kernel, specialise
from sparsebench.kernels.topp import topp_mask_cuda, topp_mask_torch

_WARP_TOPP = r"""
#define NB 256
#define SHIFT 20
#define E (N / 32)
// Loops over a lane's float4 groups: fully unrolled where the row sits in registers; 4 at a time where it is read
// again (fully unrolled, the compiler hoists every load and spills).
constexpr int UNR = E <= 32 && KEEP ? E / 4 : 4;

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += shfl_u64(v, (threadIdx.x & 31) ^ o);
    return v;
}

__device__ __forceinline__ void load4(const float4* xr, int i, int lane, u32* a) {
    const float4 q = __ldg(&xr[i * 32 + lane]);
    a[0] = __float_as_uint(q.x) & 0x7fffffffu;
    a[1] = __float_as_uint(q.y) & 0x7fffffffu;
    a[2] = __float_as_uint(q.z) & 0x7fffffffu;
    a[3] = __float_as_uint(q.w) & 0x7fffffffu;
}

// One warp a row: lane l holds entries 4 (32 i + l) + {0..3}, i < E / 4. status[row]: candidates of the crossing
// bin (or -1 where they overflowed CMAX and the mask is not exact).
extern "C" __global__ void __launch_bounds__(32 * WARPS) sb_warp_topp(
    const float* __restrict__ x, unsigned char* __restrict__ out, int* __restrict__ status, int rows, double p)
{
    __shared__ u32 hlo[WARPS][NB], hhi[WARPS][NB];
    __shared__ u32 ckey[WARPS][CMAX];
    __shared__ u64 cmass[WARPS][CMAX];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int row = blockIdx.x * WARPS + w;
    if (row >= rows) return;
    const float4* xr = (const float4*)(x + (long long)row * N);
#if E <= 32 && KEEP  // the row in registers
    u32 k[E];
    #pragma unroll
    for (int i = 0; i < E / 4; ++i) load4(xr, i, lane, &k[4 * i]);
#define KEYS4(i, a) u32 a[4] = {k[4 * (i)], k[4 * (i) + 1], k[4 * (i) + 2], k[4 * (i) + 3]}
#else  // longer rows are read again at each step (from L1: a warp's row is 8-16 KB)
#define KEYS4(i, a) u32 a[4]; load4(xr, (i), lane, a)
#endif
    #pragma unroll
    for (int b = lane; b < NB; b += 32) { hlo[w][b] = 0u; hhi[w][b] = 0u; }
    float s = 0.f;
    u32 m = 0u;
    #pragma unroll UNR
    for (int i = 0; i < E / 4; ++i) {
        KEYS4(i, a);
        #pragma unroll
        for (int c = 0; c < 4; ++c) { s += __uint_as_float(a[c]); m = max(m, a[c]); }
    }
    s = warp_sum(s);
    m = __reduce_max_sync(FULL, m);
    const double S = 4.0e18 / (double)s;  // about 2**62 / T: the row's fixed-point total stays under 2**63
    const int base = (int)(m >> SHIFT) - (NB - 1);  // bins [base + 1, top] one each; bin 0 takes the rest
    __syncwarp();
    u64 low = 0ull;
    #pragma unroll UNR
    for (int i = 0; i < E / 4; ++i) {
        KEYS4(i, a);
        #pragma unroll
        for (int c = 0; c < 4; ++c) {
            const u64 f = (u64)((double)__uint_as_float(a[c]) * S);
            const int b = (int)(a[c] >> SHIFT) - base;
            if (b <= 0) {
                low += f;
            } else {
                const u32 old = atomicAdd(&hlo[w][b], (u32)f);
                atomicAdd(&hhi[w][b], (u32)(f >> 32) + (old + (u32)f < old ? 1u : 0u));
            }
        }
    }
    low = warp_sum_u64(low);
    __syncwarp();
    // Lane l scans bins NB-1-8l ... NB-8-8l (from the top down).
    u64 bm[8], lt = 0ull;
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
        const int b = NB - 1 - (8 * lane + j);
        bm[j] = ((u64)hhi[w][b] << 32) | hlo[w][b];
        if (b == 0) bm[j] = low;
        lt += bm[j];
    }
    u64 inc = lt;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const u64 y = shfl_up_u64(inc, o);
        if (lane >= o) inc += y;
    }
    const u64 total = shfl_u64(inc, 31);
    const u64 target = (u64)((double)total * p);
    const int cl = __ffs(__ballot_sync(FULL, inc >= target)) - 1;
    u64 acc = inc - lt;  // the mass of the bins above this lane's
    int cb = -1;
    u64 above = 0ull;
    #pragma unroll
    for (int j = 0; j < 8; ++j) {
        if (cb < 0 && acc + bm[j] >= target) { cb = NB - 1 - (8 * lane + j); above = acc; }
        acc += bm[j];
    }
    cb = __shfl_sync(FULL, cb, cl);
    above = shfl_u64(above, cl);
    // The crossing bin's entries, gathered with ballots.
    u32 cnt = 0u;
    #pragma unroll UNR
    for (int i = 0; i < E / 4; ++i) {
        KEYS4(i, a);
        #pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int b = max((int)(a[c] >> SHIFT) - base, 0);
            const bool in = b == cb && a[c] != 0u;
            const u32 bal = __ballot_sync(FULL, in);
            const u32 slot = cnt + __popc(bal & ((1u << lane) - 1u));
            if (in && slot < CMAX) {
                ckey[w][slot] = a[c];
                cmass[w][slot] = (u64)((double)__uint_as_float(a[c]) * S);
            }
            cnt += __popc(bal);
        }
    }
    __syncwarp();
    u32 tstar = 0u;
    if (cnt <= CMAX) {
        for (u32 i = lane; i < cnt; i += 32) {  // candidate i's mass at or above its own key
            const u32 ki = ckey[w][i];
            u64 a = above;
            for (u32 j = 0; j < cnt; ++j) a += ckey[w][j] >= ki ? cmass[w][j] : 0ull;
            if (a >= target) tstar = max(tstar, ki);
        }
        tstar = __reduce_max_sync(FULL, tstar);
    }
    if (lane == 0) status[row] = cnt <= CMAX ? (int)cnt : -1;
    if (tstar == 0u) tstar = 1u;  // every positive entry (the probe does not handle this case further)
    uchar4* orow = (uchar4*)(out + (long long)row * N);
    #pragma unroll UNR
    for (int i = 0; i < E / 4; ++i) {
        KEYS4(i, a);
        orow[i * 32 + lane] = make_uchar4(a[0] >= tstar, a[1] >= tstar, a[2] >= tstar, a[3] >= tstar);
    }
}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--sizes", default="1024,2048,4096")
    ap.add_argument("--warps", default="1,2,4", help="rows (warps) a CTA")
    ap.add_argument("--cmax", type=int, default=256, help="candidates the crossing bin may hold")
    ap.add_argument("--keep", default="0,1", help="1: rows of up to 1K entries stay in registers; 0: read again")
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=2.0)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    rows_out = []
    for n in (int(s) for s in args.sizes.split(",")):
        probs = make_probs(32, n, temperature=args.temperature, dtype=torch.float32, device="cuda", gen=gen)
        ref = topp_mask_torch(probs, args.p)
        timing = functools.partial(time_gpu, warmup=5, repeats=50, flush=None, calls=20)
        t_read = min(statistics.median(timing(fn)) for fn in read_variants(probs).values())
        t_radix = statistics.median(timing(functools.partial(topp_mask_cuda, probs, args.p, check=False)))
        keeps = [int(s) for s in args.keep.split(",")] if n <= 1024 else [0]
        for warps, keep in ((w, k) for w in (int(s) for s in args.warps.split(",")) for k in keeps):
            kernel = compile_kernel(specialise(COMMON_SOURCE + _WARP_TOPP, N=n, WARPS=warps, CMAX=args.cmax,
                                               KEEP=keep), "sb_warp_topp", "the warp top-p probe kernel")
            out = torch.empty(probs.shape, dtype=torch.uint8, device="cuda")
            status = torch.zeros(32, dtype=torch.int32, device="cuda")
            call = functools.partial(kernel, grid=(-(-32 // warps), 1, 1), block=(32 * warps, 1, 1),
                                     args=[probs, out, status, 32, args.p])
            call()
            torch.cuda.synchronize()
            bad = int((out.bool() != ref).any(-1).sum())
            st = status.cpu().tolist()
            t = statistics.median(timing(call))
            rows_out.append(dict(n=n, warps=warps, keep=keep, us=t, read_us=t_read, radix_us=t_radix,
                                 rows_differing=bad, candidates=st, overflowed=sum(c < 0 for c in st)))
            print(f"N={n:>5} warps/CTA {warps} keep {keep}: {t:5.2f} us ({t / t_read:4.2f}x read {t_read:4.2f}; radix "
                  f"{t_radix:4.2f} us), rows differing {bad}, candidates max {max(st)} mean "
                  f"{statistics.mean(c for c in st if c >= 0):.0f}, overflowed {sum(c < 0 for c in st)}", flush=True)
    save_probe(args.out, "topp_warp.json", rows_out,
               "us: 20 calls a CUDA-graph replay, no flush, median of 50 replays; 32 rows of softmax(randn x "
               f"{args.temperature}), p {args.p}; read: the fastest of bench.read_floor's variants")


if __name__ == "__main__":
    main()
