"""Block-sparse decode attention as a CUDA kernel with multi-stage asynchronous copies (compiled by NVRTC).

Why this exists: on the H200 the Triton split kernel (:mod:`sparsebench.kernels.triton_decode`) reads the
selected 16-token blocks at about 2.5 TB/s, the speed of a plain Triton gather, against 3.7 TB/s for dense
FlashInfer; Triton's software pipeliner did not seem to keep the indirect (block-list) loads in flight,
whatever ``num_stages`` said. This kernel tests that explanation: it issues its K/V copies itself with
``cp.async`` into a ring of ``STAGES`` shared-memory tiles, ``STAGES - 1`` tiles ahead of the arithmetic.
Measured (``benchmarks/RESULTS.md``, 2026-11-29): it runs within 3% of the Triton kernel at 8K-128K, and its
copy ring alone (``_copies_only``) is no faster, so the explanation was wrong: the memory side of this access
pattern, not Triton's code generation, sets the speed. It stays as a correct, tested alternative
(``--backend cuda``). It is compiled at run time by NVRTC through ``torch.cuda._compile_kernel`` (no extension
build, no CUDA headers: bf16/fp16 conversion, the copies and the tensor-core instructions are inline PTX),
once per shape family.

Scope: one query row per sequence (plain decode), float16/bfloat16, head dims 64 / 128 / 256, power-of-two
block sizes 16-128, GQA groups of 1, 2, 4 or 8 query heads per kv head, the compacted block lists of the
``indices`` mode (up to 131072 blocks a row: 2M tokens at block 16), optional per-sequence ``kv_len`` and
logit soft-capping. Anything else (several query rows, float32, other groups) is the Triton kernel's job:
:func:`unsupported_reason` says why, and the ``cuda`` backend delegates such calls.

Algorithm: the grid is ``(B * Hkv, splits)``; a program of one warp per 16 tokens of a tile takes list
positions ``[count * s / splits, count * (s + 1) / splits)`` in tiles of ``TILE_BLOCKS`` blocks, exactly like
the Triton ``indices`` mode, and writes the same split partials (unnormalised accumulator, base-2 running max
and sum, tokens read), which the Triton merge kernel then combines. Per tile:

1. wait for the tile's copies (the one block barrier of a tile), then issue the copies of the tile
   ``STAGES - 1`` ahead (the program's whole share of the block list was put in shared memory first);
2. each warp, independently, scores its 16 tokens on tensor cores: ``S^T = K Q^T`` with ``mma.m16n8k16``
   (16 tokens x 8 query-head slots: the GQA group padded to 8), K read by ``ldmatrix`` from an XOR-swizzled
   tile so the reads do not conflict;
3. online softmax on the accumulator fragments (each lane holds two heads; shuffles across the 8 lanes of
   a head);
4. ``O^T += V^T P^T`` on tensor cores (16 dims x 8 heads per m-block; V by ``ldmatrix.trans``, P through
   a 256-byte shared-memory transpose in the cache's 16-bit type, as the Triton kernel also rounds it).

Each warp keeps its own running max, sum and accumulator; the warps are merged once at the end.

A first version did the arithmetic on CUDA cores (50.5 µs at 128K, best of 48 configurations, against 46.7 µs for
Triton); the tensor-core version takes 47.2 µs and its copy ring alone 45.0 µs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from sparsebench.errors import DependencyError, UsageError
from sparsebench.kernels.nvrtc import allow_dynamic_shared, compile_kernel, nvrtc_unavailable_reason, specialise

__all__ = ["CudaKernelConfig", "cuda_unavailable_reason", "default_cuda_config", "sparse_decode_cuda",
           "unsupported_reason"]

_GROUPS = (1, 2, 4, 8)
_HEAD_DIMS = (64, 128, 256)
#: Most splits per (sequence, kv head): the Triton merge kernel holds all partials of a row at once.
MAX_SPLITS = 128
#: Most list entries a program holds in shared memory (4 KB): enough splits are launched that no share is longer.
MAX_IDS = 1024


@dataclass(frozen=True)
class CudaKernelConfig:
    """Launch parameters; ``None`` fields take :func:`default_cuda_config`'s values.

    Why exposed: stages, tile and programs per SM trade outstanding bytes against occupancy, which only a
    benchmark on the target GPU settles (``sparsebench bench attention --methods cuda-indices``).
    """

    tile_blocks: int | None = None
    """KV blocks per tile (one pipeline stage holds a K and a V tile)."""
    stages: int | None = None
    """Shared-memory tiles in the copy ring; ``stages - 1`` tiles are in flight while one is computed."""
    splits: int | None = None
    """Programs per (sequence, kv head); None: about ``programs_per_sm`` programs per SM in all."""
    programs_per_sm: int | None = None


def default_cuda_config(head_dim: int, block_size: int) -> CudaKernelConfig:
    """A tile of 32 tokens (two warps; 16 KB of K and V at D = 128 in bf16), 3 stages, 4 programs an SM: the
    fastest of 48 configurations at 128K on the H200 (47.2 µs; the spread over tiles of 16-64 tokens, 2-6
    stages and 4-8 programs an SM was 47-51 µs: the memory side, not these knobs, sets the speed)."""
    return CudaKernelConfig(tile_blocks=max(1, 32 // block_size), stages=3, splits=None, programs_per_sm=4)


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why the kernel cannot be compiled here (no CUDA device, no NVRTC in this torch), else None."""
    why = nvrtc_unavailable_reason()
    if why is not None:
        return f"{why}: the CUDA decode kernel runs on NVIDIA GPUs through NVRTC"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return "the CUDA decode kernel uses cp.async, which needs an sm_80 (Ampere) or newer GPU"
    return None


