"""SpecAttn's selection for a speculative verification in one Triton launch per layer: group the draft's heads,
top-p per (row, kv head), causal row limits, the newest block, and the union's block lists for the decode kernel.

Why this exists: the verification of ``R = gamma + 1`` drafted tokens selects, in every sparse layer, per query row
and kv head the smallest block set holding a fraction ``p`` of the draft's attention mass. Done step by step
(slice the mass, zero it past each row's blocks, the group mean, the top-p kernel, the row limits, the newest
block, a transpose, then the backend's union and compaction) it is about ten launches of a few µs each; at 30
sparse layers that measured 1.4 ms (32K) to 2.5 ms (128K) a round on an H200, more than the sparse attention saved.
Here one program per (kv head, row) builds its row in registers and runs :mod:`sparsebench.kernels.topp`'s exact
search on it (the same device functions, not a copy), and the last program of each kv head to finish writes the
union's ascending block list and count, so the backend's ``plan()`` launches nothing.

Semantics (:func:`verify_select_reference` defines them; the speculator's unfused path computes the same)
-----------------------------------------------------------------------------------------------------------
Inputs: the draft mass ``mass`` ``[R, H, N]`` of the verified rows (float32, bfloat16 or float16, last dim
contiguous), per row the number of blocks its query sees, ``row_blocks`` ``[R]`` (row ``r`` attends blocks
``< row_blocks[r]``, causal), and the blocks its mass covers, ``mass_blocks`` ``[R]`` (a reused last row's mass
covers one block less; default ``row_blocks``). For row ``r`` and kv head ``h``:

1. ``x = heads_to_kv_groups(mass[r] zeroed at blocks >= mass_blocks[r], Hkv, head_reduce)[h]``: with ``H`` a
   multiple of ``Hkv`` the ``G = H / Hkv`` heads of kv head ``h``, otherwise all ``H`` heads, reduced by
   ``"mean"`` or ``"max"`` in float32.
2. ``keep = topp(x, p)`` (the exact top-p of :mod:`sparsebench.kernels.topp`), plus the first ``sink_blocks``
   blocks; then ``keep & (block < row_blocks[r])`` and block ``row_blocks[r] - 1`` (the row's newest) forced.
3. Output: the bitmap ``[1, Hkv, R, N]`` and, per kv head, the ascending list of blocks any row keeps and its
   length (:class:`~sparsebench.kernels.compact.CompactSelection`'s union lists).

Exactness. The group mean adds the ``G`` heads left to right in float32 and then scales by ``1/G`` (a float32
product): bit for bit torch's ``mean`` over the group for ``G`` in 1, 2, 4 on CPU (checked: it sums in that order
and divides by ``G``, the same for a power of two) and, by our reading of its reduction kernel, on CUDA (up to 4
values a thread in that order, then times a float32 ``1/G``); ``benchmarks/device/verify_select.sh`` compares
the two pipelines' bitmaps on the GPU. For other ``G`` the mean can differ from torch's in the last bit (CPU
divides by ``G``, e.g. ``G = 3``; for ``G = 8`` CPU and CUDA add in other orders), which changes a selection only
where blocks' masses tie to the last bit at the threshold. ``"max"`` is exact. The top-p search is
:mod:`sparsebench.kernels.topp`'s, with its float64 sums and acceptance margin (sized here for this kernel's one or
two register tiles), so the kept set equals the sort-based reference's except in a "near-tie" (the reference's
set reaches ``p`` by less than about ``1e-12`` of the row's mass: then the kernel may also keep the next lower
value(s)), exactly as for :func:`~sparsebench.kernels.topp.topp_mask_triton`.
``p == 1`` keeps every positive block (top-p semantics); the speculator never calls this at ``p == 1``, where
SpecAttn selects every block.

Kernel layout
-------------
Grid ``(Hkv, R, S)``, one program per (kv head, row, mass slot; :func:`verify_select_slots` selects for every
draft layer the layer map uses in one launch), no host synchronisation (CUDA-graph capturable; the row
limits are device tensors). The row lives in registers: one tile of ``pow2(N)`` blocks up to 8192, else a
main tile of 8192 and a tail tile of ``pow2(N - 8192)`` (128K tokens at 16-token blocks is 8193 blocks: a tail
of 16, not a second tile of 8192), hence :data:`MAX_N` = 16384 blocks. The search passes run on both tiles and
combine their statistics before :func:`~sparsebench.kernels.topp._narrow` decides. The union: every program
stores its row, then draws a ticket from its kv head's counter (block barrier, acquire-release atomic at GPU
scope); the program drawing the last ticket reads the head's ``R`` rows from L2, ORs them and compacts them
(``tl.cumsum``), then resets the counter to zero, so the next launch or graph replay needs no memset. No
program ever waits for another, so the launch is safe whatever the number of programs resident at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.compact import CompactSelection
from sparsebench.kernels.topp import (
    _MAX_PASSES,
    _RESIDENT_TABLE,
    _TIGHTEN_CODES,
    SEARCH_HELPERS,
    _acceptance_level,
    _check_p,
    _f32_down,
    _pow2_at_least,
    interpreter_enabled,
    jit_helpers,
    triton_usable,
)
from sparsebench.kernels.triton_support import HAVE_TRITON as _HAVE_TRITON
from sparsebench.kernels.triton_support import tl
from sparsebench.selection import Selection

if _HAVE_TRITON:  # the top-p search steps, shared with this kernel
    from sparsebench.kernels.topp import _candidates, _narrow, _pass_stats, _search_start

__all__ = ["MAX_N", "VerifySelectConfig", "default_config", "fused_select_usable",
           "verify_select", "verify_select_reference", "verify_select_slots"]

#: Most blocks a row may have: a main register tile of 8192 plus a tail of at most 8192 (256K tokens at 16).
MAX_N = 16384
#: The main tile's largest size; longer rows add a tail tile.
MAIN_TILE = 8192
#: Mass dtypes the kernel loads (each converts exactly to float32, as the reference's ``.float()``).
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: The kernel's device functions besides topp's search helpers (wrapped together in compiled mode).
_HELPERS = ("_group_reduce", "_store_row", "_union_lists")


@dataclass(frozen=True)
class VerifySelectConfig:
    """Launch parameters; ``None`` fields take :func:`default_config`'s values (benchmarks may sweep them)."""

    num_warps: int | None = None
    num_candidates: int | None = None
    """Thresholds a search pass tries (a power of two): each pass divides the bracket by about this + 1."""


