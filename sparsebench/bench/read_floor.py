"""The time of one read of a tensor, as the fastest of several reading kernels: the floor ``bench topp`` holds the
top-p kernels to (issue 4: within 2x of one read of the input).

Why several: a single reduction is not a read floor. torch's row sum (``probs.sum(-1)``, the only reference up to
the twenty-first session) picks its launch shape by row length, and on 32 rows of the H200 it took 7.6 µs at 4K
entries against 3.0 µs at 8K (twice the bytes): at 2K-4K it measured torch's configuration, not the memory. A
plain chunked read, every program summing ``block`` consecutive entries into one float, uses the whole GPU at
every row length. The benchmark times each variant the same way (CUDA-graph replays, same flush, same calls a
replay) and takes the fastest as "one read"; each variant's time is kept in the report.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

#: (entries a program, warps) of the chunked read: from many small programs (short inputs: 32 rows of 1K entries
#: are 128 programs of 256) to 8K-entry programs (long inputs: fewer, longer streams), 4-32 entries a thread.
CHUNK_SHAPES: tuple[tuple[int, int], ...] = ((256, 2), (512, 4), (1024, 4), (2048, 4), (4096, 8), (8192, 8))


@triton.jit
def _chunk_sum_kernel(x_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """Program ``i`` sums entries ``[i * BLOCK, (i + 1) * BLOCK)`` of the flat input into ``out[i]``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)
    tl.store(out_ptr + tl.program_id(0), tl.sum(v, axis=0))


def chunk_sum(x: torch.Tensor, block: int, warps: int, out: torch.Tensor) -> torch.Tensor:
    """Partial sums of the contiguous ``x`` in chunks of ``block`` entries, into ``out`` (float32, at least
    ``ceil(numel / block)`` entries): one read of ``x`` and a write of 1/``block`` of it."""
    programs = triton.cdiv(x.numel(), block)
    _chunk_sum_kernel[(programs,)](x, out, x.numel(), BLOCK=block, num_warps=warps)
    return out


def read_variants(x: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    """Each reading kernel timed for "one read" of ``x`` (rows in the last dimension), by a name for the report.

    The chunked reads write into buffers allocated here, so a timed call allocates nothing. Every variant is run
    once and checked first: each returns sums that add up to the input's total, so none can be fast by skipping
    part of the input (a wrong grid or mask would)."""
    if not x.is_contiguous():
        raise ValueError("read_variants needs a contiguous tensor: a strided one would time the gaps too")
    variants: dict[str, Callable[[], torch.Tensor]] = {
        "probs.sum(-1)": lambda: x.sum(-1),
        "probs.sum()": lambda: x.sum(),
    }
    for block, warps in CHUNK_SHAPES:
        out = torch.empty(triton.cdiv(x.numel(), block), dtype=torch.float32, device=x.device)
        variants[f"chunk_sum(block={block}, warps={warps})"] = (
            lambda block=block, warps=warps, out=out: chunk_sum(x, block, warps, out))
    total = x.double().sum()
    for name, fn in variants.items():
        sums = fn()
        got = sums.double().sum()
        # torch's sums come back in the input's dtype: bfloat16 row sums carry 8 significant bits
        rtol = max(1e-4, 2 * torch.finfo(sums.dtype).eps)
        if not torch.isclose(got, total, rtol=rtol, atol=1e-6 * x.numel()):
            raise RuntimeError(f"read kernel {name} summed {float(got)!r}, the input sums to {float(total)!r}: "
                               "it does not read the whole input, so its time is no read floor")
    return variants