def unsupported_reason(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, block_size: int,
                       per_row: bool) -> str | None:
    """Why this call is outside the kernel's scope (the module docstring's), or None when it can run it."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return "query must be [B, Hq, Q, D] and key/value [B, Hkv, T, D]"
    b, hq, q_rows, d = query.shape
    hkv = key.shape[1]
    if q_rows != 1 or per_row:
        return f"{q_rows} query rows per sequence (the CUDA kernel does plain decode: one row)"
    if query.dtype not in (torch.float16, torch.bfloat16) or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtype {query.dtype}/{key.dtype}/{value.dtype} (the CUDA kernel takes float16 or bfloat16)"
    if d not in _HEAD_DIMS:
        return f"head dim {d} (the CUDA kernel takes {', '.join(map(str, _HEAD_DIMS))})"
    if hkv == 0 or hq % hkv or hq // hkv not in _GROUPS:
        return f"{hq} query heads over {hkv} kv heads (the CUDA kernel takes groups of {_GROUPS})"
    if block_size & (block_size - 1) or not 16 <= block_size <= 128:
        return f"block size {block_size} (the CUDA kernel takes powers of two from 16 to 128)"
    if -(-key.shape[2] // block_size) > MAX_SPLITS * MAX_IDS:
        return (f"{-(-key.shape[2] // block_size)} blocks per row (the CUDA kernel takes at most "
                f"{MAX_SPLITS * MAX_IDS}: {MAX_SPLITS} programs of {MAX_IDS} list entries)")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.stride(3) != 1 or t.data_ptr() % 16:
            return f"{name} is not contiguous in its last dim or not 16-byte aligned"
    if key.stride(2) % 8 or value.stride(2) % 8 or key.stride(1) % 8 or value.stride(1) % 8 \
            or key.stride(0) % 8 or value.stride(0) % 8:
        return "key/value strides are not multiples of 8 elements (16-byte copies need aligned rows)"
    if max(key.stride(0) * max(b - 1, 0) + key.stride(1) * hkv, value.stride(0) * max(b - 1, 0)
           + value.stride(1) * hkv) >= 2**31:
        return "key/value offsets beyond 2**31 elements"
    return None


_SOURCE = r"""
#define TT (TILE_BLOCKS * BLOCK_SIZE)  // tokens of a tile
#define NWARPS (TT / 16)               // each warp owns 16 tokens of every tile
#define NT (32 * NWARPS)
#define CH (HEAD_DIM / 8)              // 16-byte chunks per K/V row
#define KSTEPS (HEAD_DIM / 16)         // k-steps of the score product, m-blocks of the P V product
#define NEG_BIG (-1.0e30f)
#define NEG_INF (__int_as_float(0xff800000))

