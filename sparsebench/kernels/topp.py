"""Sorting-free top-p (nucleus) masks over attention mass, as a Triton kernel plus an exact reference.

Why this exists: SpecAttn keeps, per head, the smallest set of KV blocks whose (draft-predicted)
attention mass reaches ``p``. The textbook way sorts every row, which at decode time costs far more
than the attention read it is meant to prune. A set of the form ``{prob >= t}`` needs no sort, only
the right threshold ``t``, and that can be found by searching with passes that each read the row
once and sum the mass above some candidate thresholds.

Semantics (shared by every backend here)
----------------------------------------
For a row ``x`` (non-negative, not necessarily normalised; total ``T = sum(x)``) and ``p`` in (0, 1]:

* ``M(v) = sum(x[x >= v])`` is the mass at or above ``v``; ``t*`` is the largest *entry value* with
  ``M(t*) >= p * T``. The mask is ``x >= t*``.
* Ties: every entry equal to ``t*`` is kept. The mask is therefore the sort-based prefix (sort
  descending, keep the shortest prefix whose cumulative sum reaches ``p * T``) extended by all entries
  tied with its last element. Apart from those tied entries no strictly smaller set reaches ``p``.
* ``p == 1`` keeps exactly the positive entries; zeros are never kept (they add no mass); a row whose
  total is 0 keeps nothing (the empty set already holds ``p`` of nothing). ``-0.0`` counts as zero.

Exactness and the mass guarantee. The kernel sums masses in float64 (each float32 entry converted
exactly) and accepts a candidate threshold only if its mass clears ``p * T`` by a margin ``delta``
that bounds that rounding: no entry passes through more than ``depth = tiles + BLOCK_N + chunks + 8``
float64 additions (per tile, within the tile, across chunks) in any summation order, so
``delta = 2 depth 2**-53`` (about 1e-12 at N = 128K) plus 2**-50 absolute on p. Hence
``kept mass >= p * T`` holds in exact arithmetic, not just in floating point, and the mask equals the
float64 sort-based reference's except in a "near-tie": when the reference's set reaches ``p * T`` by
less than ``delta * T``, the kernel also keeps the next lower distinct value(s) whose mass fits in that
margin. (An earlier float32 version needed a margin of ~1e-5 at N = 128K, larger than one entry, and
missed the reference on most rows there.) Float32 inputs are compared exactly; bf16/fp16 inputs are
converted exactly. The computed masses are monotone in the threshold and a deterministic function of
the set of entries above it, which the bracket argument below relies on.

Kernel algorithm
----------------
A row is split into ``chunks`` (one per program; by default 1 up to 8K entries, then as many as the SMs
allow, down to 4K) of ``tiles`` tiles of ``BLOCK_N`` entries. A one-tile chunk is loaded once into
registers ("resident") and every pass runs on them; longer chunks are re-read from memory (L2, after the
first pass) every pass, one tile ahead of the arithmetic. The programs of a split row meet once a pass
in global memory: each writes its partial sums, announces them on the row's arrival counter and waits
until all have (so all of a row's programs must be resident at once: ``rows * chunks <= SMs``), then
every program combines the same partials in the same order and takes the same decision. The last to
finish re-arms the counters.

1. Pass 0 reads the row once for ``T`` and ``max``. Then ``t*`` lies in ``[lo, hi]`` with
   ``hi = max`` and ``lo = (1 - p) * T / (2N)`` (every entry below ``lo`` together holds less than
   ``(1 - p) * T``, so ``M(lo) >= p * T`` without computing it).
2. The search works on the int32 bit pattern of the float32 values, which orders non-negative floats
   exactly like their values (including subnormals), so the search is over a finite integer range
   and every comparison is an exact integer compare, immune to flush-to-zero. Each pass places
   ``NUM_CAND`` increasing candidate thresholds about evenly in ``(lo, hi]`` and computes, in one sweep
   of the row, the mass ``M(c)`` of each; the first rejected candidate ``c_j`` and the accepted one
   before it bracket ``t*``. The bracket then snaps to actual entry values, one of two ways
   (``tighten``): "candidates" finds in the same sweep the smallest entry ``>= c`` and the largest
   ``< c`` of every candidate (``lo = min{x >= c_{j-1}}``, ``hi = max{x < c_j}``); "bracket" finds only
   the smallest and largest entry inside the bracket the pass started from and intersects (cheaper by
   two compares a candidate, usually one pass more). Both are valid because ``M`` only changes at
   entry values: ``M(min{x >= lo}) = M(lo)`` is accepted and ``M(max{x <= hi} + 1) = M(hi + 1)`` is not.
3. The search stops when ``lo == hi``: one value is left, and it is ``t*``. Each pass divides
   ``hi - lo`` by about ``NUM_CAND + 1``, so at most ``ceil(31 / log2(NUM_CAND + 1)) + 1`` passes;
   snapping ends it much earlier, once the bracket holds a single distinct value (about 4-6 passes
   with 8 candidates at N = 1K-64K). A last sweep writes ``x >= lo``; ``lo`` is always an accepted
   threshold (or the a-priori valid lower end), so the kept mass reaches p even if the pass cap were hit.

Cost model (from the sm_90 machine code; the benchmark's ``--configs all`` measures it): a sweep costs
about 3 instructions per entry and candidate (compare, one-word select, float64 FMA), and its end a
block reduction of the candidates' float64 masses (~0.2-0.3 us) or, split, a round trip through L2
(~1 us). Short rows are bound by the reductions (few passes wanted: 8-16 candidates), long rows by the
sweeps (fewer candidates, more SMs per row). :func:`default_config` encodes that; the bench's sweep
picks the measured best.

Why not the paper's fixed 10 bisection steps on values: after 10 steps the threshold is only known to
about 1/1024 of the max, so the set is neither guaranteed minimal nor exact, and a value-space
bisection cannot tell when it is done. The bit-pattern search is exact and has a hard pass bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import numpy as np
import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.triton_support import HAVE_TRITON as _HAVE_TRITON
from sparsebench.kernels.triton_support import interpreter_enabled, jit_helpers, tl

__all__ = [
    "Backend",
    "TopPConfig",
    "compile_topp_kernel",
    "cuda_unusable_reason",
    "default_config",
    "interpreter_enabled",
    "resolve_config",
    "split_timeouts",
    "topp_mask",
    "topp_mask_cuda",
    "topp_mask_nd",
    "topp_mask_torch",
    "topp_mask_triton",
    "triton_usable",
]

Backend = Literal["auto", "cuda", "triton", "torch"]

#: Input dtypes the kernel loads directly (each converts exactly to float32).
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Cap on search passes: far above the bound ceil(31 / log2(NUM_CAND + 1)) + 1, only a safety net.
_MAX_PASSES = 64


# ----------------------------------------------------------------------------------------------
# validation


def _check_p(p: float) -> float:
    """Return ``p`` as a float, or raise ``UsageError`` if it is not a number in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise UsageError(f"top-p threshold p must be a number in (0, 1], got {p!r} ({type(p).__name__})")
    pf = float(p)
    if not (0.0 < pf <= 1.0):  # also rejects NaN
        raise UsageError(f"top-p threshold p must be in (0, 1], got {pf!r}; e.g. p=0.9 keeps 90% of the mass")
    return pf


