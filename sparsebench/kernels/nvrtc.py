"""What the NVRTC-compiled kernels share: whether they can compile here, the compile call, and CUDA source pieces.

Why one module: :mod:`sparsebench.kernels.cuda_decode`, :mod:`sparsebench.kernels.cuda_topk` and
:mod:`sparsebench.kernels.cuda_topp` are compiled at run time by NVRTC through ``torch.cuda._compile_kernel`` (no
extension build, no CUDA headers). They need the same availability check, the same one-line error when a compile
fails, and (the two selection kernels) the same block-wide reductions and dtype-coded loads.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from sparsebench.errors import DependencyError

__all__ = [
    "CLUSTER_SOURCE",
    "COMMON_SOURCE",
    "DTYPE_CODES",
    "GLOBAL_SYNC_SOURCE",
    "MAX_THREADS",
    "MIN_THREADS",
    "allow_dynamic_shared",
    "block_threads",
    "compile_kernel",
    "nvrtc_unavailable_reason",
    "specialise",
]

#: Block sizes of the row-per-block selection kernels: at least 256 threads (2048 histogram bins split evenly, and
#: four or more threads per pairwise candidate), at most 1024.
MIN_THREADS, MAX_THREADS = 256, 1024
#: ``IN_DTYPE`` values of :data:`COMMON_SOURCE`'s ``load_value``.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

#: Typedefs, ``load_value`` (element ``i`` of a float32/bfloat16/float16 array as float32, by ``IN_DTYPE``), 64-bit
#: shuffles, and ``warp_sum`` and the block-wide ``block_scan`` over one value a thread (blockDim a multiple of 32, at
#: most 1024).
COMMON_SOURCE = r"""
#define FULL 0xffffffffu

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

__device__ __forceinline__ float load_value(const void* base, long long i) {
#if IN_DTYPE == 0
    return ((const float*)base)[i];
#elif IN_DTYPE == 1
    return __uint_as_float(((u32)((const u16*)base)[i]) << 16);
#else
    u16 h = ((const u16*)base)[i];
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
    return f;
#endif
}

// Element i's bits as stored (float32, or the 16 bits of bfloat16 / float16), for key_of_raw to convert later: a
// load nothing waits on until its value is used.
__device__ __forceinline__ u32 raw_bits(const void* base, long long i) {
#if IN_DTYPE == 0
    return ((const u32*)base)[i];
#else
    return ((const u16*)base)[i];
#endif
}

// |x| as float32 bits from raw_bits' value: their integer order is the value order (-0.0 joins +0.0).
__device__ __forceinline__ u32 key_of_raw(u32 r) {
#if IN_DTYPE == 0
    return r & 0x7fffffffu;
#elif IN_DTYPE == 1
    return (r << 16) & 0x7fffffffu;
#else
    float f;
    asm("{ .reg .f16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"((u16)r));
    return __float_as_uint(f) & 0x7fffffffu;
#endif
}

// |x| of element i as float32 bits.
__device__ __forceinline__ u32 abs_bits(const void* base, long long i) { return key_of_raw(raw_bits(base, i)); }

// Row `row` of a float32 (4-byte) or 16-bit array with `stride` elements between rows.
__device__ __forceinline__ const void* row_of(const void* base, int row, int stride) {
#if IN_DTYPE == 0
    return (const float*)base + (long long)row * stride;
#else
    return (const u16*)base + (long long)row * stride;
#endif
}

// A 64-bit value shuffled as two 32-bit halves (the explicit form the top-p kernels were measured with).
__device__ __forceinline__ u64 shfl_u64(u64 v, int src) {
    const u32 lo = __shfl_sync(FULL, (u32)v, src), hi = __shfl_sync(FULL, (u32)(v >> 32), src);
    return ((u64)hi << 32) | lo;
}
__device__ __forceinline__ u64 shfl_up_u64(u64 v, int o) {
    const u32 lo = __shfl_up_sync(FULL, (u32)v, o), hi = __shfl_up_sync(FULL, (u32)(v >> 32), o);
    return ((u64)hi << 32) | lo;
}

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
    #pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL, v, o);
    return v;
}