typedef unsigned short u16;

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    unsigned r;
    asm volatile("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(smem_addr(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }
__device__ __forceinline__ void ldsm_x4(unsigned& a0, unsigned& a1, unsigned& a2, unsigned& a3, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned& a0, unsigned& a1, unsigned& a2, unsigned& a3, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3) : "r"(smem_addr(p)));
}
// d += A (16 x 16, row) * B (16 x 8, col), float32 accumulators, 16-bit inputs of the cache's type.
__device__ __forceinline__ void mma(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                    unsigned b1) {
#if IS_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};"
#endif
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u16 to_half(float x) {
    u16 h;
#if IS_BF16
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(x));
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
#endif
    return h;
}
// 16-byte chunk c of tile row t sits at chunk slot c ^ (t % 8): the eight rows an ldmatrix phase reads then fall
// in eight different bank groups.
__device__ __forceinline__ int swz(int t, int c) { return c ^ (t & 7); }

// Each warp is an independent flash-decoding worker over its 16 tokens of every tile, on tensor cores:
// scores S^T = K Q^T (m16n8k16: 16 tokens x 8 query-head slots, the group padded to 8), an online softmax on
// the accumulator fragments, then O^T += V^T P^T (16 dims x 8 heads per m-block). Its running max, sum and
// accumulator are merged with the other warps' once at the end, so a tile costs one block barrier (the copy
// ring's hand-off).
extern "C" __global__ void __launch_bounds__(NT) sb_sparse_decode(
    const u16* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
    const int* __restrict__ lists, const int* __restrict__ counts, const int* __restrict__ kv_len,
    float* __restrict__ o_part, float* __restrict__ m_part, float* __restrict__ l_part, int* __restrict__ n_part,
    int sqb, int sqh, int skb, int skh, int skt, int svb, int svh, int svt, int slb, int slh, int sln,
    int scb, int sch, int n_kv_heads, int n_tokens, double score_scale_d, double cap_scale_d)
{
    extern __shared__ __align__(16) unsigned char smem[];
    uint4* ks = reinterpret_cast<uint4*>(smem);                    // [STAGES][TT][CH]
    uint4* vs = ks + STAGES * TT * CH;                              // [STAGES][TT][CH]
    u16* ps = reinterpret_cast<u16*>(vs + STAGES * TT * CH);        // [NWARPS][8 heads][16 tokens] probabilities
    float* ws = reinterpret_cast<float*>(ps + NWARPS * 128);        // [NWARPS][2][8] each warp's final m, l
    int* ids_s = reinterpret_cast<int*>(ws + NWARPS * 16);          // [MAX_IDS] this program's block ids
    int* nread_s = ids_s + MAX_IDS;                                 // [1]

    const int bh = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
    const int b = bh / n_kv_heads, h = bh % n_kv_heads;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float score_scale = (float)score_scale_d;
#if SOFTCAP
    const float cap_scale = (float)cap_scale_d;
#endif
    int limit = n_tokens;
#if HAS_KV_LEN
    limit = min(kv_len[b], n_tokens);
#endif
    const int count = counts[b * scb + h * sch];
    const int lo = (int)(((long long)count * split) / n_splits);
    const int hi = (int)(((long long)count * (split + 1)) / n_splits);
    const int n_mine = hi - lo;  // <= MAX_IDS: the host picks enough splits
    const int n_tiles = (n_mine + TILE_BLOCKS - 1) / TILE_BLOCKS;
    const int* lrow = lists + (long long)b * slb + (long long)h * slh;
    const u16* kbase = k + (long long)b * skb + (long long)h * skh;
    const u16* vbase = v + (long long)b * svb + (long long)h * svh;
    if (tid == 0) nread_s[0] = 0;

    // This program's whole share of the block list goes to shared memory first (one coalesced read), so no
    // copy and no mask ever waits on an index load inside the loop.
    for (int i = tid; i < n_mine; i += NT) ids_s[i] = lrow[(long long)(lo + i) * sln];
    __syncthreads();
    auto block_id = [&](int tile, int j) -> int {
        const int p = tile * TILE_BLOCKS + j;
        return p < n_mine ? ids_s[p] : -1;
    };
    // Issue the copies of tile `tile` into ring slot `stage` (zero-filled past the list or the live tokens).
    auto issue = [&](int tile, int stage) {
#pragma unroll
        for (int x = tid; x < TT * CH; x += NT) {
            const int t = x / CH, c = x % CH;
            const int blk = block_id(tile, t / BLOCK_SIZE);
            const int tok = blk * BLOCK_SIZE + t % BLOCK_SIZE;
            const bool ok = blk >= 0 && tok < limit;
            const u16* ksrc = ok ? kbase + (long long)tok * skt + c * 8 : k;
            const u16* vsrc = ok ? vbase + (long long)tok * svt + c * 8 : v;
            cp_async16(ks + (stage * TT + t) * CH + swz(t, c), ksrc, ok ? 16 : 0);
            cp_async16(vs + (stage * TT + t) * CH + swz(t, c), vsrc, ok ? 16 : 0);
        }
    };
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < n_tiles) issue(s, s);
        cp_commit();
    }

    // Q^T as the score product's B fragments: query head lane / 4 (zero past the group), dims of each k-step.
    const int qh = lane >> 2, kq = 2 * (lane & 3);
    unsigned qb[KSTEPS][2];
    {
        const u16* qrow = q + (long long)b * sqb + (long long)(h * GROUP + (qh < GROUP ? qh : 0)) * sqh;
#pragma unroll
        for (int s = 0; s < KSTEPS; ++s) {
            const unsigned lo0 = qrow[s * 16 + kq], hi0 = qrow[s * 16 + kq + 1];
            const unsigned lo1 = qrow[s * 16 + kq + 8], hi1 = qrow[s * 16 + kq + 9];
            qb[s][0] = qh < GROUP ? (lo0 | (hi0 << 16)) : 0u;
            qb[s][1] = qh < GROUP ? (lo1 | (hi1 << 16)) : 0u;
        }
    }
    // This lane's accumulator fragments hold query heads h0 = 2 (lane % 4) and h0 + 1.
    float m0 = NEG_BIG, m1 = NEG_BIG, l0 = 0.0f, l1 = 0.0f;
    float acc[KSTEPS][4];
