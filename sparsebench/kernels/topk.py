"""Sorting-free top-k block masks: a Triton threshold search, plus the references it is tested against.

Why this exists: top-k policies (Quest, SpecAttn ``--select-by topk``) turn ``[batch, kv_heads, N]`` block
scores into a :class:`~sparsebench.selection.Selection` bitmap every decode step. ``torch.topk`` followed
by a scatter costs 18-58 us for 8 rows of 512-8192 blocks on an H200, more than the sparse attention
kernel it feeds. A top-k *set* needs no sort, only the k-th largest value: one program per row holds the
row in registers and searches for that value with counting passes, then writes the mask directly.

Semantics (:func:`topk_mask_reference` defines them; the kernel matches it bit for bit)
-------------------------------------------------------------------------------------
For a row ``x`` of ``N`` entries and ``k`` (clamped to ``[0, N]``) the mask has exactly ``k`` True entries:
the ``k`` largest values, where

* ties are broken by index: among entries equal to the k-th largest value, the lowest indices are kept
  (a deterministic rule; ``torch.topk`` leaves the choice unspecified);
* NaN counts as smaller than every number, ``-inf`` included (NaNs tie with each other, lowest index
  first); ``-0.0`` equals ``+0.0``;
* ``k >= N`` keeps the whole row, ``k == 0`` nothing. ``k`` is a Python int (negative is an error) or an
  integer tensor broadcastable to the leading shape ``scores.shape[:-1]`` (one k per row; values outside
  ``[0, N]`` are clamped on the device, since checking them would cost a host synchronisation).

bfloat16 and float16 scores are converted exactly to float32; float64 scores are ranked in float64 by
the references (the kernel does not take them).

Kernel algorithm
----------------
1. Each float32 value maps to an int32 *key* whose integer order is the float order: non-negative floats
   keep their bit pattern, negative ones flip their 31 low bits (so ``-inf`` is the smallest number), ``-0.0``
   becomes ``+0.0`` and NaN becomes ``INT32_MIN``. Every comparison below is an exact integer compare.
2. The k-th largest key ``t`` is bracketed by ``[lo, hi]`` (initially the row's min and max), keeping
   ``cnt_lo = #{key >= lo}`` (``>= k``) and ``cnt_above = #{key > hi}`` (``< k``). A pass places
   ``NUM_CAND`` candidate thresholds and counts ``#{key >= c}`` for all of them in one sweep of the
   registers (exact int32 counts); candidates with count ``>= k`` lie at or below ``t``, the others above
   it, so the largest accepted one becomes ``lo`` and the smallest rejected one minus 1 becomes ``hi``.
   The first pass takes its candidates from the row itself (``NUM_CAND`` entries at evenly strided
   positions, a sample whose ranks bracket ``k`` to about ``N / NUM_CAND`` entries whatever the value
   distribution); later passes split ``[lo, hi]`` evenly in key space, which divides its width by at least
   ``NUM_CAND + 1``. The same sweep finds the smallest and largest entry inside the pass's starting
   bracket, and the bracket snaps to them (no entry lies between, so the counts stay exact): this ends
   the search at once when only one distinct value, a run of ties, is left.
3. The search stops when ``cnt_lo == k`` (then the mask is ``key >= lo``: the common case, reached as
   soon as a candidate falls between the k-th and the (k+1)-th largest value) or when ``lo == hi == t``
   (ties at ``t`` straddle the k-th place). In the second case the mask is ``key > t`` plus the first
   ``k - cnt_above`` entries equal to ``t`` in index order, found by one prefix sum over the row.
   At most ``1 + ceil(32 / log2(NUM_CAND + 1))`` passes (9 with 16 candidates); in practice 3-5 on
   Gaussian, log-normal or sorted scores, 2-4 on integer-valued ones.

No host synchronisation anywhere (``k`` is a kernel argument or read on the device), so the call can be
captured in a CUDA graph.

Cost model, from the sm_90 machine code (``triton.compile`` for ``GPUTarget("cuda", 90, 32)``; to be
confirmed by timing with ``python -m sparsebench.kernels.topk --out DIR`` on the GPU): entries are first
clamped into the bracket, so that for a bracket narrower than ``2**31`` (every pass but, on rows holding
both signs, the first) ``clamp(key) - c`` cannot overflow and its sign bit counts the entries below ``c``:
about 2 instructions per entry and candidate (a subtract and a fused shift-add), half what the compiler
makes of summed compare results (it packs the predicates for a popcount). Add ~4 per entry for the clamp
and the snap, and per pass ~10 block barriers for the reductions. At 8K entries, 16 warps and 8
candidates a pass is ~540 instructions a thread (~2200 issue cycles on one SM) for ~5 passes; at 512
entries the reductions' latency dominates. Hence many candidates for short rows, fewer for long ones
(``_CONFIG_TABLE``). One program per row: rows longer than :data:`MAX_N` (16384 blocks, 256K tokens at
16-token blocks) would not fit in registers (at 16K the kernel already spills ~40 bytes a thread), and
``backend="auto"`` falls back to ``torch.topk`` for them (int ``k``) or to the sort-based reference
(per-row ``k``). Splitting a row over several programs would need a grid-wide exchange per pass (~1 us
through L2), more than a whole pass costs here.

On a CUDA device :func:`topk_select` (the mask plus the block lists, Quest's per-layer call) runs a radix-selection
CUDA kernel instead for rows of :data:`CUDA_FROM_N` or more entries (:mod:`sparsebench.kernels.cuda_topk`: same result
bit for bit, histogram passes instead of per-candidate reduction trees): on the H200 14.2 against 22.5 µs for 8 rows
of 8192 blocks (12.4 µs since its fifteenth-session rewrite), and Quest's selection at 128K context from 1.6 to 0.71 ms
a decode step (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from sparsebench.errors import DependencyError, UsageError
from sparsebench.kernels.topp import interpreter_enabled, triton_usable
from sparsebench.kernels.triton_support import HAVE_TRITON as _HAVE_TRITON
from sparsebench.kernels.triton_support import tl, triton
from sparsebench.selection import Selection

__all__ = [
    "CUDA_FROM_N",
    "MAX_N",
    "Backend",
    "TopKConfig",
    "default_config",
    "pass_bound",
    "topk_mask",
    "topk_mask_reference",
    "topk_mask_torch",
    "topk_mask_triton",
    "topk_select",
]

Backend = Literal["auto", "triton", "torch", "reference"]

#: Longest row the kernel holds in registers (one program per row).
MAX_N = 16384
#: Shortest row for which ``topk_select`` prefers the CUDA radix kernel (``TopKConfig(kernel="auto")``).
CUDA_FROM_N = 1024
#: Input dtypes the kernel loads directly (each converts exactly to float32).
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Safety cap on search passes, far above :func:`pass_bound` for any candidate count.
_MAX_PASSES = 40
#: Launch parameters by padded row length (``num_warps``, ``num_candidates``): at most 32 entries a
#: thread; 16 candidates while a pass is bound by its reductions' latency, 8 once its sweep dominates
#: (module docstring, cost model).
_CONFIG_TABLE = {512: (4, 16), 1024: (4, 16), 2048: (8, 16), 4096: (16, 8), 8192: (16, 8), 16384: (16, 8)}


# ----------------------------------------------------------------------------------------------
# validation


def _check_scores(scores: torch.Tensor) -> None:
    """Reject what no backend can rank, with a one-line fix."""
    if not isinstance(scores, torch.Tensor):
        raise UsageError(f"scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() < 1:
        raise UsageError("scores must have at least one dimension (the entries), got a 0-d tensor")
    if not scores.is_floating_point():
        raise UsageError(f"scores must be a floating-point tensor, got dtype {scores.dtype}; convert with .float()")


def _check_k(k: int | torch.Tensor, scores: torch.Tensor) -> int | torch.Tensor:
    """``k`` as a Python int, or as an integer tensor ``[rows]`` (one per row of ``scores``)."""
    if isinstance(k, torch.Tensor):
        if k.dtype == torch.bool or k.is_floating_point() or k.is_complex():
            raise UsageError(f"a per-row k must be an integer tensor, got dtype {k.dtype}")
        if k.device != scores.device:
            raise UsageError(f"a per-row k must be on the scores' device {scores.device}, got {k.device}")
        lead = tuple(scores.shape[:-1])
        try:
            return k.expand(lead).reshape(-1).contiguous()
        except RuntimeError:
            raise UsageError(f"a per-row k of shape {tuple(k.shape)} does not broadcast to the scores' rows "
                             f"{lead} (scores {tuple(scores.shape)})") from None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise UsageError(f"k must be an int or an integer tensor, got {k!r} ({type(k).__name__})")
    if k < 0:
        raise UsageError(f"k must be >= 0, got {k}")
    return int(k)


def _order_keys(x: torch.Tensor) -> torch.Tensor:
    """Integers whose order is the top-k order of ``x`` (the kernel's keys; int64 for float64 input).

    Same map as the kernel: non-negative floats keep their bits, negative ones flip all but the sign bit,
    ``-0.0`` joins ``+0.0``, NaN goes below ``-inf``.
    """
    if x.dtype == torch.float64:
        bits, itype = x.view(torch.int64), torch.int64
    else:
        bits, itype = x.float().view(torch.int32), torch.int32
    info = torch.iinfo(itype)
    key = torch.where(bits < 0, bits ^ info.max, bits)
    key = torch.where(key == -1, torch.zeros_like(key), key)
    return torch.where(torch.isnan(x), torch.full_like(key, info.min), key)


# ----------------------------------------------------------------------------------------------
# torch paths


def topk_mask_reference(scores: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """The exact definition (module docstring): a stable sort of the order keys, then ranks below ``k``.

    Why a sort and not ``torch.topk``: a stable descending sort ranks tied entries in index order, which
    is the tie rule; ``torch.topk`` picks among ties arbitrarily. Runs on any device without a host
    synchronisation, but costs a full sort: the kernel's test oracle and the per-row-k fallback.
    """
    _check_scores(scores)
    kk = _check_k(k, scores)
    n = scores.shape[-1]
    flat = scores.reshape(math.prod(scores.shape[:-1]), n)
    order = torch.sort(_order_keys(flat), dim=-1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=scores.device).expand_as(order))
    limit = kk[:, None] if isinstance(kk, torch.Tensor) else kk
    return (ranks < limit).reshape(scores.shape)


def topk_mask_torch(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``torch.topk`` indices scattered into a mask: what the policies did before the kernel.

    Kept as the fallback on devices the kernel does not serve (CPU) and as the benchmark's baseline.
    Follows ``torch.topk``, not the module's rules, for ties (unspecified) and NaN (largest).
    """
    _check_scores(scores)
    kk = _check_k(k, scores)
    if isinstance(kk, torch.Tensor):
        raise UsageError("the torch.topk path takes one int k for all rows; use topk_mask for a per-row k")
    n = scores.shape[-1]
    if kk >= n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    idx = scores.topk(kk, dim=-1, sorted=False).indices
    return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device).scatter_(-1, idx, True)