def _check_probs(probs: torch.Tensor, *, rank2: bool, check_values: bool) -> None:
    """Reject input the kernels would silently mis-handle, with a message saying how to fix it."""
    if not isinstance(probs, torch.Tensor):
        raise UsageError(f"probs must be a torch.Tensor, got {type(probs).__name__}")
    if rank2 and probs.dim() != 2:
        raise UsageError(
            f"probs must be 2-D [rows, entries], got shape {tuple(probs.shape)}; "
            "use topp_mask_nd for a leading batch shape [..., entries]"
        )
    if not rank2 and probs.dim() < 1:
        raise UsageError("probs must have at least one dimension (the entries), got a 0-d tensor")
    if not probs.is_floating_point():
        raise UsageError(f"probs must be a floating-point tensor, got dtype {probs.dtype}; convert with .float()")
    if not check_values or probs.numel() == 0:
        return
    # One host sync for all four checks: this runs in decode loops.
    flags = torch.stack(
        [
            torch.isnan(probs).any(),
            (probs < 0).any(),
            torch.isinf(probs).any(),
            ~torch.isfinite(probs.float().sum(-1)).all(),
        ]
    ).tolist()
    if flags[0]:
        raise UsageError("probs contains NaN; check the attention scores that produced it")
    if flags[1]:
        raise UsageError("probs contains negative values; top-p needs non-negative mass (e.g. softmax output)")
    if flags[2]:
        raise UsageError("probs contains inf; pass finite non-negative mass (e.g. softmax output)")
    if flags[3]:
        raise UsageError("a row of probs sums to inf in float32; rescale the rows (e.g. divide by their max)")


# ----------------------------------------------------------------------------------------------
# exact sort-based reference


def topp_mask_torch(probs: torch.Tensor, p: float, *, check: bool = True) -> torch.Tensor:
    """Exact sort-based top-p mask of ``probs`` [R, N] (see the module docstring for the semantics).

    Why it exists: it is the definition the kernel is tested against, and the fallback on devices
    Triton does not serve. Sums are done in float64 so that the reference itself has no near-ties
    to speak of at the sizes it is used for.
    """
    pf = _check_p(p)
    _check_probs(probs, rank2=True, check_values=check)
    if probs.numel() == 0:
        return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    x = probs.to(torch.float64)
    positive = x > 0
    if pf >= 1.0:
        return positive
    total = x.sum(-1, keepdim=True)
    sorted_desc, _ = torch.sort(x, dim=-1, descending=True)
    cum = sorted_desc.cumsum(-1)
    # Index of the first prefix reaching p*T = number of prefixes that fall short (cum is monotone).
    k = (cum < pf * total).sum(-1, keepdim=True)
    # Rounding can leave even the full positive prefix a hair short: then keep all positives.
    n_pos = positive.sum(-1, keepdim=True)
    k = torch.minimum(k, (n_pos - 1).clamp(min=0))
    thr = sorted_desc.gather(-1, k)
    return (x >= thr) & positive & (total > 0)


# ----------------------------------------------------------------------------------------------
# Triton kernel