#pragma unroll
    for (int s = 0; s < KSTEPS; ++s)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[s][e] = 0.0f;
    int my_read = 0;
    u16* pw = ps + warp * 128;
    const int mi = lane >> 3, r8 = lane & 7;  // ldmatrix: which 8x8 matrix this lane addresses, and its row
    const int wt = warp * 16;                 // the warp's first token in a tile

    for (int tile = 0; tile < n_tiles; ++tile) {
        cp_wait<STAGES - 2>();
        __syncthreads();  // this tile has landed for every thread; the slot refilled below is free
        {
            const int nxt = tile + STAGES - 1;
            if (nxt < n_tiles) issue(nxt, nxt % STAGES);
            cp_commit();
        }
        const int stage = tile % STAGES;
        const uint4* kt = ks + stage * TT * CH;
        const uint4* vt = vs + stage * TT * CH;
#if COPIES_ONLY
        if (tid == 0) my_read += (int)(kt[0].x & 1u) + (int)(vt[0].x & 1u);  // touch the tile, nothing more
#else
        // 1. scores S^T [16 tokens x 8 head slots]: c0, c1 at token lane / 4, c2, c3 at token lane / 4 + 8.
        float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        {
            const int t = wt + (mi & 1) * 8 + r8;
#pragma unroll
            for (int s = 0; s < KSTEPS; ++s) {
                unsigned a0, a1, a2, a3;
                ldsm_x4(a0, a1, a2, a3, kt + t * CH + swz(t, s * 2 + (mi >> 1)));
                mma(sc, a0, a1, a2, a3, qb[s][0], qb[s][1]);
            }
        }
        const int ta = wt + qh, tb = ta + 8;
        const int ba = block_id(tile, ta / BLOCK_SIZE), bb = block_id(tile, tb / BLOCK_SIZE);
        const bool oka = ba >= 0 && ba * BLOCK_SIZE + ta % BLOCK_SIZE < limit;
        const bool okb = bb >= 0 && bb * BLOCK_SIZE + tb % BLOCK_SIZE < limit;
        if ((lane & 3) == 0) my_read += (oka ? 1 : 0) + (okb ? 1 : 0);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            float x = sc[e] * score_scale;
#if SOFTCAP
            x = cap_scale * (1.0f - 2.0f / (exp2f(x * 2.8853900817779268f) + 1.0f));
#endif
            sc[e] = (e < 2 ? oka : okb) ? x : NEG_INF;
        }
        // 2. online softmax per head: the warp's 16 tokens are 2 rows here times 8 lanes (lane / 4).
        float mx0 = fmaxf(sc[0], sc[2]), mx1 = fmaxf(sc[1], sc[3]);
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        const float p0 = exp2f(sc[0] - mn0), p1 = exp2f(sc[1] - mn1), p2 = exp2f(sc[2] - mn0), p3 = exp2f(sc[3] - mn1);
        float s0 = p0 + p2, s1 = p1 + p3;