# ----------------------------------------------------------------------------------------------
# Triton kernel

if _HAVE_TRITON:

    def _order_key(x):
        """float32 values -> int32 keys in the same order (see :func:`_order_keys`)."""
        bits = x.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = tl.where(key == -1, 0, key)
        return tl.where(x != x, -2147483648, key)

    def _topk_kernel(
        x_ptr,
        k_ptr,
        out_ptr,
        passes_ptr,
        idx_ptr,
        cnt_ptr,
        n_cols,
        k_all,
        stride_x,
        stride_out,
        BLOCK_N: tl.constexpr,
        NUM_CAND: tl.constexpr,
        PER_ROW_K: tl.constexpr,
        WRITE_PASSES: tl.constexpr,
        MAX_PASSES: tl.constexpr,
        KEEP_LAST: tl.constexpr = False,
        WRITE_INDICES: tl.constexpr = False,
        LAST_IN_BUDGET: tl.constexpr = False,
    ):
        """Write the top-k mask of row ``program_id(0)`` (module docstring, "Kernel algorithm").

        ``k`` is ``k_ptr[row]`` with ``PER_ROW_K``, else ``k_all``; either is clamped to ``[0, n_cols]``.
        ``KEEP_LAST`` adds entry ``n_cols - 1`` (the newest block) to the kept set; ``LAST_IN_BUDGET`` ranks it
        above every other entry instead, so it is one of the ``k`` (every row then keeps exactly ``k``);
        ``WRITE_INDICES`` also
        writes the kept entries' ids in ascending order to ``idx_ptr`` (row-major, ``n_cols`` a row) and
        their number to ``cnt_ptr``: the compaction the decode kernel reads, from the registers already
        holding the mask.
        Scalars ``lo``/``hi`` are keys (int32); bracket widths and candidate offsets are computed in
        uint32, whose wrap-around makes ``hi - lo`` exact for any two int32 keys.
        """
        int_min: tl.constexpr = -2147483648
        int_max: tl.constexpr = 2147483647
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_N)
        valid = offs < n_cols
        x = tl.load(x_ptr + row * stride_x + offs, mask=valid, other=0.0).to(tl.float32)
        key = tl.where(valid, _order_key(x), int_min)
        if LAST_IN_BUDGET:
            key = tl.where(offs == n_cols - 1, int_max, key)
        k = tl.load(k_ptr + row).to(tl.int64) if PER_ROW_K else k_all.to(tl.int64)
        k = tl.minimum(tl.maximum(k, 0), n_cols).to(tl.int32)

        ks = tl.arange(0, NUM_CAND)
        # Pass 0's candidates: entries at evenly strided positions, a sample that brackets rank k.
        sample_pos = (ks * n_cols) // NUM_CAND + n_cols // (2 * NUM_CAND)
        sample = _order_key(tl.load(x_ptr + row * stride_x + sample_pos).to(tl.float32))

        lo = tl.min(tl.where(valid, key, int_max), axis=0)
        hi = tl.max(key, axis=0)
        cnt_lo = n_cols + 0 * k  # #{key >= lo}; int32 like the counts
        cnt_above = 0 * k  # #{key > hi}
        key_u = key.to(tl.uint32, bitcast=True)
        n_pass = 0
        while (lo < hi) & (cnt_lo != k) & (k > 0) & (n_pass < MAX_PASSES):
            lo_u = lo.to(tl.uint32, bitcast=True)
            hi_u = hi.to(tl.uint32, bitcast=True)
            span = hi_u - lo_u
            step = span // (NUM_CAND + 1) + 1
            spread = (lo_u + tl.minimum((ks + 1).to(tl.uint32) * step, span)).to(tl.int32, bitcast=True)
            cand = tl.where(n_pass == 0, sample, spread)
            # Entries clamped into the bracket compare with every candidate (all in [lo, hi]) as they did
            # unclamped. Padding clamps to lo, so it is counted only for a candidate equal to lo, whose
            # count is never used: that candidate is accepted either way and cannot raise lo.
            rel = tl.minimum(tl.maximum(key, lo), hi)
            if span < 0x80000000:
                # rel - c fits in int32: its sign bit counts the entries below c without predicates (a
                # subtract and a shift-add per pair, against about four to pack compare results).
                below = ((rel[None, :] - cand[:, None]).to(tl.uint32, bitcast=True) >> 31).to(tl.int32)
                cnt = BLOCK_N - tl.sum(below, axis=1)
            else:
                cnt = tl.sum((rel[None, :] >= cand[:, None]).to(tl.int32), axis=1)
            # Smallest and largest entry of [lo, hi]: entries outside wrap to offsets above span.
            d_lo = tl.min(key_u - lo_u, axis=0)
            d_hi = tl.min(hi_u - key_u, axis=0)

            accepted = cnt >= k  # c <= t (counts fall as the candidate rises)
            best_lo = tl.max(tl.where(accepted, cand, int_min), axis=0)
            best_cnt = tl.min(tl.where(accepted, cnt, int_max), axis=0)
            first_rej = tl.min(tl.where(accepted, int_max, cand), axis=0)
            rej_cnt = tl.max(tl.where(accepted, -1, cnt), axis=0)
            raise_lo = best_lo > lo
            lower_hi = (first_rej <= hi) & (rej_cnt >= 0)
            new_lo = tl.where(raise_lo, best_lo, lo)
            cnt_lo = tl.where(raise_lo, best_cnt, cnt_lo)
            new_hi = tl.where(lower_hi, first_rej - 1, hi)
            cnt_above = tl.where(lower_hi, rej_cnt, cnt_above)
            # Snap to the entries (the bracket always holds t; the guard keeps a broken invariant harmless).
            snap_lo = (lo_u + d_lo).to(tl.int32, bitcast=True)
            snap_hi = (hi_u - d_hi).to(tl.int32, bitcast=True)
            lo = tl.where(d_lo <= span, tl.maximum(new_lo, snap_lo), new_lo)
            hi = tl.where(d_hi <= span, tl.minimum(new_hi, snap_hi), new_hi)
            n_pass += 1

        if WRITE_PASSES:
            tl.store(passes_ptr + row, n_pass)
        if cnt_lo == k:
            keep = key >= lo
        else:
            # lo == hi == t: keep the first k - cnt_above entries equal to t, in index order.
            tied = (key == lo) & valid
            rank = tl.cumsum(tied.to(tl.int32), axis=0)
            keep = (key > lo) | (tied & (rank <= k - cnt_above))
        keep = keep & valid & (k > 0)
        if KEEP_LAST:
            keep = keep | (offs == n_cols - 1)
        tl.store(out_ptr + row * stride_out + offs, keep.to(tl.uint8), mask=valid)
        if WRITE_INDICES:
            flag = keep.to(tl.int32)
            tl.store(idx_ptr + row * n_cols + tl.cumsum(flag, axis=0) - 1, offs, mask=flag != 0)
            tl.store(cnt_ptr + row, tl.sum(flag, axis=0))