if _HAVE_TRITON:

    def _publish(ws_slot, chunk, m, mn, mx, ks, NUM_CAND: tl.constexpr):
        """Store one chunk's partials (masses, then min and max bit patterns as exact float64)."""
        base = ws_slot + chunk * (3 * NUM_CAND) + ks
        tl.store(base, m)
        tl.store(base + NUM_CAND, mn.to(tl.float64))
        tl.store(base + 2 * NUM_CAND, mx.to(tl.float64))

    def _gather(ws_slot, cnt_ptr, goal, ks, CHUNKS: tl.constexpr, NUM_CAND: tl.constexpr, SYNC: tl.constexpr,
                SPIN_LIMIT: tl.constexpr):
        """Combine every chunk's partials of one pass: sum the masses, min the mins, max the maxes.

        With ``SYNC`` the chunks are other programs: each announces its partials by a release increment
        of the row's arrival counter and waits until all ``CHUNKS`` have arrived ``goal / CHUNKS`` times.
        Every program then reads the same values and combines them in the same order, so all of them
        take bit-identical decisions and run the same number of passes. ``.cg`` loads read L2, never a
        stale L1 line of the previous use of the slot. A program that has polled ``SPIN_LIMIT`` times
        (its partners cannot all be resident, or a bug) stops waiting and counts a timeout in the row's
        third counter, so that a broken launch ends, with a wrong mask, instead of hanging the GPU.
        """
        tl.debug_barrier()  # every thread's partial stores precede the release below (or the reads)
        if SYNC:
            tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
            arrived = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
            polls = 0
            while (arrived < goal) & (polls < SPIN_LIMIT):
                arrived = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
                polls += 1
            if arrived < goal:
                tl.atomic_add(cnt_ptr + 2, 1, sem="relaxed", scope="gpu")
        offs = ws_slot + tl.arange(0, CHUNKS)[:, None] * (3 * NUM_CAND) + ks[None, :]
        m = tl.sum(tl.load(offs, cache_modifier=".cg"), axis=0)
        mn = tl.min(tl.load(offs + NUM_CAND, cache_modifier=".cg"), axis=0).to(tl.int32)
        mx = tl.max(tl.load(offs + 2 * NUM_CAND, cache_modifier=".cg"), axis=0).to(tl.int32)
        return m, mn, mx

    def _pass_stats(xb, xf, cand, lo, hi, ks, TIGHTEN: tl.constexpr):
        """One tile's share of a search pass, as three [NUM_CAND] vectors.

        Masses ``M(c)`` of the tile's entries at or above each candidate; with ``TIGHTEN == 1`` the
        smallest entry at or above and the largest below each candidate, else (in slot 0) the smallest
        and largest entry inside the bracket ``[lo, hi]``. Candidates lie on the first axis, so each
        thread holds all of them for its own entries and the row is not replicated across lanes;
        ``x * (0 or 1) + acc`` is exact and compiles to a one-word select and an FMA, cheaper than a
        64-bit select and an add.
        """
        ge = xb[None, :] >= cand[:, None]
        m = tl.sum(xf[None, :] * ge.to(tl.float64), axis=1)
        if TIGHTEN == 1:
            mn = tl.min(tl.where(ge, xb[None, :], 2147483647), axis=1)
            mx = tl.max(tl.where(ge, -1, xb[None, :]), axis=1)
        else:
            # min{x >= lo} and max{x <= hi} as unsigned minima of x - lo and hi - x (entries on the
            # wrong side wrap to huge values): two instructions an entry each, no compare or select.
            # (The int32 subtractions wrap by design; bit patterns are >= 0 and at most 0x7F7FFFFF.)
            span = (hi - lo).to(tl.uint32)
            d_lo = tl.min((xb - lo).to(tl.uint32, bitcast=True), axis=0)
            d_hi = tl.min((hi - xb).to(tl.uint32, bitcast=True), axis=0)
            mn_s = tl.where(d_lo <= span, lo + tl.minimum(d_lo, span).to(tl.int32), 2147483647)
            mx_s = tl.where(d_hi <= span, hi - tl.minimum(d_hi, span).to(tl.int32), -1)
            mn = tl.where(ks == 0, mn_s, 2147483647)
            mx = tl.where(ks == 0, mx_s, -1)
        return m, mn, mx

    def _search_start(total, hi, n_cols, p_hi, p_lo, lb_scale, keep_positive):
        """The search's first bracket ``[lo, hi]`` (bit patterns) and its acceptance level, from pass 0.

        ``total`` is the row's float64 mass, ``hi`` its max's bit pattern, ``n_cols`` its length (any
        upper bound on the number of entries keeps ``lo`` valid). Entries below ``(1-p) T / (2N)`` hold
        less than ``(1-p) T``, so ``M(lo) >= p T`` without computing it. ``p == 1`` (``keep_positive``)
        brackets every positive entry; an all-zero row gets ``lo = hi = INT32_MAX``, which keeps nothing.
        Returns ``lo``, ``hi`` and ``target = p (1 + delta) T`` (float64).
        """
        lb = (total * lb_scale / n_cols).to(tl.float32)
        lo = tl.maximum(lb.to(tl.int32, bitcast=True), 1)  # 1 = smallest subnormal: "x > 0"
        lo = tl.minimum(lo, hi)
        lo = tl.where(keep_positive != 0, 1, lo)
        hi = tl.where(keep_positive != 0, 1, hi)
        lo = tl.where(total > 0.0, lo, 2147483647)
        hi = tl.where(total > 0.0, hi, 2147483647)
        return lo, hi, total * p_hi + total * p_lo

    def _candidates(lo, hi, ks, NUM_CAND: tl.constexpr):
        """``NUM_CAND`` increasing candidate thresholds in ``(lo, hi]``, about ``(hi - lo) / (NUM_CAND + 1)``
        apart."""
        step = (hi - lo) // (NUM_CAND + 1) + 1
        return tl.minimum(lo + (ks + 1) * step, hi)

    def _narrow(m, mn, mx, cand, lo, hi, target, ks, NUM_CAND: tl.constexpr, TIGHTEN: tl.constexpr):
        """The bracket after one pass, from the row's combined pass statistics (:func:`_pass_stats`).

        The first rejected candidate (``NUM_CAND`` if all were accepted) and its accepted predecessor
        bracket ``t*``; the bracket then snaps to entries (module docstring, step 2). Every program of a
        split row calls this on the same combined values, so all take the same decision.
        """
        j = tl.min(tl.where(m >= target, NUM_CAND, ks), axis=0)
        if TIGHTEN == 1:
            # Snap to entries: smallest entry >= the accepted candidate, largest < the rejected one.
            lo_new = tl.max(tl.where(ks == j - 1, mn, -1), axis=0)
            hi_new = tl.max(tl.where(ks == j, mx, -1), axis=0)
        else:
            lo_new = tl.max(tl.where(ks == j - 1, cand, -1), axis=0)
            hi_new = tl.max(tl.where(ks == j, cand - 1, -1), axis=0)
        lo = tl.where(j > 0, lo_new, lo)
        hi = tl.where(j < NUM_CAND, hi_new, hi)
        if TIGHTEN == 2:
            # Snap to the smallest and largest entry of the bracket this pass started from.
            # (The bracket always holds an entry; the guard only keeps a broken invariant harmless.)
            b_lo = tl.min(mn, axis=0)
            b_hi = tl.max(mx, axis=0)
            lo = tl.where(b_lo <= b_hi, tl.maximum(lo, b_lo), lo)
            hi = tl.where(b_lo <= b_hi, tl.minimum(hi, b_hi), hi)
        return lo, hi

    def _topp_kernel(
        x_ptr,
        out_ptr,
        ws_ptr,
        sync_ptr,
        passes_ptr,
        n_cols,
        tiles,
        stride_x,
        stride_out,
        p_hi,
        p_lo,
        lb_scale,
        keep_positive,
        BLOCK_N: tl.constexpr,
        NUM_CAND: tl.constexpr,
        TIGHTEN: tl.constexpr,
        RESIDENT: tl.constexpr,
        KEEP_F64: tl.constexpr,
        CHUNKS: tl.constexpr,
        OWN_CHUNKS: tl.constexpr,
        MAX_PASSES: tl.constexpr,
        WRITE_PASSES: tl.constexpr,
        SPIN_LIMIT: tl.constexpr,
    ):
        """Write ``x >= t*`` for chunk ``program_id(1)`` of row ``program_id(0)`` (module docstring).

        A row is ``CHUNKS`` chunks of ``tiles * BLOCK_N`` entries. A program computes ``OWN_CHUNKS`` of
        them: one (``CHUNKS`` programs per row meet in :func:`_gather`), or all (one program per row,
        which emulates the split serially; used under the interpreter, which runs programs one at a
        time). ``RESIDENT`` (one tile a chunk) keeps the chunk in registers, so it is read once in all;
        ``KEEP_F64`` also keeps its float64 copy (else it is re-converted each pass, saving registers).
        Streamed chunks are re-read every pass, one tile ahead of the arithmetic so that the next
        tile's load overlaps this one's work. ``p_hi + p_lo`` (two float32, summed in float64) is the
        acceptance level ``p * (1 + delta)``; ``lb_scale`` is ``(1 - p) / 2`` rounded down;
        ``keep_positive`` is 1 for ``p == 1``.
        """
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        out_row = out_ptr + row * stride_out
        first = tl.program_id(1) * OWN_CHUNKS  # index of this program's first chunk
        offs0 = tl.arange(0, BLOCK_N)
        ks = tl.arange(0, NUM_CAND)
        int_max: tl.constexpr = 2147483647
        SYNC: tl.constexpr = CHUNKS > OWN_CHUNKS
        SLOT: tl.constexpr = CHUNKS * 3 * NUM_CAND  # float64 values per exchange slot
        ws_row = ws_ptr + row * (2 * SLOT)
        cnt_ptr = sync_ptr + row * 3  # arrivals, finished programs, timeouts

        # Pass 0: total mass (float64) and the max's bit pattern.
        if RESIDENT:
            offs_r = first * BLOCK_N + offs0
            xr = tl.load(x_row + offs_r, mask=offs_r < n_cols, other=0.0).to(tl.float32)
            xr_bits = xr.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # -0.0 -> +0.0: bit patterns >= 0
            if KEEP_F64:
                xr64 = xr.to(tl.float64)
            m = tl.where(ks == 0, tl.sum(xr.to(tl.float64), axis=0), 0.0)
            mx = tl.where(ks == 0, tl.max(xr_bits, axis=0), -1)
            if CHUNKS > 1:
                _publish(ws_row, first, m, mx, mx, ks, NUM_CAND)
        else:
            for c in tl.static_range(OWN_CHUNKS):
                base = (first + c) * tiles * BLOCK_N
                end = base + tiles * BLOCK_N  # this chunk's end: the prefetch after its last tile loads nothing
                nxt = tl.load(x_row + base + offs0, mask=base + offs0 < n_cols, other=0.0)
                tot_acc = tl.zeros([BLOCK_N], tl.float64)
                max_acc = tl.full([BLOCK_N], -1, tl.int32)
                for t in range(0, tiles):
                    cur = nxt.to(tl.float32)
                    offs_n = base + (t + 1) * BLOCK_N + offs0
                    nxt = tl.load(x_row + offs_n, mask=(offs_n < n_cols) & (offs_n < end), other=0.0)
                    tot_acc += cur.to(tl.float64)
                    max_acc = tl.maximum(max_acc, cur.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
                m = tl.where(ks == 0, tl.sum(tot_acc, axis=0), 0.0)
                mx = tl.where(ks == 0, tl.max(max_acc, axis=0), -1)
                if CHUNKS > 1:
                    _publish(ws_row, first + c, m, mx, mx, ks, NUM_CAND)
        if CHUNKS > 1:
            m, mn, mx = _gather(ws_row, cnt_ptr, CHUNKS, ks, CHUNKS, NUM_CAND, SYNC, SPIN_LIMIT)
        total = tl.sum(m, axis=0)
        hi = tl.max(mx, axis=0)

        lo, hi, target = _search_start(total, hi, n_cols, p_hi, p_lo, lb_scale, keep_positive)

        phase = 0
        n_pass = 0
        while (lo < hi) & (n_pass < MAX_PASSES):
            phase += 1
            cand = _candidates(lo, hi, ks, NUM_CAND)
            ws_slot = ws_row + (phase % 2) * SLOT
            if RESIDENT:
                # Without KEEP_F64, re-convert each pass. hi >> 31 is 0 in fact (hi >= 0), but the
                # compiler cannot know it, so it does not hoist a float64 copy of the whole chunk out
                # of the loop into registers it does not have.
                xf = xr64 if KEEP_F64 else (xr_bits + (hi >> 31)).to(tl.float32, bitcast=True).to(tl.float64)
                m, mn, mx = _pass_stats(xr_bits, xf, cand, lo, hi, ks, TIGHTEN)
                if CHUNKS > 1:
                    _publish(ws_slot, first, m, mn, mx, ks, NUM_CAND)
            else:
                for c in tl.static_range(OWN_CHUNKS):
                    base = (first + c) * tiles * BLOCK_N
                    end = base + tiles * BLOCK_N
                    nxt = tl.load(x_row + base + offs0, mask=base + offs0 < n_cols, other=0.0)
                    m = tl.zeros([NUM_CAND], tl.float64)
                    mn = tl.full([NUM_CAND], int_max, tl.int32)
                    mx = tl.full([NUM_CAND], -1, tl.int32)
                    for t in range(0, tiles):
                        cur = nxt.to(tl.float32)
                        offs_n = base + (t + 1) * BLOCK_N + offs0
                        nxt = tl.load(x_row + offs_n, mask=(offs_n < n_cols) & (offs_n < end), other=0.0)
                        cur_bits = cur.to(tl.int32, bitcast=True) & 0x7FFFFFFF
                        m_t, mn_t, mx_t = _pass_stats(cur_bits, cur.to(tl.float64), cand, lo, hi, ks, TIGHTEN)
                        m += m_t
                        mn = tl.minimum(mn, mn_t)
                        mx = tl.maximum(mx, mx_t)
                    if CHUNKS > 1:
                        _publish(ws_slot, first + c, m, mn, mx, ks, NUM_CAND)
            if CHUNKS > 1:
                m, mn, mx = _gather(ws_slot, cnt_ptr, CHUNKS * (phase + 1), ks, CHUNKS, NUM_CAND, SYNC,
                                    SPIN_LIMIT)
            lo, hi = _narrow(m, mn, mx, cand, lo, hi, target, ks, NUM_CAND, TIGHTEN)
            n_pass += 1
        if WRITE_PASSES:  # noqa: SIM102 - a constexpr test, then a runtime one (Triton has no `and` of both)
            if tl.program_id(1) == 0:
                tl.store(passes_ptr + row, n_pass)
        if SYNC:
            # The last program past its last wait re-arms the row's counters for the next launch.
            done = tl.atomic_add(cnt_ptr + 1, 1, sem="acq_rel", scope="gpu")
            if done == CHUNKS - 1:
                tl.atomic_xchg(cnt_ptr, 0, sem="relaxed", scope="gpu")
                tl.atomic_xchg(cnt_ptr + 1, 0, sem="relaxed", scope="gpu")

        # lo is an accepted threshold (or the a-priori valid lower end), so the kept mass reaches p.
        if RESIDENT:
            tl.store(out_row + offs_r, (xr_bits >= lo).to(tl.uint8), mask=offs_r < n_cols)
        else:
            for c in tl.static_range(OWN_CHUNKS):
                base = (first + c) * tiles * BLOCK_N
                end = base + tiles * BLOCK_N  # this chunk's end: the prefetch after its last tile loads nothing
                nxt = tl.load(x_row + base + offs0, mask=base + offs0 < n_cols, other=0.0)
                for t in range(0, tiles):
                    cur_bits = nxt.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF
                    offs = base + t * BLOCK_N + offs0
                    offs_n = offs + BLOCK_N
                    nxt = tl.load(x_row + offs_n, mask=(offs_n < n_cols) & (offs_n < end), other=0.0)
                    tl.store(out_row + offs, (cur_bits >= lo).to(tl.uint8), mask=offs < n_cols)

else:  # pragma: no cover
    _topp_kernel = None
    _publish = None
    _gather = None
    _pass_stats = None
    _search_start = None
    _candidates = None
    _narrow = None


_KERNEL_CACHE: dict[str, Any] = {}
#: The search's device functions, shared with :mod:`sparsebench.kernels.verify_select` (which runs the same
#: search on rows it builds in registers): pass statistics, first bracket, candidates, narrowing.
SEARCH_HELPERS = ("_pass_stats", "_search_start", "_candidates", "_narrow")


def _kernel() -> Callable[..., Any]:
    """The kernel, wrapped for the mode Triton was imported in.

    Why not ``@triton.jit`` at module level: that reads the environment when this module is imported,
    which can disagree with the mode Triton itself was imported in (the interpreter then fails on
    compiled library functions); wrapping explicitly, lazily, follows the library's mode. The kernel's
    helpers are module globals that the compiler looks up by name, so in compiled mode they are
    replaced by their JIT wrappers; the interpreter calls them as plain Python.
    """
    if "kernel" not in _KERNEL_CACHE:
        if interpreter_enabled():
            from triton.runtime.interpreter import InterpretedFunction

            _KERNEL_CACHE["kernel"] = InterpretedFunction(_topp_kernel)
        else:
            from triton.runtime.jit import JITFunction

            jit_helpers(globals(), (*SEARCH_HELPERS, "_publish", "_gather"))
            _KERNEL_CACHE["kernel"] = JITFunction(_topp_kernel)
    return _KERNEL_CACHE["kernel"]


def triton_usable(device: torch.device | str) -> bool:
    """Whether the Triton kernel can run on ``device`` (``backend="auto"`` takes it where the CUDA kernels
    cannot run; the fused selection kernels built on its search helpers ask this too).

    CUDA tensors need only Triton; CPU tensors need Triton imported in interpreter mode
    (``TRITON_INTERPRET=1`` set before the first ``import triton``), which is a correctness tool at
    roughly milliseconds per row, so auto never picks it unless asked for that way.
    """
    dev = torch.device(device)
    if not _HAVE_TRITON:
        return False
    if dev.type == "cuda":
        return True
    return dev.type == "cpu" and interpreter_enabled()


def _f32_up(v: float) -> float:
    """``v`` rounded up to a float32, so that a float32 kernel argument is never below ``v``."""
    f = np.float32(v)
    if float(f) < v:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _f32_down(v: float) -> float:
    """``v`` rounded down to a float32, so that a float32 kernel argument is never above ``v``."""
    f = np.float32(v)
    if float(f) > v:
        f = np.nextafter(f, np.float32(-np.inf))
    return float(f)


def _acceptance_level(p: float, depth: int) -> tuple[float, float]:
    """``p * (1 + delta)`` as two float32 whose float64 sum is never below it.

    Why: Triton passes Python floats as float32, whose rounding (6e-8) would swamp the float64
    sums' error bound. ``depth`` bounds the number of float64 additions any one entry passes through
    on its way into M(c) or T (per lane one add a tile, then a reduction over the tile's lanes, then
    one over the chunks), so a = depth * 2**-53 bounds their relative error whatever the summation
    order, and M_c >= p (1 + delta) T_c implies M >= p T in exact arithmetic when delta >= 2a + O(a^2).
    """
    a = depth * 2.0**-53
    level = p * (1.0 + 2.0 * a + 16 * 2.0**-53) + 2.0**-50  # 2**-50 covers the hi/lo split below
    hi = float(np.float32(level))
    lo = _f32_up(level - hi)  # level - hi is exact in float64 (Sterbenz)
    return hi, lo


#: Largest chunk a configuration may hold in registers (16 warps, 32 entries a thread, no float64 copy).
RESIDENT_MAX = 16384
#: Largest chunk the default holds in registers: 16 entries a thread at 16 warps, float64 copy included,
#: which the sm_90 compiler fits without spilling; longer default chunks are streamed.
DEFAULT_RESIDENT_MAX = 8192
#: Tile of a streamed chunk by default (16 entries a thread at 16 warps).
STREAM_BLOCK = 8192
#: Warps and candidates a pass for a resident chunk of each tile size, from reasoning (see default_config);
#: :mod:`sparsebench.kernels.verify_select` sizes its own (different) kernel's rows with it.
_RESIDENT_TABLE = {1024: (4, 8), 2048: (4, 8), 4096: (8, 4), 8192: (16, 2)}
#: The top-p kernel's defaults, from ``bench topp --configs all`` on the H200 (2026-11-29, 32 rows, 20 calls a
#: replay, warm L2): an unsplit row of 1K entries on one warp (reductions by shuffles only, no shared-memory
#: barrier; 8.6 against 10.3 µs), 4K and 8K on 8 warps with 2 candidates (12.5 / 18.4 against 13.6 / 19.0 µs).
_UNSPLIT_TABLE = {1024: (1, 4), 2048: (4, 8), 4096: (8, 2), 8192: (8, 2)}
#: Split rows exchange partial sums once a pass, so fewer passes pay more: 4K chunks take 4 candidates
#: (16K entries as 4 x 4K: 30.3 against 38.7 µs as 2 x 8K), 8K chunks 8 warps (32K: 40.4 against 43.8 µs).
_SPLIT_TABLE = {1024: (4, 8), 2048: (4, 8), 4096: (8, 4), 8192: (8, 2)}
#: Chunk length a split aims for (as many programs as the SMs allow, down to chunks of this length).
SPLIT_CHUNK = 4096
_TIGHTEN_CODES = {"candidates": 1, "bracket": 2}
Tighten = Literal["candidates", "bracket"]


@dataclass(frozen=True)
class TopPConfig:
    """Launch parameters of the top-p kernel; ``None`` fields take :func:`default_config`'s value.

    Why exposed: the best split, candidate count and warp count on a given GPU are found by timing
    (``sparsebench bench topp --configs all``), not by reasoning alone.
    """

    chunks: int | None = None
    """Programs per row. Above 1 they meet in global memory once a pass (a grid-wide barrier per row),
    so ``rows * chunks`` must not exceed the number of SMs (all must be resident at once)."""
    block_n: int | None = None
    """Entries per tile (power of two). A chunk of one tile stays in registers (read once); longer
    chunks are streamed from memory (L2) every pass."""
    num_candidates: int | None = None
    """Thresholds tried per pass (power of two): each pass divides the bracket by about this + 1."""
    num_warps: int | None = None
    tighten: Tighten | None = None
    """How the bracket snaps to actual entries: "candidates" (every candidate's nearest entries, in the
    same pass; more work a pass) or "bracket" (the current bracket's extreme entries; cheaper, and
    usually one pass more)."""
    keep_f64: bool | None = None
    """Keep a float64 copy of a register-resident chunk (else re-convert it every pass)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (132, an H100/H200 SXM, for a device that is no GPU)."""
    if device.type == "cuda":
        return _cuda_sm_count(torch.cuda.current_device() if device.index is None else device.index)
    return 132


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def _pow2_at_least(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def default_config(n_cols: int, rows: int = 32, sm_count: int = 132, *, chunks: int | None = None) -> TopPConfig:
    """Configuration used for ``rows`` rows of ``n_cols`` entries on a GPU of ``sm_count`` SMs.

    Reasoning from the sm_90 machine code, then corrected by ``bench topp --configs all`` on the H200
    (the tables above): a pass costs about 3 instructions per entry and candidate plus 4 per entry for
    the bracket snap, and ends with a reduction; it divides the bracket by about ``num_candidates + 1``,
    and the snap ends the search once one distinct value is left. Short rows are bound by the
    reductions: at 1K entries one warp (shuffles only) beats four (a shared-memory barrier per pass); up
    to 2K, 4 warps with 8 candidates. Longer rows are work-bound: 8 warps with 2 candidates at 4K-8K.
    Rows longer than 8K are split over programs so that more SMs work (``rows * chunks <= sm_count``),
    down to chunks of 4K held in registers; chunks longer than 8K (too many rows for the SMs) are
    streamed in 8K tiles. ``chunks`` fixes the split and derives the rest for that chunk length.
    """
    n = max(int(n_cols), 1)
    if chunks is None:
        max_chunks = max(1, sm_count // max(int(rows), 1))
        chunks = 1
        if n > DEFAULT_RESIDENT_MAX and max_chunks > 1:
            chunks = min(1 << (max_chunks.bit_length() - 1), _pow2_at_least(-(-n // SPLIT_CHUNK)))
    chunk_len = -(-n // chunks)
    if chunk_len > DEFAULT_RESIDENT_MAX:
        return TopPConfig(chunks=chunks, block_n=STREAM_BLOCK, num_candidates=2, num_warps=16, tighten="bracket",
                          keep_f64=False)
    block = _pow2_at_least(max(chunk_len, 16))
    warps, cand = (_SPLIT_TABLE if chunks > 1 else _UNSPLIT_TABLE)[max(block, 1024)]
    per_thread = block // (32 * warps)
    keep = per_thread <= 8 or (per_thread <= 16 and chunks == 1)  # split programs need a few more registers
    return TopPConfig(chunks=chunks, block_n=block, num_candidates=cand, num_warps=warps, tighten="bracket",
                      keep_f64=keep)


def resolve_config(cfg: TopPConfig | None, n_cols: int, rows: int, device: torch.device) -> TopPConfig:
    """``cfg`` with its unset fields from :func:`default_config` (for its ``chunks``, if set), checked.

    Raises ``UsageError`` (one line) for a field that is not a power of two, an unknown ``tighten``, or
    a split whose programs could not all be resident at once on ``device``.
    """
    return _resolve(cfg, int(n_cols), int(rows), device.type, _sm_count(device))


@functools.lru_cache(maxsize=1024)
def _resolve(cfg: TopPConfig | None, n_cols: int, rows: int, device_type: str, sms: int) -> TopPConfig:
    """:func:`resolve_config`, memoised: decode loops call it every step with the same few shapes."""
    given = cfg.as_dict() if cfg is not None else {}
    chunks = given.get("chunks")
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1
                               or chunks & (chunks - 1)):
        raise UsageError(f"top-p kernel chunks must be a power of two, got {chunks!r}")
    base = default_config(n_cols, rows, sms, chunks=chunks)
    merged = {k: (given.get(k) if given.get(k) is not None else v) for k, v in base.as_dict().items()}
    for name in ("block_n", "num_candidates", "num_warps"):
        v = merged[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
            raise UsageError(f"top-p kernel {name} must be a power of two, got {v!r}")
    if merged["tighten"] not in _TIGHTEN_CODES:
        raise UsageError(f"top-p kernel tighten must be one of {sorted(_TIGHTEN_CODES)}, got {merged['tighten']!r}")
    if merged["chunks"] > 1 and device_type == "cuda" and rows * merged["chunks"] > sms:
        raise UsageError(f"top-p kernel: rows * chunks = {rows} * {merged['chunks']} exceeds the {sms} SMs; "
                         "the chunks of a row wait for each other, so all must run at once: use fewer chunks")
    return TopPConfig(**merged)


#: Off the GPU (the interpreter runs a grid's programs one after another) a split row is computed by
#: one program serially. Tests that run the interpreter's programs concurrently turn this off to
#: exercise the cross-program exchange itself.
_SERIAL_OFF_GPU = True
#: Polls of the row's arrival counter after which a waiting program gives up (~0.5-1 us a poll on an
#: H200, so ~50 ms, thousands of times any legitimate wait): see _gather.
_SPIN_LIMIT = 1 << 16

_SYNC_CACHE: dict[tuple[str, int | None], torch.Tensor] = {}


def _device_key(device: torch.device) -> tuple[str, int | None]:
    if device.type == "cuda" and device.index is None:
        return ("cuda", torch.cuda.current_device())
    return (device.type, device.index)


def _sync_counters(device: torch.device, rows: int) -> torch.Tensor:
    """Per-row arrival/finish counters of the split kernel, zero between launches.

    Why cached and not allocated per call: a fresh zeroed buffer costs a memset launch every call; the
    kernel leaves the counters at zero when it ends (the last program of a row re-arms them), so one
    buffer per device serves every launch. Launches on one stream run one after another; do not run
    the split kernel concurrently on two streams of one device.
    """
    key = _device_key(device)
    buf = _SYNC_CACHE.get(key)
    if buf is None or buf.numel() < 3 * rows:
        buf = torch.zeros(3 * max(rows, 256), dtype=torch.int32, device=device)
        _SYNC_CACHE[key] = buf
    return buf


def split_timeouts(device: torch.device | str = "cuda") -> int:
    """Waits abandoned by split programs on ``device`` since the process started (0 when all is well).

    A nonzero count means some launch's programs could not all run at once (e.g. another process
    shares the SMs) or a bug; that launch's masks are wrong. The benchmark reports it per configuration.
    """
    buf = _SYNC_CACHE.get(_device_key(torch.device(device)))
    return 0 if buf is None else int(buf.view(-1, 3)[:, 2].sum())


def topp_mask_triton(
    probs: torch.Tensor,
    p: float,
    *,
    check: bool = True,
    config: TopPConfig | None = None,
    passes_out: torch.Tensor | None = None,
    **knobs: Any,
) -> torch.Tensor:
    """Top-p keep-mask of ``probs`` [R, N] with the sorting-free Triton kernel.

    Runs compiled on CUDA tensors and under Triton's interpreter on CPU tensors (where a split row is
    computed by one program serially, since the interpreter runs programs one after another).
    ``check=False`` skips the value checks (NaN, negatives, inf), which cost a host sync; do that only
    on trusted input. ``config`` (or its fields as keyword arguments: ``chunks``, ``block_n``,
    ``num_candidates``, ``num_warps``, ``tighten``, ``keep_f64``) tunes the launch; unset fields take
    :func:`default_config`'s values. ``passes_out``, an int32 tensor [R] on the same device, receives
    each row's number of search passes, for benchmarks and tests of the pass bound.
    """
    if not _HAVE_TRITON:
        raise UsageError("topp_mask_triton needs triton; install it (pip install 'sparsebench[triton]') "
                         "or use backend='torch'")
    unknown = set(knobs) - {f.name for f in fields(TopPConfig)}
    if unknown:
        raise UsageError(f"unknown top-p kernel option(s) {sorted(unknown)}; "
                         f"known: {[f.name for f in fields(TopPConfig)]}")
    if knobs:
        config = replace(config or TopPConfig(), **knobs)
    pf = _check_p(p)
    _check_probs(probs, rank2=True, check_values=check)
    if probs.dtype not in _KERNEL_DTYPES:
        raise UsageError(f"the Triton top-p kernel takes float32, bfloat16 or float16, got {probs.dtype}; "
                         "convert with .float() or use backend='torch'")
    rows, n_cols = probs.shape
    if n_cols >= 2**31 - 2**20:
        raise UsageError(f"rows of {n_cols} entries are too long for the kernel (limit 2**31 - 2**20)")
    cfg = resolve_config(config, n_cols, rows, probs.device)
    if passes_out is not None and (
        tuple(passes_out.shape) != (rows,) or passes_out.dtype != torch.int32 or passes_out.device != probs.device
    ):
        raise UsageError(f"passes_out must be an int32 tensor of shape ({rows},) on {probs.device}")
    if not triton_usable(probs.device):
        raise UsageError(
            f"the Triton top-p kernel runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was "
            f"set before triton was first imported; got a {probs.device} tensor: use backend='torch'"
        )
    if rows == 0 or n_cols == 0:
        return torch.zeros(probs.shape, dtype=torch.bool, device=probs.device)
    return _launch(probs, pf, cfg, passes_out, compile_only=False)


def compile_topp_kernel(probs: torch.Tensor, p: float, *, config: TopPConfig | None = None,
                        passes_out: torch.Tensor | None = None, **knobs: Any) -> None:
    """Compile the kernel variant that ``topp_mask_triton`` would run on these arguments, without running it.

    Why: a Triton compile takes seconds, and the variant depends on the shape (tile, split) and the
    configuration; a decode loop or a benchmark can compile its variants up front (the benchmark
    does so in parallel processes, which must not run split kernels side by side: their programs
    could not all be resident at once). A no-op under the interpreter, which compiles nothing.
    """
    if interpreter_enabled():
        return
    unknown = set(knobs) - {f.name for f in fields(TopPConfig)}
    if unknown:
        raise UsageError(f"unknown top-p kernel option(s) {sorted(unknown)}")
    if knobs:
        config = replace(config or TopPConfig(), **knobs)
    _check_probs(probs, rank2=True, check_values=False)
    rows, n_cols = probs.shape
    if rows and n_cols:
        _launch(probs, _check_p(p), resolve_config(config, n_cols, rows, probs.device), passes_out, compile_only=True)


def _launch(probs: torch.Tensor, pf: float, cfg: TopPConfig, passes_out: torch.Tensor | None, *,
            compile_only: bool) -> torch.Tensor:
    """Launch (or only compile) the kernel on validated arguments; the uint8 mask viewed as bool."""
    rows, n_cols = probs.shape
    x = probs if probs.stride(-1) == 1 else probs.contiguous()
    out = torch.empty((rows, n_cols), dtype=torch.uint8, device=probs.device)
    chunks, block, cand = int(cfg.chunks), int(cfg.block_n), int(cfg.num_candidates)
    tiles = -(-n_cols // (chunks * block))
    serial = chunks > 1 and probs.device.type != "cuda" and _SERIAL_OFF_GPU
    own = chunks if serial else 1
    resident = tiles == 1 and own == 1
    if chunks > 1:
        ws = torch.empty(rows * 2 * chunks * 3 * cand, dtype=torch.float64, device=probs.device)
        sync = _sync_counters(probs.device, rows) if not serial else out
    else:
        ws, sync = out, out  # unused
    p_hi, p_lo = _acceptance_level(pf, tiles + block + chunks + 8)
    args = (x, out, ws, sync, out if passes_out is None else passes_out,
            n_cols, tiles, x.stride(0), out.stride(0), p_hi, p_lo, _f32_down((1.0 - pf) / 2.0), int(pf >= 1.0))
    meta = dict(BLOCK_N=block, NUM_CAND=cand, TIGHTEN=_TIGHTEN_CODES[cfg.tighten], RESIDENT=resident,
                KEEP_F64=bool(cfg.keep_f64) and resident, CHUNKS=chunks, OWN_CHUNKS=own, MAX_PASSES=_MAX_PASSES,
                WRITE_PASSES=passes_out is not None, SPIN_LIMIT=_SPIN_LIMIT if probs.device.type == "cuda" else 2**30,
                num_warps=int(cfg.num_warps))
    grid = (rows, chunks // own)
    if compile_only:
        _kernel().warmup(*args, grid=grid, **meta)
    else:
        _kernel()[grid](*args, **meta)
    return out.view(torch.bool)


# ----------------------------------------------------------------------------------------------
# dispatch


def cuda_unusable_reason(probs: torch.Tensor) -> str | None:
    """Why :func:`topp_mask_cuda` cannot take ``probs`` (device, NVRTC, dtype, row length), or None."""
    from sparsebench.kernels import cuda_topp
    from sparsebench.kernels.nvrtc import nvrtc_unavailable_reason

    if not (isinstance(probs, torch.Tensor) and probs.is_cuda):
        return "the probabilities are not on a CUDA device"
    why = nvrtc_unavailable_reason()
    if why is not None:
        return why
    if probs.dtype not in _KERNEL_DTYPES:
        return f"dtype {probs.dtype} (the CUDA kernel takes float32, bfloat16 or float16)"
    longest = cuda_topp.max_row(cuda_topp.clusters_supported(probs.device))
    if probs.shape[-1] > longest:
        return (f"rows of {probs.shape[-1]} entries (the CUDA kernel holds at most {longest} in registers on this "
                "GPU)")
    return None


def topp_mask_cuda(probs: torch.Tensor, p: float, *, check: bool = True,
                   passes_out: torch.Tensor | None = None) -> torch.Tensor:
    """Top-p keep-mask of ``probs`` [R, N] (CUDA; ``N <= 32768``, or ``262144`` on GPUs with thread-block clusters)
    by the short-row CUDA kernel for rows of up to 4K entries (:mod:`sparsebench.kernels.cuda_topp_short`), the
    radix-selection CUDA kernel (:mod:`sparsebench.kernels.cuda_topp`), or for rows over 8K entries that fit it the
    grid kernel (:mod:`sparsebench.kernels.cuda_topp_grid`): the semantics above with a near-tie margin of about
    ``2e-15 T`` (the short-row kernel's: under ``1e-11 T`` at 4K entries; the grid kernel's: under ``5e-10 T`` at
    128K entries).
    ``passes_out`` (int32 [R], on the device) receives each row's histogram passes (the grid kernel: its 3 levels).
    No host synchronisation with ``check=False``; the grid kernel's CTAs wait for each other, so do not run it on
    two streams of one device at once."""
    pf = _check_p(p)
    _check_probs(probs, rank2=True, check_values=check)
    why = cuda_unusable_reason(probs)
    if why is not None:
        raise UsageError(f"the CUDA top-p kernel cannot run here: {why}; use backend='triton' or 'torch'")
    return _cuda_mask(probs, pf, passes_out)


def _cuda_mask(probs: torch.Tensor, pf: float, passes_out: torch.Tensor | None) -> torch.Tensor:
    """The CUDA kernel's mask of validated ``probs`` that :func:`cuda_unusable_reason` accepts (checked once by
    the caller: ``topp_mask``'s "auto" runs on every policy step)."""
    from sparsebench.kernels.cuda_topp import launch_topp

    rows, n_cols = probs.shape
    out = torch.empty((rows, n_cols), dtype=torch.uint8, device=probs.device)
    if passes_out is not None and (tuple(passes_out.shape) != (rows,) or passes_out.dtype != torch.int32
                                   or passes_out.device != probs.device):
        raise UsageError(f"passes_out must be an int32 tensor of shape ({rows},) on {probs.device}")
    if rows and n_cols:
        launch_topp(probs if probs.stride(-1) == 1 else probs.contiguous(), pf, out, passes_out)
    return out.view(torch.bool)


def topp_mask(probs: torch.Tensor, p: float, backend: Backend = "auto", *, check: bool = True) -> torch.Tensor:
    """Top-p keep-mask of ``probs`` [R, N]: per row the smallest set ``{x >= t}`` holding ``p`` of the mass.

    ``backend="auto"`` uses the CUDA kernels (:func:`topp_mask_cuda`) where :func:`cuda_unusable_reason` finds
    nothing against them: on the H200 they are faster than the Triton kernel at every length from 1K to 128K entries
    (``benchmarks/RESULTS.md``, tenth, eleventh, eighteenth and twenty-third sessions). Elsewhere ``auto`` uses the
    Triton kernel where :func:`triton_usable` says so and the dtype suits it (e.g. a GPU without NVRTC), else the
    exact torch reference. All follow the semantics in the module docstring; the CUDA kernels' near-tie margins are
    the smallest.
    """
    if backend not in ("auto", "cuda", "triton", "torch"):
        raise UsageError(f"unknown top-p backend {backend!r}; choose 'auto', 'cuda', 'triton' or 'torch'")
    if backend == "auto":
        if isinstance(probs, torch.Tensor) and probs.is_cuda and cuda_unusable_reason(probs) is None:
            pf = _check_p(p)
            _check_probs(probs, rank2=True, check_values=check)
            return _cuda_mask(probs, pf, None)
        if isinstance(probs, torch.Tensor) and triton_usable(probs.device) and probs.dtype in _KERNEL_DTYPES:
            backend = "triton"
        else:
            backend = "torch"
    if backend == "cuda":
        return topp_mask_cuda(probs, p, check=check)
    if backend == "triton":
        return topp_mask_triton(probs, p, check=check)
    return topp_mask_torch(probs, p, check=check)


def topp_mask_nd(probs: torch.Tensor, p: float, backend: Backend = "auto", *, check: bool = True) -> torch.Tensor:
    """:func:`topp_mask` over the last dimension of ``probs`` [..., N] (e.g. [batch, heads, blocks]).

    Why a separate entry point: the 2-D function rejects other ranks so that a transposed or
    mis-shaped score tensor is caught; this one states that a leading batch shape is intended.
    """
    _check_probs(probs, rank2=False, check_values=False)
    if probs.dim() == 2:
        return topp_mask(probs, p, backend, check=check)
    lead, n_cols = tuple(probs.shape[:-1]), probs.shape[-1]
    flat = probs.reshape(math.prod(lead), n_cols)
    return topp_mask(flat, p, backend, check=check).reshape(*lead, n_cols)