#pragma unroll
        for (int off = 4; off < 32; off <<= 1) {
            s0 += __shfl_xor_sync(0xffffffffu, s0, off);
            s1 += __shfl_xor_sync(0xffffffffu, s1, off);
        }
        const float al0 = exp2f(m0 - mn0), al1 = exp2f(m1 - mn1);
        l0 = l0 * al0 + s0;
        l1 = l1 * al1 + s1;
        m0 = mn0;
        m1 = mn1;
#pragma unroll
        for (int s = 0; s < KSTEPS; ++s) {
            acc[s][0] *= al0;
            acc[s][1] *= al1;
            acc[s][2] *= al0;
            acc[s][3] *= al1;
        }
        // P^T as the P V product's B fragments: through shared memory, [head][token] in the cache's type.
        pw[kq * 16 + qh] = to_half(p0);
        pw[(kq + 1) * 16 + qh] = to_half(p1);
        pw[kq * 16 + qh + 8] = to_half(p2);
        pw[(kq + 1) * 16 + qh + 8] = to_half(p3);
        __syncwarp();
        const unsigned pb0 = *reinterpret_cast<const unsigned*>(pw + qh * 16 + kq);
        const unsigned pb1 = *reinterpret_cast<const unsigned*>(pw + qh * 16 + kq + 8);
        // 3. O^T [16 dims x 8 heads] per m-block += V^T P^T.
        {
            const int t = wt + (mi >> 1) * 8 + r8;
#pragma unroll
            for (int s = 0; s < KSTEPS; ++s) {
                unsigned a0, a1, a2, a3;
                ldsm_x4_t(a0, a1, a2, a3, vt + t * CH + swz(t, s * 2 + (mi & 1)));
                mma(acc[s], a0, a1, a2, a3, pb0, pb1);
            }
        }
        __syncwarp();