else:  # pragma: no cover
    _topk_kernel = None
    _order_key = None


@functools.cache
def _kernel(interpret: bool) -> Any:
    """The kernel wrapped for the mode triton was imported in (as in :mod:`sparsebench.kernels.topp`).

    Why not ``@triton.jit`` at import: that reads ``TRITON_INTERPRET`` when this module is imported, which
    can disagree with the mode triton itself was imported in. ``k_all`` is not specialised, so a budget
    that changes every step reuses one compiled kernel.
    """
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(_topk_kernel)
    from triton.runtime.jit import JITFunction

    if not isinstance(_order_key, JITFunction):  # the compiler resolves helpers by global name
        globals()["_order_key"] = JITFunction(_order_key)
    return JITFunction(_topk_kernel, do_not_specialize=["k_all"])


@dataclass(frozen=True)
class TopKConfig:
    """Launch parameters; ``None`` takes :func:`default_config`'s value for the row length.

    Why exposed: the best split between candidates per pass and passes depends on the GPU and is found
    by timing (``python -m sparsebench.kernels.topk --out DIR``), not by reasoning alone.
    """

    num_warps: int | None = None
    num_candidates: int | None = None
    """Thresholds counted per pass (a power of two): each pass divides the bracket by about this + 1."""
    kernel: Literal["auto", "triton", "cuda"] = "auto"
    """Which kernel writes :func:`topk_select`'s block lists on a CUDA device: the Triton threshold search, the
    NVRTC radix selection (:mod:`sparsebench.kernels.cuda_topk`; same result), or ``auto``: the CUDA one for rows
    of at least :data:`CUDA_FROM_N` entries where NVRTC is available."""


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def default_config(n_cols: int) -> TopKConfig:
    """Launch parameters for rows of ``n_cols`` entries (``<= MAX_N``): see ``_CONFIG_TABLE``."""
    warps, cand = _CONFIG_TABLE[min(max(_pow2_at_least(n_cols), 512), MAX_N)]
    return TopKConfig(num_warps=warps, num_candidates=cand)