def _tiles(n_blocks: int) -> tuple[int, int]:
    """(main tile, tail tile) sizes for a row of ``n_blocks`` (tail 0: one tile)."""
    if n_blocks <= MAIN_TILE:
        return max(16, _pow2_at_least(n_blocks)), 0
    return MAIN_TILE, max(16, _pow2_at_least(n_blocks - MAIN_TILE))


def default_config(n_blocks: int) -> VerifySelectConfig:
    """Warps and candidates of the top-p kernel's register-resident rows of the main tile's size (the same
    reasoning: reductions dominate short rows, so many candidates; sweeps dominate long ones)."""
    main, _ = _tiles(n_blocks)
    warps, cand = _RESIDENT_TABLE[max(main, 1024)]
    return VerifySelectConfig(num_warps=warps, num_candidates=cand)


def _resolve(config: VerifySelectConfig | None, n_blocks: int) -> tuple[int, int]:
    base = default_config(n_blocks)
    warps = (config.num_warps if config else None) or base.num_warps
    cand = (config.num_candidates if config else None) or base.num_candidates
    for name, v in (("num_warps", warps), ("num_candidates", cand)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
            raise UsageError(f"verify_select {name} must be a power of two, got {v!r}")
    assert warps is not None and cand is not None
    return warps, cand


# ----------------------------------------------------------------------------------------------
# reference


def verify_select_reference(mass: torch.Tensor, row_blocks: torch.Tensor, p: float, *, num_kv_heads: int,
                            mass_blocks: torch.Tensor | None = None, head_reduce: str = "mean",
                            sink_blocks: int = 0) -> Selection:
    """The selection the kernel computes (module docstring, "Semantics"), step by step in torch: the test
    oracle, and the fallback where the kernel cannot run (no host synchronisation either)."""
    from sparsebench.kernels.topp import topp_mask_torch
    from sparsebench.policies.specattn import heads_to_kv_groups

    _check_args(mass, row_blocks, mass_blocks, num_kv_heads, head_reduce, sink_blocks)
    rows, _, n = mass.shape
    blocks = torch.arange(n, device=mass.device).view(1, 1, n)
    limit = row_blocks.view(rows, 1, 1)
    mass_limit = limit if mass_blocks is None else mass_blocks.view(rows, 1, 1)
    x = mass.float().masked_fill(blocks >= mass_limit, 0.0)
    grouped = heads_to_kv_groups(x, num_kv_heads, head_reduce)  # [R, Hkv, N]
    keep = topp_mask_torch(grouped.reshape(-1, n), p, check=False).view(rows, num_kv_heads, n)
    if sink_blocks:
        keep = keep | (blocks < sink_blocks)
    keep = (keep & (blocks < limit)) | (blocks == limit - 1)
    return Selection(keep.transpose(0, 1).unsqueeze(0))


def _check_args(mass: torch.Tensor, row_blocks: torch.Tensor, mass_blocks: torch.Tensor | None, num_kv_heads: int,
                head_reduce: str, sink_blocks: int) -> None:
    """One-line errors for what neither path can take (shapes, dtypes, devices; no value checks: no sync)."""
    from sparsebench.policies.specattn import HEAD_REDUCTIONS
    if not isinstance(mass, torch.Tensor) or mass.dim() != 3 or not mass.is_floating_point():
        raise UsageError("verify_select takes the draft mass as a floating-point tensor [rows, heads, n_blocks]")
    rows, heads, _ = mass.shape
    if isinstance(num_kv_heads, bool) or not isinstance(num_kv_heads, int) or num_kv_heads < 1:
        raise UsageError(f"num_kv_heads must be a positive int, got {num_kv_heads!r}")
    if head_reduce not in HEAD_REDUCTIONS:
        raise UsageError(f"head_reduce must be one of {', '.join(HEAD_REDUCTIONS)}, got {head_reduce!r}")
    if isinstance(sink_blocks, bool) or not isinstance(sink_blocks, int) or sink_blocks < 0:
        raise UsageError(f"sink_blocks must be an int >= 0, got {sink_blocks!r}")
    if heads < 1:
        raise UsageError("verify_select needs the mass of at least one head")
    for name, t in (("row_blocks", row_blocks), ("mass_blocks", mass_blocks)):
        if t is None:
            continue
        if (not isinstance(t, torch.Tensor) or t.is_floating_point() or t.dtype == torch.bool
                or tuple(t.shape) != (rows,) or t.device != mass.device):
            raise UsageError(f"{name} must be an integer tensor of shape ({rows},) on {mass.device}")


# ----------------------------------------------------------------------------------------------
# kernel

if _HAVE_TRITON:

    def _group_reduce(base, offs, limit, head_stride, stride_n, inv_g, G: tl.constexpr, SCALE: tl.constexpr,
                      REDUCE_MAX: tl.constexpr):
        """The kv head's mass at blocks ``offs``: its ``G`` heads (``head_stride`` apart) reduced in float32 left to
        right (mean: summed, then times ``inv_g`` if ``SCALE``), zero at blocks ``>= limit``."""
        ok = offs < limit
        acc = tl.load(base + offs * stride_n, mask=ok, other=0.0).to(tl.float32)
        for g in tl.static_range(1, G):
            x = tl.load(base + g * head_stride + offs * stride_n, mask=ok, other=0.0).to(tl.float32)
            acc = tl.maximum(acc, x) if REDUCE_MAX else acc + x
        if SCALE:
            acc = acc * inv_g
        return acc

    def _store_row(out_row, offs, bits, lo, row_lim, sink_blocks, n_cols):
        """The row's keep flags at ``offs``: top-p (``bits >= lo``) or a sink block, within the row's causal limit,
        plus the row's newest block."""
        keep = ((bits >= lo) | (offs < sink_blocks)) & (offs < row_lim)
        keep = keep | (offs == row_lim - 1)
        tl.store(out_row + offs, keep.to(tl.uint8), mask=offs < n_cols)

    def _union_lists(rows_ptr, stride_or, n_rows, n_cols, idx_ptr, cnt_ptr, CHUNK: tl.constexpr):
        """OR the ``n_rows`` stored rows at ``rows_ptr`` and write the union's ascending block ids and count.

        ``.cg`` loads read L2: the other rows were stored by other programs during this launch.
        """
        offs = tl.arange(0, CHUNK)
        total = tl.zeros([], dtype=tl.int32)
        for start in range(0, n_cols, CHUNK):
            j = start + offs
            ok = j < n_cols
            u = tl.zeros([CHUNK], dtype=tl.int32)
            for rr in range(0, n_rows):
                u = u | tl.load(rows_ptr + rr * stride_or + j, mask=ok, other=0, cache_modifier=".cg").to(tl.int32)
            pos = total + tl.cumsum(u, axis=0) - 1
            tl.store(idx_ptr + pos, j, mask=u != 0)
            total += tl.sum(u, axis=0)
        tl.store(cnt_ptr, total)

    def _verify_select_kernel(
        mass_ptr,
        row_blocks_ptr,
        mass_blocks_ptr,
        out_ptr,
        idx_ptr,
        cnt_ptr,
        ticket_ptr,
        n_cols,
        n_rows,
        stride_mr,
        stride_ms,
        stride_mh,
        stride_mn,
        head_step,
        stride_os,
        stride_oh,
        stride_or,
        inv_g,
        p_hi,
        p_lo,
        lb_scale,
        keep_positive,
        sink_blocks,
        G: tl.constexpr,
        SCALE: tl.constexpr,
        REDUCE_MAX: tl.constexpr,
        BLOCK_N: tl.constexpr,
        TAIL: tl.constexpr,
        NUM_CAND: tl.constexpr,
        TIGHTEN: tl.constexpr,
        KEEP_F64: tl.constexpr,
        MAX_PASSES: tl.constexpr,
    ):
        """Row ``program_id(1)``'s selection for kv head ``program_id(0)`` from mass slot ``program_id(2)``
        (module docstring); the (slot, head)'s last program to finish also writes the union's lists.

        ``head_step`` is the stride from one kv head's first draft head to the next's (0: every kv head reduces
        all heads); ``p_hi + p_lo``, ``lb_scale`` and ``keep_positive`` are the top-p kernel's acceptance level,
        lower-end scale and ``p == 1`` flag.
        """
        h = tl.program_id(0)
        r = tl.program_id(1)
        s = tl.program_id(2)
        sh = s * tl.num_programs(0) + h  # this (slot, kv head)'s union list, count and ticket
        ks = tl.arange(0, NUM_CAND)
        mass_lim = tl.minimum(tl.load(mass_blocks_ptr + r).to(tl.int32), n_cols)
        row_lim = tl.minimum(tl.load(row_blocks_ptr + r).to(tl.int32), n_cols)
        base = mass_ptr + r.to(tl.int64) * stride_mr + s.to(tl.int64) * stride_ms + h.to(tl.int64) * head_step

        # Pass 0: the row in registers, its float64 total and its max's bit pattern.
        offs = tl.arange(0, BLOCK_N)
        x = _group_reduce(base, offs, mass_lim, stride_mh, stride_mn, inv_g, G, SCALE, REDUCE_MAX)
        bits = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF  # -0.0 -> +0.0: bit patterns >= 0
        if KEEP_F64:
            x64 = x.to(tl.float64)
        total = tl.sum(x.to(tl.float64), axis=0)
        hi = tl.max(bits, axis=0)
        if TAIL > 0:
            offs_t = BLOCK_N + tl.arange(0, TAIL)
            x_t = _group_reduce(base, offs_t, mass_lim, stride_mh, stride_mn, inv_g, G, SCALE, REDUCE_MAX)
            bits_t = x_t.to(tl.int32, bitcast=True) & 0x7FFFFFFF
            total += tl.sum(x_t.to(tl.float64), axis=0)
            hi = tl.maximum(hi, tl.max(bits_t, axis=0))
        lo, hi, target = _search_start(total, hi, n_cols, p_hi, p_lo, lb_scale, keep_positive)

        n_pass = 0
        while (lo < hi) & (n_pass < MAX_PASSES):
            cand = _candidates(lo, hi, ks, NUM_CAND)
            # As in the top-p kernel: hi >> 31 is 0 but keeps the compiler from hoisting a float64 copy.
            xf = x64 if KEEP_F64 else (bits + (hi >> 31)).to(tl.float32, bitcast=True).to(tl.float64)
            m, mn, mx = _pass_stats(bits, xf, cand, lo, hi, ks, TIGHTEN)
            if TAIL > 0:
                xf_t = (bits_t + (hi >> 31)).to(tl.float32, bitcast=True).to(tl.float64)
                m_t, mn_t, mx_t = _pass_stats(bits_t, xf_t, cand, lo, hi, ks, TIGHTEN)
                m += m_t
                mn = tl.minimum(mn, mn_t)
                mx = tl.maximum(mx, mx_t)
            lo, hi = _narrow(m, mn, mx, cand, lo, hi, target, ks, NUM_CAND, TIGHTEN)
            n_pass += 1

        head_rows = out_ptr + s.to(tl.int64) * stride_os + h.to(tl.int64) * stride_oh
        out_row = head_rows + r.to(tl.int64) * stride_or
        _store_row(out_row, offs, bits, lo, row_lim, sink_blocks, n_cols)
        if TAIL > 0:
            _store_row(out_row, offs_t, bits_t, lo, row_lim, sink_blocks, n_cols)

        # The union: the last of the head's programs to store its row compacts all of them, then re-arms.
        tl.debug_barrier()
        ticket = tl.atomic_add(ticket_ptr + sh, 1, sem="acq_rel", scope="gpu")
        if ticket == n_rows - 1:
            _union_lists(head_rows, stride_or, n_rows, n_cols, idx_ptr + sh.to(tl.int64) * n_cols, cnt_ptr + sh,
                         BLOCK_N)
            tl.store(ticket_ptr + sh, 0)

else:  # pragma: no cover
    _verify_select_kernel = _group_reduce = _store_row = _union_lists = None


_KERNEL_CACHE: dict[bool, Any] = {}


def _kernel() -> Any:
    """The kernel wrapped for the mode Triton was imported in (see :func:`sparsebench.kernels.topp._kernel`)."""
    interpreted = interpreter_enabled()
    if interpreted not in _KERNEL_CACHE:
        if interpreted:
            from triton.runtime.interpreter import InterpretedFunction

            _KERNEL_CACHE[interpreted] = InterpretedFunction(_verify_select_kernel)
        else:
            from triton.runtime.jit import JITFunction

            jit_helpers(globals(), SEARCH_HELPERS + _HELPERS)
            _KERNEL_CACHE[interpreted] = JITFunction(_verify_select_kernel)
    return _KERNEL_CACHE[interpreted]


# ----------------------------------------------------------------------------------------------
# entry points


def fused_select_usable(mass: torch.Tensor) -> bool:
    """Whether :func:`verify_select` runs the kernel on ``mass`` (else it computes the reference in torch)."""
    return (_HAVE_TRITON and triton_usable(mass.device) and mass.dtype in _KERNEL_DTYPES
            and 0 < mass.shape[-1] <= MAX_N and mass.stride(-1) == 1)


def verify_select(mass: torch.Tensor, row_blocks: torch.Tensor, p: float, *, num_kv_heads: int,
                  mass_blocks: torch.Tensor | None = None, head_reduce: str = "mean", sink_blocks: int = 0,
                  config: VerifySelectConfig | None = None) -> Selection:
    """The verification's per-row selection ``[1, Hkv, R, N]`` from the rows' draft mass ``mass`` ``[R, H, N]``
    (module docstring), with the union's block lists when the kernel runs.

    Returns a :class:`~sparsebench.kernels.compact.CompactSelection` (``indices`` ``[1, Hkv, N]``, ``counts``
    ``[1, Hkv]``: the union over rows, what the Triton decode kernel's ``indices`` mode reads) where
    :func:`fused_select_usable` says so (CUDA; CPU under the interpreter), else
    :func:`verify_select_reference`'s plain selection. No host synchronisation: capturable in a CUDA graph.
    Concurrent launches on two streams of one device must not share the per-device ticket counters.
    """
    if not isinstance(mass, torch.Tensor) or mass.dim() != 3:
        raise UsageError("verify_select takes the draft mass as a floating-point tensor [rows, heads, n_blocks]")
    return verify_select_slots(mass.unsqueeze(1), row_blocks, p, num_kv_heads=num_kv_heads, mass_blocks=mass_blocks,
                               head_reduce=head_reduce, sink_blocks=sink_blocks, config=config)[0]


def verify_select_slots(mass: torch.Tensor, row_blocks: torch.Tensor, p: float, *, num_kv_heads: int,
                        mass_blocks: torch.Tensor | None = None, head_reduce: str = "mean", sink_blocks: int = 0,
                        config: VerifySelectConfig | None = None) -> list[Selection]:
    """:func:`verify_select` for ``S`` mass slots at once: ``mass`` ``[R, S, H, N]`` (the speculator's layout,
    one slot per draft layer the layer map uses) gives ``S`` selections, in ONE launch of ``Hkv x R x S``
    programs.

    Why: a slot's selection depends only on its mass, the row limits and ``p``, all known before the
    verification's first layer, and every target layer mapped to the same draft layer selects the same blocks.
    One launch per target layer (30 for an 8B-shaped target) paid ~16 µs (32K) to ~30 µs (128K) each on an H200,
    mostly the latency of a grid of 40 programs; one launch for all slots pays that latency once.
    """
    pf = _check_p(p)
    if not isinstance(mass, torch.Tensor) or mass.dim() != 4:
        raise UsageError("verify_select_slots takes the draft mass as a floating-point tensor "
                         "[rows, slots, heads, n_blocks]")
    slots = mass.shape[1]
    if slots < 1:
        raise UsageError("verify_select_slots needs the mass of at least one slot")
    _check_args(mass[:, 0], row_blocks, mass_blocks, num_kv_heads, head_reduce, sink_blocks)
    if not fused_select_usable(mass):
        return [verify_select_reference(mass[:, s], row_blocks, pf, num_kv_heads=num_kv_heads,
                                        mass_blocks=mass_blocks, head_reduce=head_reduce, sink_blocks=sink_blocks)
                for s in range(slots)]
    from sparsebench.kernels.triton_decode import _tickets

    rows, _, heads, n = mass.shape
    warps, cand = _resolve(config, n)
    grouped = heads % num_kv_heads == 0
    group = heads // num_kv_heads if grouped else heads
    main, tail = _tiles(n)
    dev = mass.device
    out = torch.empty((slots, num_kv_heads, rows, n), dtype=torch.uint8, device=dev)
    indices = torch.empty((slots, num_kv_heads, n), dtype=torch.int32, device=dev)
    counts = torch.empty((slots, num_kv_heads), dtype=torch.int32, device=dev)
    if rows:
        # Every float64 addition an entry goes through: lanes of a tile, the tile and tail, totals (cf. topp).
        p_hi, p_lo = _acceptance_level(pf, main + tail + 10)
        mean = head_reduce == "mean"
        stride_mr, stride_ms, stride_mh, stride_mn = mass.stride()
        _kernel()[(num_kv_heads, rows, slots)](
            mass, row_blocks, row_blocks if mass_blocks is None else mass_blocks, out, indices, counts,
            _tickets(dev, slots * num_kv_heads), n, rows, stride_mr, stride_ms, stride_mh, stride_mn,
            group * stride_mh if grouped else 0, out.stride(0), out.stride(1), out.stride(2), 1.0 / group,
            p_hi, p_lo, _f32_down((1.0 - pf) / 2.0), int(pf >= 1.0), min(sink_blocks, n),
            G=group, SCALE=mean and group > 1, REDUCE_MAX=not mean, BLOCK_N=main, TAIL=tail, NUM_CAND=cand,
            TIGHTEN=_TIGHTEN_CODES["bracket"], KEEP_F64=main // (32 * warps) <= 16 and tail <= 32 * warps,
            MAX_PASSES=_MAX_PASSES, num_warps=warps,
        )
    else:
        counts.zero_()
    return [CompactSelection(out[s].unsqueeze(0).view(torch.bool), indices=indices[s].unsqueeze(0),
                             counts=counts[s].unsqueeze(0)) for s in range(slots)]