#endif
    }
    cp_wait<0>();
    __syncthreads();

    // Merge the warps (base-2 weights against the block's max), then write the split partials in the Triton
    // split kernel's layout: o [part, GROUP, D], m and l [part, GROUP], tokens read [part].
    if (my_read) atomicAdd(nread_s, my_read);
    if (lane < 4) {
        ws[warp * 16 + kq] = m0;
        ws[warp * 16 + kq + 1] = m1;
        ws[warp * 16 + 8 + kq] = l0;
        ws[warp * 16 + 8 + kq + 1] = l1;
    }
    __syncthreads();
    float* red = reinterpret_cast<float*>(smem);  // the K ring is free now: [NWARPS][8 heads][HEAD_DIM]
    {
        float big0 = NEG_BIG, big1 = NEG_BIG;
#pragma unroll
        for (int w2 = 0; w2 < NWARPS; ++w2) {
            big0 = fmaxf(big0, ws[w2 * 16 + kq]);
            big1 = fmaxf(big1, ws[w2 * 16 + kq + 1]);
        }
        const float f0 = exp2f(m0 - big0), f1 = exp2f(m1 - big1);
        float* rw = red + warp * 8 * HEAD_DIM;
#pragma unroll
        for (int s = 0; s < KSTEPS; ++s) {
            const int d = s * 16 + qh;
            rw[kq * HEAD_DIM + d] = acc[s][0] * f0;
            rw[(kq + 1) * HEAD_DIM + d] = acc[s][1] * f1;
            rw[kq * HEAD_DIM + d + 8] = acc[s][2] * f0;
            rw[(kq + 1) * HEAD_DIM + d + 8] = acc[s][3] * f1;
        }
    }
    __syncthreads();
    const long long part = (long long)bh * n_splits + split;
    for (int i = tid; i < GROUP * HEAD_DIM; i += NT) {
        float o = 0.0f;
#pragma unroll
        for (int w2 = 0; w2 < NWARPS; ++w2) o += red[w2 * 8 * HEAD_DIM + i];
        o_part[part * GROUP * HEAD_DIM + i] = o;
    }
    if (tid < GROUP) {
        float big = NEG_BIG, lsum = 0.0f;
#pragma unroll
        for (int w2 = 0; w2 < NWARPS; ++w2) big = fmaxf(big, ws[w2 * 16 + tid]);
#pragma unroll
        for (int w2 = 0; w2 < NWARPS; ++w2) lsum += exp2f(ws[w2 * 16 + tid] - big) * ws[w2 * 16 + 8 + tid];
        m_part[part * GROUP + tid] = big;
        l_part[part * GROUP + tid] = lsum;
    }
    if (tid == 0) n_part[part] = nread_s[0];
}
"""


def _smem_bytes(group: int, head_dim: int, block_size: int, tile_blocks: int, stages: int) -> int:
    """Dynamic shared memory of one program: the K/V copy ring, each warp's probabilities and final max/sum,
    the ring's block ids (the warps' merge at the end reuses the ring)."""
    tt = tile_blocks * block_size
    warps = tt // 16
    return stages * tt * head_dim * 2 * 2 + warps * (128 * 2 + 16 * 4) + 4 * (MAX_IDS + 1)


#: NVRTC options of the decode kernel.
OPTIONS = ("--use_fast_math", "-std=c++17")


def source(group: int, head_dim: int, block_size: int, tile_blocks: int, stages: int, bf16: bool,
           has_kv_len: bool, softcap: bool, copies_only: bool = False) -> str:
    """The kernel source for one shape family (the CPU tests compile it with NVRTC for sm_90)."""
    return specialise(_SOURCE, MAX_IDS=MAX_IDS, GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
                      TILE_BLOCKS=tile_blocks, STAGES=stages, IS_BF16=int(bf16), HAS_KV_LEN=int(has_kv_len),
                      SOFTCAP=int(softcap), COPIES_ONLY=int(copies_only))


@functools.cache
def _compiled(group: int, head_dim: int, block_size: int, tile_blocks: int, stages: int, bf16: bool,
              has_kv_len: bool, softcap: bool, copies_only: bool = False) -> Any:
    """The kernel for one shape family, compiled once by NVRTC (about a second) with its shared memory set."""
    kernel = compile_kernel(source(group, head_dim, block_size, tile_blocks, stages, bf16, has_kv_len, softcap,
                                   copies_only), "sb_sparse_decode", "the CUDA decode kernel", options=OPTIONS)
    smem = _smem_bytes(group, head_dim, block_size, tile_blocks, stages)
    allow_dynamic_shared(kernel, smem, "the CUDA decode kernel")
    return kernel, smem


def _check_config(cfg: CudaKernelConfig, group: int, head_dim: int, block_size: int) -> None:
    """Reject a tile the kernel's thread layout cannot cover (one line, before compiling anything)."""
    tb, stages = cfg.tile_blocks or 0, cfg.stages or 0
    if stages < 2 or tb < 1 or tb & (tb - 1):
        raise UsageError(f"CUDA kernel: stages must be >= 2 and tile_blocks a power of two, got {cfg}")
    tokens = tb * block_size
    if tokens > 256:  # a warp per 16 tokens: at most 16 warps (512 threads) a program
        raise UsageError(f"CUDA kernel: a tile of {tokens} tokens needs {tokens // 16} warps (16 at most): use a "
                         "smaller tile_blocks")
    smem = _smem_bytes(group, head_dim, block_size, tb, stages)
    if smem > 227 * 1024:
        raise UsageError(f"CUDA kernel: {stages} stages of {tokens} tokens need {smem // 1024} KB of shared memory "
                         "(227 KB at most): use fewer stages or a smaller tile")