def pass_bound(num_candidates: int) -> int:
    """Most search passes the kernel can take: the sample pass, then key-space passes that each divide a
    32-bit bracket width by at least ``num_candidates + 1``."""
    return 1 + math.ceil(32 / math.log2(num_candidates + 1))


def _resolve(config: TopKConfig | None, n_cols: int) -> tuple[int, int]:
    base = default_config(n_cols)
    warps = config.num_warps if config and config.num_warps is not None else base.num_warps
    cand = config.num_candidates if config and config.num_candidates is not None else base.num_candidates
    for name, v in (("num_warps", warps), ("num_candidates", cand)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1) or v > 32:
            raise UsageError(f"top-k kernel {name} must be a power of two from 1 to 32, got {v!r}")
    return int(warps), int(cand)


def _use_cuda(config: TopKConfig | None, scores: torch.Tensor, n: int) -> bool:
    """Whether :func:`topk_select` runs the CUDA radix kernel (``TopKConfig.kernel``); ``"cuda"`` where it cannot
    run is an error that says why."""
    from sparsebench.kernels.nvrtc import nvrtc_unavailable_reason

    choice = config.kernel if config is not None else "auto"
    if choice not in ("auto", "triton", "cuda"):
        raise UsageError(f"TopKConfig.kernel must be 'auto', 'triton' or 'cuda', got {choice!r}")
    if choice == "triton":
        return False
    why = nvrtc_unavailable_reason() if scores.is_cuda else "the scores are not on a CUDA device"
    if choice == "cuda" and why is not None:
        raise UsageError(f"the CUDA top-k kernel cannot run here: {why}; use TopKConfig(kernel='triton')")
    return why is None and (choice == "cuda" or n >= CUDA_FROM_N)