// Exclusive scan of one value a thread, in thread order; *total gets the sum. ws[32] is scratch. One barrier: every
// warp scans the warp totals itself (rather than warp 0 scanning them behind a second barrier). ws must not be
// written again before the block meets another barrier.
template <typename T> __device__ __forceinline__ T block_scan_once(T v, T* ws, T* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    T inc = v;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        T y = __shfl_up_sync(FULL, inc, o);
        if (lane >= o) inc += y;
    }
    if (lane == 31) ws[warp] = inc;
    __syncthreads();
    const T w = lane < nwarps ? ws[lane] : (T)0;
    T wi = w;
    #pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        T y = __shfl_up_sync(FULL, wi, o);
        if (lane >= o) wi += y;
    }
    *total = __shfl_sync(FULL, wi, nwarps - 1);
    return __shfl_sync(FULL, wi - w, warp) + inc - v;  // the warps before this one, then this warp's lanes before
}

// block_scan_once, ending synchronised (ws may be reused at once).
template <typename T> __device__ __forceinline__ T block_scan(T v, T* ws, T* total) {
    const T res = block_scan_once(v, ws, total);
    __syncthreads();
    return res;
}
"""


#: Global-memory loads and an arrival with GPU-scope ordering, for CTAs that meet through global memory (a row's CTAs
#: at a row barrier): an acquire load, a relaxed load, and a release reduction that returns no value.
GLOBAL_SYNC_SOURCE = r"""
__device__ __forceinline__ u32 ld_acquire(const u32* p) {
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u32 ld_relaxed(const u32* p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// An arrival that releases what this CTA wrote before its barrier (no value returned: nothing waits on it).
__device__ __forceinline__ void red_release(u32* p, u32 v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}
"""

#: Thread-block cluster helpers (sm_90): the cluster barrier's halves, this CTA's rank, and loads from a peer CTA's
#: shared memory (distributed shared memory, ``mapa`` / ``ld.shared::cluster``). A kernel compiled with them needs
#: ``__cluster_dims__`` or a cluster launch.
CLUSTER_SOURCE = r"""
__device__ __forceinline__ void cluster_arrive() {
    asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
    asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_sync() { cluster_arrive(); cluster_wait(); }
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
__device__ __forceinline__ float peer_f32(u32 a) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(a) : "memory");
    return v;
}
"""

@functools.cache
def nvrtc_unavailable_reason() -> str | None:
    """Why no NVRTC kernel can run here (no CUDA device, no ``torch.cuda._compile_kernel``), else None."""
    if not torch.cuda.is_available():
        return "no CUDA device is visible"
    if getattr(torch.cuda, "_compile_kernel", None) is None:
        return f"torch {torch.__version__} has no torch.cuda._compile_kernel (NVRTC); torch >= 2.9 has"
    return None


def block_threads(n: int, per_thread: int = 8) -> int:
    """Threads of a block that holds a row of ``n`` entries, about ``per_thread`` a thread: a power of two from
    :data:`MIN_THREADS` to :data:`MAX_THREADS`."""
    threads = MIN_THREADS
    while threads < MAX_THREADS and threads * per_thread < n:
        threads *= 2
    return threads


def specialise(source: str, **defines: int) -> str:
    """``source`` preceded by one ``#define NAME VALUE`` line per keyword: a kernel's compile-time shape."""
    return "".join(f"#define {k} {v}\n" for k, v in defines.items()) + source


def compile_kernel(source: str, name: str, what: str, options: tuple[str, ...] = ("-std=c++17",)) -> Any:
    """Compile kernel ``name`` of ``source`` with NVRTC; a failure raises ``DependencyError`` naming ``what`` (e.g.
    "the CUDA top-k kernel") and NVRTC's last message line."""
    try:
        return torch.cuda._compile_kernel(source, name, nvcc_options=list(options))
    except Exception as exc:  # NVRTC missing, or a compile error: say which, in one line
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DependencyError(f"could not compile {what} with NVRTC: {last}") from exc


def allow_dynamic_shared(kernel: Any, nbytes: int, what: str) -> None:
    """Let ``kernel`` (from :func:`compile_kernel`) launch with ``nbytes`` of dynamic shared memory. A kernel whose
    static and dynamic shared memory together pass 48 KB must opt in (``cuFuncSetAttribute``), even with less than
    48 KB dynamic; torch's launcher also checks its own record of the opt-in where it keeps one. ``what`` names the
    kernel in the error."""
    lib = torch.cuda._utils._get_gpu_runtime_library()
    max_dynamic = 8  # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    err = lib.cuFuncSetAttribute(kernel.func, max_dynamic, ctypes.c_int(nbytes))
    if err != 0:
        raise DependencyError(f"could not give {what} {nbytes} bytes of dynamic shared memory (CUDA error {err})")
    if hasattr(kernel, "set_shared_memory_config"):
        kernel.set_shared_memory_config(nbytes)