def _splits(cfg: CudaKernelConfig, heads: int, n_blocks: int, tile_blocks: int) -> int:
    """Programs per (sequence, kv head): about ``programs_per_sm`` programs per SM, at least two tiles of list
    each, and enough that no program's share of a list exceeds :data:`MAX_IDS` entries."""
    need = -(-n_blocks // MAX_IDS)
    if need > MAX_SPLITS:
        raise UsageError(f"the CUDA decode kernel takes at most {MAX_SPLITS * MAX_IDS} blocks per row, got {n_blocks}; "
                         "use --backend triton")
    if cfg.splits is not None:
        if not need <= cfg.splits <= MAX_SPLITS:
            raise UsageError(f"splits must be in [{need}, {MAX_SPLITS}] for {n_blocks} blocks, got {cfg.splits}")
        return cfg.splits
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    want = -(-(cfg.programs_per_sm or 2) * sms // max(heads, 1))
    cap = max(1, -(-n_blocks // (2 * tile_blocks)))
    return max(need, min(want, cap, MAX_SPLITS))


def sparse_decode_cuda(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    indices: torch.Tensor,
    counts: torch.Tensor,
    *,
    block_size: int,
    scaling: float,
    softcap: float | None = None,
    kv_len: torch.Tensor | None = None,
    config: CudaKernelConfig | None = None,
    check_scope: bool = True,
    _copies_only: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse decode over compacted block lists; returns ``(out [B, Hq, 1, D], tokens_read [B, Hkv])``.

    ``indices`` ``[B, Hkv, N]`` / ``counts`` ``[B, Hkv]`` (int32) as :func:`~sparsebench.kernels.triton_decode.
    compact_selection` writes them. Checks shapes only (no device sync), so the call can be captured in a
    CUDA graph. Raises ``UsageError`` for a call outside the kernel's scope (:func:`unsupported_reason`).
    ``check_scope=False`` skips the availability and scope checks for a caller that has made them (the
    ``cuda`` backend checks the scope to choose between this kernel and Triton's: not twice per layer and
    step). ``_copies_only`` (benchmarks only: the output is meaningless) runs the copy ring without the attention
    arithmetic, to separate what the memory system allows from what the kernel's math costs.
    """
    if check_scope:
        reason = cuda_unavailable_reason()
        if reason is not None:
            raise DependencyError(reason)
        why = unsupported_reason(query, key, value, block_size=block_size, per_row=False)
        if why is not None:
            raise UsageError(f"the CUDA decode kernel cannot run this call: {why}; use --backend triton")
    b, hq, _, d = query.shape
    _, hkv, n_tokens, _ = key.shape
    n_blocks = -(-n_tokens // block_size)
    if tuple(indices.shape) != (b, hkv, n_blocks) or tuple(counts.shape) != (b, hkv) \
            or indices.dtype != torch.int32 or counts.dtype != torch.int32:
        raise UsageError("indices/counts must come from compact_selection(selection)")
    if softcap is not None and not softcap > 0:
        raise UsageError(f"softcap must be positive, got {softcap!r}")
    if kv_len is not None:
        if kv_len.shape != (b,) or kv_len.is_floating_point():
            raise UsageError(f"kv_len must be an integer tensor of shape ({b},)")
        kv_len = kv_len.to(torch.int32)
    base = default_cuda_config(d, block_size)
    given = config or CudaKernelConfig()
    cfg = CudaKernelConfig(tile_blocks=given.tile_blocks or base.tile_blocks, stages=given.stages or base.stages,
                           splits=given.splits, programs_per_sm=given.programs_per_sm or base.programs_per_sm)
    group = hq // hkv
    _check_config(cfg, group, d, block_size)
    kernel, smem = _compiled(group, d, block_size, cfg.tile_blocks, cfg.stages, query.dtype == torch.bfloat16,
                             kv_len is not None, softcap is not None, _copies_only)
    heads = b * hkv
    splits = _splits(cfg, heads, n_blocks, cfg.tile_blocks)
    out = torch.empty((b, hq, 1, d), dtype=query.dtype, device=query.device)
    tokens_read = torch.empty((b, hkv), dtype=torch.int64, device=query.device)
    if heads == 0:
        return out, tokens_read
    from sparsebench.kernels import triton_decode

    o_part, m_part, l_part, n_part = triton_decode.split_partials(heads * splits, group, d, query.device)
    score_scale, cap_scale = triton_decode.score_scales(scaling, softcap)
    kv_arg = kv_len if kv_len is not None else counts  # never read without HAS_KV_LEN
    tokens = cfg.tile_blocks * block_size
    kernel(grid=(heads, splits, 1), block=(2 * tokens, 1, 1), shared_mem=smem, args=[
        query, key, value, indices, counts, kv_arg, o_part, m_part, l_part, n_part,
        query.stride(0), query.stride(1), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), *indices.stride(), *counts.stride(),
        hkv, n_tokens, float(score_scale), float(cap_scale)])
    triton_decode.merge_partials(o_part, m_part, l_part, n_part, out, tokens_read, hkv=hkv, splits=splits,
                                 group=group, q_rows=1)
    return out, tokens_read