def _launch(scores: torch.Tensor, k: int | torch.Tensor, *, config: TopKConfig | None,
            passes_out: torch.Tensor | None, keep_last: bool,
            lists: tuple[torch.Tensor, torch.Tensor] | None, last_in_budget: bool = False) -> torch.Tensor:
    """Validate and launch the kernel: the mask ``[rows, N]`` (uint8), plus the lists into ``lists``."""
    if not _HAVE_TRITON:
        raise DependencyError("the Triton top-k kernel needs triton: pip install 'sparsebench[triton]', or use "
                              "backend='torch'")
    _check_scores(scores)
    kk = _check_k(k, scores)
    if scores.dtype not in _KERNEL_DTYPES:
        raise UsageError(f"the Triton top-k kernel takes float32, bfloat16 or float16, got {scores.dtype}; "
                         "use backend='reference'")
    n = scores.shape[-1]
    if n > MAX_N:
        raise UsageError(f"the Triton top-k kernel holds a row in registers, at most {MAX_N} entries, got {n}; "
                         "use backend='auto' (falls back to torch.topk)")
    warps, cand = _resolve(config, n)
    if not triton_usable(scores.device):
        raise UsageError(f"the Triton top-k kernel runs on CUDA tensors (or on CPU tensors when TRITON_INTERPRET=1 "
                         f"was set before triton was imported), got a {scores.device} tensor: use backend='torch'")
    rows = math.prod(scores.shape[:-1])
    if passes_out is not None and (tuple(passes_out.shape) != (rows,) or passes_out.dtype != torch.int32
                                   or passes_out.device != scores.device):
        raise UsageError(f"passes_out must be an int32 tensor of shape ({rows},) on {scores.device}")
    if rows == 0 or n == 0:
        if lists is not None:
            lists[1].zero_()
        return torch.zeros((rows, n), dtype=torch.uint8, device=scores.device)
    out = torch.empty((rows, n), dtype=torch.uint8, device=scores.device)  # the kernel writes every entry
    x = scores.reshape(rows, n)
    if x.stride(-1) != 1:
        x = x.contiguous()
    per_row = isinstance(kk, torch.Tensor)
    if lists is not None and passes_out is None and _use_cuda(config, x, n):
        from sparsebench.kernels.cuda_topk import launch_topk_lists

        launch_topk_lists(x, kk, out, *lists, keep_last=keep_last, last_in_budget=last_in_budget)
        return out
    idx, cnt = lists if lists is not None else (out, out)
    _kernel(interpreter_enabled())[(rows,)](
        x, kk if per_row else out, out, out if passes_out is None else passes_out, idx, cnt,
        n, 0 if per_row else kk, x.stride(0), out.stride(0),
        BLOCK_N=max(_pow2_at_least(n), 16), NUM_CAND=cand, PER_ROW_K=per_row,
        WRITE_PASSES=passes_out is not None, MAX_PASSES=_MAX_PASSES, KEEP_LAST=keep_last,
        WRITE_INDICES=lists is not None, LAST_IN_BUDGET=last_in_budget, num_warps=warps,
    )
    return out


def topk_mask_triton(
    scores: torch.Tensor,
    k: int | torch.Tensor,
    *,
    config: TopKConfig | None = None,
    passes_out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Top-k mask of ``scores`` ``[..., N]`` (``N <= MAX_N``) by the Triton kernel; same result as
    :func:`topk_mask_reference`.

    Runs compiled on CUDA tensors, and under Triton's interpreter on CPU tensors (tests). No host
    synchronisation: CUDA-graph safe for an int ``k`` or a per-row ``k`` tensor updated in place.
    ``passes_out`` (int32, one per row, on the scores' device) receives each row's number of passes.
    """
    out = _launch(scores, k, config=config, passes_out=passes_out, keep_last=False, lists=None)
    return out.view(torch.bool).reshape(scores.shape)


def topk_select(scores: torch.Tensor, k: int | torch.Tensor, *, keep_newest: bool = True,
                newest_in_budget: bool = False, config: TopKConfig | None = None) -> Selection:
    """The top-k blocks of ``scores`` ``[B, Hkv, N]`` as a selection (plus block ``N - 1`` with
    ``keep_newest``), compacted for the Triton decode kernel in the same launch.

    Why: a top-k policy followed by the backend's ``plan()`` used to be three launches (the top-k mask,
    the compaction to block lists, and the newest block's column); this is one. Returns a
    :class:`~sparsebench.kernels.compact.CompactSelection` where the kernel serves the scores (CUDA, or
    the interpreter), else the same set as a plain :class:`~sparsebench.selection.Selection` from
    :func:`topk_mask` (the backend then compacts it). The kept set is :func:`topk_mask_reference`'s
    (lowest index wins a tie) plus the newest block: exactly what a policy's top-k plus the engine's
    "always attend the newest block" select. No host synchronisation.

    ``newest_in_budget``: the newest block is one of the ``k`` (ranked above every other block) instead of an
    extra one, so every row keeps exactly ``min(k, N)`` blocks, which the result states on the host as its
    ``capacity`` (an int ``k >= 1`` only). Why: a backend that plans on the host from list lengths (FlashInfer)
    can then plan once and run inside a CUDA graph; with the newest block added on top, a row keeps ``k`` or
    ``k + 1`` blocks depending on the data.
    """
    from sparsebench.kernels.compact import CompactSelection

    _check_scores(scores)
    if scores.dim() != 3:
        raise UsageError(f"topk_select takes block scores [batch, kv_heads, n_blocks], got {tuple(scores.shape)}")
    if newest_in_budget and (isinstance(k, torch.Tensor) or k < 1):
        raise UsageError(f"topk_select(newest_in_budget=True) needs an int k >= 1 (the newest block is one of the k), "
                         f"got {k!r}")
    n = scores.shape[-1]
    if not (triton_usable(scores.device) and scores.dtype in _KERNEL_DTYPES and 0 < n <= MAX_N):
        if newest_in_budget and n:  # top-(k - 1) of the older blocks, then the newest
            mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
            mask[..., : n - 1] = topk_mask(scores[..., : n - 1], int(k) - 1)
        else:
            mask = topk_mask(scores, k)
        if (keep_newest or newest_in_budget) and n:
            mask[..., n - 1] = True
        return Selection(mask)
    indices = torch.empty(scores.shape, dtype=torch.int32, device=scores.device)
    counts = torch.empty(scores.shape[:2], dtype=torch.int32, device=scores.device)
    out = _launch(scores, k, config=config, passes_out=None, keep_last=keep_newest and not newest_in_budget,
                  lists=(indices, counts), last_in_budget=newest_in_budget)
    return CompactSelection(out.view(torch.bool).reshape(scores.shape), indices=indices, counts=counts,
                            includes_newest=keep_newest or newest_in_budget,
                            capacity=min(int(k), n) if newest_in_budget else None)


# ----------------------------------------------------------------------------------------------
# dispatch


def topk_mask(scores: torch.Tensor, k: int | torch.Tensor, backend: Backend = "auto") -> torch.Tensor:
    """Bool mask ``[..., N]`` keeping the ``k`` largest ``scores`` of every row (``k >= N``: all of them).

    ``backend="auto"``, what policies call: the Triton kernel where :func:`triton_usable` says so (CUDA;
    CPU only under ``TRITON_INTERPRET=1``), the dtype suits it and ``N <= MAX_N``; otherwise
    ``torch.topk`` (:func:`topk_mask_torch`) for an int ``k``, the sort-based reference for a per-row
    ``k``. The kernel and the reference follow the module docstring's tie and NaN rules; the
    ``torch.topk`` fallback agrees with them except on ties and NaN.
    """
    if backend not in ("auto", "triton", "torch", "reference"):
        raise UsageError(f"unknown top-k backend {backend!r}; choose 'auto', 'triton', 'torch' or 'reference'")
    _check_scores(scores)
    kk = _check_k(k, scores)
    n = scores.shape[-1]
    if not isinstance(kk, torch.Tensor) and (kk >= n or kk == 0):  # decided on the host, no launch
        return torch.full(scores.shape, kk > 0, dtype=torch.bool, device=scores.device)
    if backend == "auto":
        kernel_ok = triton_usable(scores.device) and scores.dtype in _KERNEL_DTYPES and n <= MAX_N
        backend = "triton" if kernel_ok else "reference" if isinstance(kk, torch.Tensor) else "torch"
    if backend == "triton":
        return topk_mask_triton(scores, k)
    if backend == "torch":
        return topk_mask_torch(scores, k)  # type: ignore[arg-type]  # a tensor k is refused there
    return topk_mask_reference(scores, k)


# ----------------------------------------------------------------------------------------------
# configuration sweep on a GPU: python -m sparsebench.kernels.topk --out DIR


def _sweep(sizes: Sequence[int], rows: int, keep: float, repeats: int) -> list[dict[str, Any]]:
    """Graph-replay times of every (warps, candidates) pair and of ``torch.topk`` per row length, with
    the kernel's pass counts and a check against the reference on each input."""
    from sparsebench.bench.topp import time_gpu

    def median_us(fn: Callable[[], Any]) -> float:
        return statistics.median(time_gpu(fn, warmup=5, repeats=repeats, flush=None))

    gen = torch.Generator().manual_seed(0)
    results: list[dict[str, Any]] = []
    for n in sizes:
        k = max(1, round(keep * n))
        inputs = {"randn": torch.randn(rows, n, generator=gen).cuda(),
                  "ties": torch.randint(0, 8, (rows, n), generator=gen).float().cuda()}
        for name, x in inputs.items():
            ref = topk_mask_reference(x, k)
            base = median_us(functools.partial(topk_mask_torch, x, k))
            mine = []
            for warps, cand in itertools.product((4, 8, 16, 32), (4, 8, 16, 32)):
                if n > 32 * 32 * warps:  # more than 32 entries a thread: spills
                    continue
                cfg = TopKConfig(warps, cand)
                passes = torch.zeros(rows, dtype=torch.int32, device="cuda")
                ok = bool(torch.equal(topk_mask_triton(x, k, config=cfg, passes_out=passes), ref))
                us = median_us(functools.partial(topk_mask_triton, x, k, config=cfg))
                mine.append(dict(n=n, rows=rows, k=k, input=name, num_warps=warps, num_candidates=cand, us=us,
                                 torch_topk_us=base, matches_reference=ok, passes_max=int(passes.max()),
                                 passes_mean=float(passes.float().mean()), default=cfg == default_config(n)))
            best = min(mine, key=lambda r: r["us"])
            dflt = next(r for r in mine if r["default"])
            print(f"n={n} {name}: torch.topk {base:.1f} us, default {dflt['us']:.1f} us "
                  f"(passes {dflt['passes_mean']:.1f}), best {best['us']:.1f} us at warps={best['num_warps']} "
                  f"candidates={best['num_candidates']}; all match the reference: "
                  f"{all(r['matches_reference'] for r in mine)}", flush=True)
            results += mine
    return results


def _select_rows(sizes: Sequence[int], rows: Sequence[int], keep: float, repeats: int) -> list[dict[str, Any]]:
    """``topk_select`` (mask + block lists, what Quest runs per layer) by the Triton search and by the CUDA radix
    kernel, graph replays with the L2 flushed by reading 256 MB before each, both checked against the reference."""
    from sparsebench.bench.topp import time_gpu

    flush = torch.empty(64 * 2**20, dtype=torch.float32, device="cuda")
    gen = torch.Generator().manual_seed(0)
    results: list[dict[str, Any]] = []
    for n, r in itertools.product(sizes, rows):
        k = max(1, round(keep * n))
        x = torch.randn(1, r, n, generator=gen).cuda()
        ref = topk_mask_reference(x, k)
        ref[..., -1] = True
        row: dict[str, Any] = dict(n=n, rows=r, k=k)
        for kernel in ("triton", "cuda"):
            cfg = TopKConfig(kernel=kernel)  # type: ignore[arg-type]
            row[f"{kernel}_matches_reference"] = bool(torch.equal(topk_select(x, k, config=cfg).mask, ref))
            times = time_gpu(functools.partial(topk_select, x, k, config=cfg), warmup=5, repeats=repeats,
                             flush=flush, flush_by_reading=True)
            row[f"{kernel}_us"] = statistics.median(times)
        print(f"topk_select {r} x {n}: triton {row['triton_us']:.1f} us, cuda {row['cuda_us']:.1f} us; match "
              f"{row['triton_matches_reference']}/{row['cuda_matches_reference']}", flush=True)
        results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sparsebench.kernels.topk",
                                 description="Time the top-k kernel's launch configurations against torch.topk.")
    ap.add_argument("--out", type=Path, required=True, help="directory for topk_sweep.json")
    ap.add_argument("--sizes", default="512,2048,8192,16384", help="row lengths (blocks)")
    ap.add_argument("--rows", type=int, default=8, help="rows (batch x kv heads)")
    ap.add_argument("--keep", type=float, default=0.22, help="k as a fraction of the row")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--select", action="store_true",
                    help="instead of the sweep: topk_select by the Triton and the CUDA kernel (topk_select.json)")
    ap.add_argument("--select-rows", default="8,64", help="row counts for --select")
    args = ap.parse_args(argv)
    if not (_HAVE_TRITON and torch.cuda.is_available()):
        raise SystemExit("the sweep needs a CUDA device and triton")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.select:
        rows = _select_rows([int(v) for v in args.sizes.split(",")], [int(v) for v in args.select_rows.split(",")],
                            args.keep, args.repeats)
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                    flush="read 256 MB before each timed graph replay", cuda_from_n=CUDA_FROM_N)
        (args.out / "topk_select.json").write_text(json.dumps(dict(meta=meta, results=rows), indent=2) + "\n")
        print(f"wrote {args.out / 'topk_select.json'}")
        return 0
    results = _sweep([int(s) for s in args.sizes.split(",")], args.rows, args.keep, args.repeats)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                config_table={str(n): dict(zip(("num_warps", "num_candidates"), v, strict=True))
                              for n, v in _CONFIG_TABLE.items()})
    (args.out / "topk_sweep.json").write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    print(f"wrote {args.out / 'topk_sweep.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
