"""Block-sparse decode attention in Triton: split-K over the selected KV blocks, no host synchronisation.

Why this exists: a policy's selection (the :class:`~sparsebench.selection.Selection` bitmap) lives on the
GPU, and every host round trip (``nonzero``, ``.item()``, a FlashInfer ``plan()`` on CPU index lists)
costs more than the sparse read saves at decode time. These kernels take the bitmap, and optionally a
device-side compaction of it, straight from device memory, so plan + run can be captured once in a
CUDA graph and replayed every step.

Algorithm (flash-decoding)
--------------------------
The grid is ``(B * Hkv, splits)``. Each program serves one (sequence, kv head) and its whole GQA group
(the ``Hq / Hkv`` query heads reading that head's selection), so each KV block is loaded once per group;
the group is padded to 16 rows so both products run on ``tl.dot`` (tensor cores for fp16/bf16, exact
IEEE fp32 for fp32 inputs). A program walks its share of the selected blocks in tiles of
``blocks_per_tile`` blocks, keeping a running max, sum and fp32 accumulator (online softmax, base-2
exponentials); the ``splits`` partial results per query head are then merged and the tokens read summed
by a second, small merge kernel (see "The merge" below). ``splits`` depends only on shapes (blocks,
``B * Hkv``, the multiprocessor count), never on the data, so the launch is the same on every replay.

The merge
---------
By default a second kernel merges the split partials (a program per query row of each kv head); with one
split the split kernel writes the output directly. ``KernelConfig(fused_merge=True)`` merges in the split
kernel instead, saving a launch: each program stores its partial result, then draws a ticket from a
per-(sequence, kv head) atomic counter (a block barrier, then an acquire-release add at GPU scope); the
program that draws the last ticket reads every partial of its group (bypassing L1), merges them and resets
the counter to zero, so the next launch or graph replay needs no memset. It is kept as an option and as
the ``triton-fused`` row of ``bench attention`` because it measured *slower* on the H200 (8K context, B=1,
32 query / 8 kv heads, D=128, bf16, 22% kept: 20.5 µs for the kernel against 13.5 µs with the second
launch). Likely cause (not profiled): the last program of each head merges all of its group's rows one
after another, after a GPU-scope acquire, while the merge kernel gives every row its own program.

Two ways of reading the selection (``mode``):

* ``"bitmap"``: program ``s`` scans blocks ``[s * ceil(N / splits), ...)`` of the bitmap and loads a
  tile's K/V rows under a mask that is true only for selected blocks, so unselected blocks cost no
  memory traffic, but they do cost loop iterations (at 22% kept, ~4.5 tiles scanned per useful one).
  No planning at all.
* ``"indices"``: :func:`compact_selection` (run by ``plan()``) turns each bitmap row into a sorted list
  of selected block ids plus a count (one program per row, ``tl.cumsum`` + scatter); program ``s``
  takes list positions ``[count * s / splits, count * (s + 1) / splits)``, so every tile it loads is
  fully useful and the work is split evenly whatever the selection looks like. A selection that already
  carries its lists (:class:`sparsebench.kernels.compact.CompactSelection`, written by the fused top-k
  kernel in the same launch as the bitmap) skips that step.

Several query rows (speculative verification, ``Q`` up to ``gamma + 1``) share one program too: the
program's ``GROUP * Q`` rows (query head major, query row minor) attend the *union* of the rows' blocks, so
each KV block is loaded once for all rows, and each row is masked to its own blocks (a per-row bitmap
``[B, Hkv, Q, N]``) and to its causal limit: row ``r`` sits at position ``len - Q + r`` and sees keys up to
it. The tokens read are the union's live tokens, as in the torch backend. One row (plain decode) compiles
the masking away and launches exactly the single-row kernel.

Tokens at or past ``kv_len[b]`` (static caches) are neither loaded nor counted; blocks past the last
live one are not even scanned in bitmap mode. An empty selection gives NaN, as the torch reference does.

The kernels run compiled on CUDA tensors and under Triton's interpreter (``TRITON_INTERPRET=1`` set before
triton is first imported) on CPU tensors, which is how the CPU test suite checks them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sparsebench.errors import DependencyError, UsageError
from sparsebench.kernels.triton_support import HAVE_TRITON as _HAVE_TRITON
from sparsebench.kernels.triton_support import interpreter_enabled, jit, jit_helpers, tl, triton

__all__ = [
    "KernelConfig",
    "check_block_size",
    "compact_selection",
    "default_config",
    "default_splits",
    "merge_partials",
    "resolve_config",
    "score_scales",
    "sparse_decode",
    "split_partials",
    "union_of_rows",
]

#: Query/KV dtypes the kernels load directly.
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Largest block size: one block must fit a tile whose K and V stages stay in shared memory.
MAX_BLOCK_SIZE = 128
#: Upper bound on splits per (sequence, kv head): the merge kernel holds all partials of a head at once.
MAX_SPLITS = 128
#: Most query rows per sequence (speculative verification checks ``gamma + 1`` tokens at once); each program
#: holds ``GQA group * rows`` query rows in registers, so the bound keeps that tile sane.
MAX_QUERY_ROWS = 16
_LOG2E = 1.4426950408889634
#: Who finishes a launch (the split kernel's ``MERGE``): one split writes the output itself; a second
#: kernel merges the partials; the last split program to finish merges them in the same launch.
MERGE_NONE, MERGE_SEPARATE, MERGE_LAST = 0, 1, 2
#: Device functions the kernels call: the compiler resolves them by global name (see :func:`_jit`).
_HELPERS = ("_merge_row", "_store_rows")


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters of the split kernel; every field has a shape-derived default.

    Why exposed: the best tile, warp count and pipelining depth on a given GPU are found by timing
    (``sparsebench bench attention --sweep``), not by reasoning alone.
    """

    blocks_per_tile: int | None = None
    """Selected blocks per loop iteration (a tile of ``blocks_per_tile * block_size`` K/V rows)."""
    num_warps: int | None = None
    num_stages: int | None = None
    """Software-pipelining depth of the tile loop (K/V tiles in flight per program)."""
    splits: int | None = None
    """Programs per (sequence, kv head); None derives it from shapes (:func:`default_splits`)."""
    fused_merge: bool | None = None
    """Merge the split partials in the split kernel itself (the last program of each (sequence, kv head)
    to finish does it, found by an atomic ticket) instead of a second launch; None means no: on the H200
    the one-launch merge measured slower (8K context, 22% kept: 20.5 µs against 13.5 µs)."""
    merge_d_parts: int | None = None
    """Programs per merged query row in the two-launch merge, each merging ``head_dim / merge_d_parts`` of the
    row's values (a power of two). Why: the merge is latency-bound (a few hundred KB from L2 at 128K), so more,
    smaller programs may finish sooner. None means 1: at 128K on the H200 (22% kept) 2, 4 and 8 parts gave steps of
    38.8-39.5 µs against 39.4 µs, within the run-to-run spread (``benchmarks/RESULTS.md``, ninth session)."""
    pdl: bool | None = None
    """Programmatic dependent launch: the split kernel waits for its predecessor with ``griddepcontrol`` instead
    of at its launch, and lets the merge launch while it still runs (the merge then waits for it), so the two
    launch latencies overlap the work. None means on where it can run (a CUDA device of compute capability 9.0
    or newer, Triton >= 3.4): on the H200 it took 0.7-1.1 µs off every attention step (128K context, 22% kept:
    40.6 to 39.5 µs with the L2 flushed by reading)."""


def pdl_supported(device: torch.device | str) -> bool:
    """Whether the kernels can use programmatic dependent launch on ``device`` (see :attr:`KernelConfig.pdl`)."""
    dev = torch.device(device)
    if dev.type != "cuda" or not (_HAVE_TRITON and HAVE_PDL):
        return False
    return _capability(torch.cuda.current_device() if dev.index is None else dev.index) >= 9


@functools.cache
def _capability(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def default_config(head_dim: int, dtype: torch.dtype, block_size: int) -> KernelConfig:
    """Tile, warps and stages used when the caller gives none.

    Reasoning for Hopper (to be confirmed by the benchmark's sweep): a K tile of up to 16 KB (64 rows of
    128 bf16 values, 256-byte rows loaded as 16-byte vectors) with its V tile is 32 KB a stage. With
    ``num_stages=3`` Triton's pipeliner (3.9, compiled for sm_90 here) keeps two K/V tiles in flight per
    program (72 KB of shared memory, 128 registers a thread at 4 warps), so three programs fit an SM and
    ~190 KB of loads per SM are outstanding, several times the ~55 KB that HBM latency x bandwidth asks
    for. Wider rows (D = 256, fp32) get fewer rows per tile.
    """
    row_bytes = head_dim * torch.empty((), dtype=dtype).element_size()
    tile_rows = max(16, min(64, 16384 // row_bytes))
    blocks = max(1, tile_rows // block_size)
    stage_bytes = 2 * blocks * block_size * row_bytes
    return KernelConfig(blocks_per_tile=blocks, num_warps=4, num_stages=3 if stage_bytes <= 32768 else 2)


@functools.cache
def _sm_count(device: torch.device) -> int:
    """Multiprocessors of ``device`` (a fixed 4 for CPU tensors under the interpreter)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def default_splits(n_blocks: int, heads: int, device: torch.device | str, blocks_per_tile: int) -> int:
    """Programs per (sequence, kv head), from shapes alone (the same launch on every graph replay).

    Aim for two programs per multiprocessor over the ``heads = B * Hkv`` rows (one waits on memory while
    the other computes), but give each program at least two tiles of the bitmap to scan, so short
    contexts do not drown in partial results.
    """
    want = -(-2 * _sm_count(torch.device(device)) // max(heads, 1))
    cap = max(1, -(-n_blocks // (2 * blocks_per_tile)))
    return max(1, min(want, cap, MAX_SPLITS))


def resolve_config(config: KernelConfig | None, *, head_dim: int, dtype: torch.dtype, block_size: int,
                   n_blocks: int, heads: int, device: torch.device | str) -> KernelConfig:
    """``config`` with every unset field filled from the defaults, validated (benchmarks report it)."""
    base = default_config(head_dim, dtype, block_size)
    given = config or KernelConfig()
    bpt = given.blocks_per_tile or base.blocks_per_tile
    warps = given.num_warps or base.num_warps
    stages = given.num_stages or base.num_stages
    if not (_is_pow2(bpt) and _is_pow2(warps)) or stages < 1:
        raise UsageError(f"blocks_per_tile and num_warps must be powers of two and num_stages >= 1, got {given}")
    splits = given.splits or default_splits(n_blocks, heads, device, bpt)
    if not 1 <= splits <= MAX_SPLITS:
        raise UsageError(f"splits must be in [1, {MAX_SPLITS}], got {splits}")
    fused = bool(given.fused_merge)  # None: the two-launch merge, measured faster (see fused_merge)
    d_parts = given.merge_d_parts or 1
    if not (_is_pow2(d_parts) and head_dim // d_parts >= 16):
        raise UsageError(f"merge_d_parts must be a power of two leaving at least 16 of the head dim ({head_dim}) "
                         f"a program, got {d_parts}")
    pdl = pdl_supported(device) if given.pdl is None else bool(given.pdl)
    if pdl and not pdl_supported(device):
        raise UsageError("programmatic dependent launch (pdl=True) needs a CUDA device of compute capability 9.0 "
                         "or newer and Triton >= 3.4; leave pdl unset to use it where it can run")
    return KernelConfig(blocks_per_tile=bpt, num_warps=warps, num_stages=stages, splits=splits, fused_merge=fused,
                        merge_d_parts=d_parts, pdl=pdl)


# ----------------------------------------------------------------------------------------------
# kernels (plain functions, wrapped for the mode triton was imported in: see _jit)

if _HAVE_TRITON:
    try:  # Triton >= 3.4 (programmatic dependent launch); without it KernelConfig.pdl stays off
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

        HAVE_PDL = True
    except ImportError:  # pragma: no cover - older Triton
        gdc_launch_dependents = gdc_wait = None
        HAVE_PDL = False

    def _compact_kernel(
        sel_ptr,
        idx_ptr,
        cnt_ptr,
        n_blocks,
        n_kv_heads,
        stride_sb,
        stride_sh,
        stride_sn,
        CHUNK: tl.constexpr,
    ):
        """Write row ``program_id(0)``'s selected block ids, ascending, and their count.

        A running offset plus ``tl.cumsum`` over ``CHUNK`` bitmap entries gives each selected block its
        list position; rows up to ``CHUNK`` blocks (8192 by default: 128K tokens) take one iteration.
        """
        bh = tl.program_id(0)
        b = bh // n_kv_heads
        h = bh % n_kv_heads
        row = sel_ptr + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
        out = idx_ptr + bh.to(tl.int64) * n_blocks
        offs = tl.arange(0, CHUNK)
        total = tl.zeros([], dtype=tl.int32)
        for start in range(0, n_blocks, CHUNK):
            j = start + offs
            x = (tl.load(row + j * stride_sn, mask=j < n_blocks, other=0) != 0).to(tl.int32)
            pos = total + tl.cumsum(x, axis=0) - 1
            tl.store(out + pos, j, mask=x != 0)
            total += tl.sum(x, axis=0)
        tl.store(cnt_ptr + bh, total)

    def _split_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        sel_ptr,
        cnt_ptr,
        kvlen_ptr,
        rowsel_ptr,
        o_part_ptr,
        m_part_ptr,
        l_part_ptr,
        n_part_ptr,
        out_ptr,
        tokens_ptr,
        ticket_ptr,
        stride_qb,
        stride_qh,
        stride_qq,
        stride_qd,
        stride_kb,
        stride_kh,
        stride_kt,
        stride_kd,
        stride_vb,
        stride_vh,
        stride_vt,
        stride_vd,
        stride_sb,
        stride_sh,
        stride_sn,
        stride_rb,
        stride_rh,
        stride_rq,
        stride_rn,
        stride_ob,
        stride_oh,
        stride_oq,
        stride_od,
        n_kv_heads,
        n_tokens,
        n_blocks,
        blocks_per_split,
        score_scale,
        cap_scale,
        GROUP: tl.constexpr,
        Q_ROWS: tl.constexpr,
        PER_ROW: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_SIZE: tl.constexpr,
        BLOCKS_PER_TILE: tl.constexpr,
        USE_INDICES: tl.constexpr,
        HAS_KV_LEN: tl.constexpr,
        SOFTCAP: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
        MERGE: tl.constexpr,
        SPLITS_PAD: tl.constexpr,
        PDL: tl.constexpr = False,
    ):
        """Partial attention of one GQA group over one share of its selected blocks.

        ``sel_ptr`` is the bitmap (``USE_INDICES`` false) or the compacted index lists with counts at
        ``cnt_ptr``, of the union of the query rows' blocks. With ``Q_ROWS > 1`` the program holds
        ``GROUP * Q_ROWS`` rows (``GROUP_PAD`` is their padded count), each masked causally and, with
        ``PER_ROW``, to its own blocks in the bitmap at ``rowsel_ptr``. Scores are kept in base 2:
        ``score_scale`` is ``scaling * log2(e)``, or with ``SOFTCAP`` ``scaling / softcap`` before ``tanh``
        and ``cap_scale = softcap * log2(e)`` after it. Writes the unnormalised accumulator, running max and
        sum per row, and the tokens read (the union's: each loaded token counts once for all rows).
        ``DOT_PRECISION`` is "ieee" for float32 inputs (exact products, no TF32) and the default otherwise.

        ``MERGE`` says who finishes: ``MERGE_SEPARATE`` leaves the partials to :func:`_merge_kernel`;
        ``MERGE_LAST`` has the last program of the group to finish merge them (module docstring, "One
        launch"); ``MERGE_NONE`` (one split) writes the normalised output and token count directly.
        ``PDL`` (launched as a programmatic dependent): wait for the previous kernel's writes (the lists) here,
        and let the next kernel (the merge) launch at once.
        """
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        TILE: tl.constexpr = BLOCKS_PER_TILE * BLOCK_SIZE
        # A finite "minus infinity" for the running max: an all-masked tile then gives 2^(m - m) = 1, not NaN.
        NEG_BIG: tl.constexpr = -1.0e30
        TWO_LOG2E: tl.constexpr = 2.8853900817779268
        bh = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)  # a launch argument, not a constant: no recompilation per context length
        b = bh // n_kv_heads
        h = bh % n_kv_heads
        ROWS: tl.constexpr = GROUP * Q_ROWS
        rows = tl.arange(0, GROUP_PAD)
        head = rows // Q_ROWS  # query head within the group; with one query row these fold to rows and 0
        q_row = rows % Q_ROWS
        dims = tl.arange(0, HEAD_DIM)
        t = tl.arange(0, TILE)

        q_base = q_ptr + b.to(tl.int64) * stride_qb + (h * GROUP).to(tl.int64) * stride_qh
        q = tl.load(q_base + (head * stride_qh + q_row * stride_qq)[:, None] + dims[None, :] * stride_qd,
                    mask=rows[:, None] < ROWS, other=0.0)
        k_base = k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_base = v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        sel_row = sel_ptr + b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
        rowsel = rowsel_ptr + b.to(tl.int64) * stride_rb + h.to(tl.int64) * stride_rh + q_row * stride_rq

        limit = n_tokens
        if HAS_KV_LEN:
            limit = tl.minimum(tl.load(kvlen_ptr + b), n_tokens)
        if USE_INDICES:
            count = tl.load(cnt_ptr + bh)
            lo = (count * split) // n_splits
            hi = (count * (split + 1)) // n_splits
        else:
            live_blocks = tl.minimum(n_blocks, (limit + BLOCK_SIZE - 1) // BLOCK_SIZE)
            lo = split * blocks_per_split
            hi = tl.minimum(lo + blocks_per_split, live_blocks)

        m_i = tl.full([GROUP_PAD], NEG_BIG, dtype=tl.float32)
        l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        n_read = tl.zeros([TILE], dtype=tl.int32)
        t_slot = t // BLOCK_SIZE
        # The tile's selection entries (bitmap flags or block ids) are loaded one iteration ahead, so their
        # latency overlaps the previous tile's work instead of stalling the K/V loads that depend on them.
        nxt = tl.load(sel_row + (lo + t_slot) * stride_sn, mask=lo + t_slot < hi, other=0)
        for start in range(lo, hi, BLOCKS_PER_TILE):
            slot = start + t_slot  # list position (indices) or block id (bitmap)
            ok = slot < hi
            cur = nxt
            nxt = tl.load(sel_row + (slot + BLOCKS_PER_TILE) * stride_sn, mask=slot + BLOCKS_PER_TILE < hi, other=0)
            if USE_INDICES:
                block = cur
            else:
                block = slot
                ok = ok & (cur != 0)
            tok = block * BLOCK_SIZE + t % BLOCK_SIZE
            ok = ok & (tok < limit)
            tok64 = tok.to(tl.int64)
            k = tl.load(k_base + tok64[:, None] * stride_kt + dims[None, :] * stride_kd, mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * score_scale
            if SOFTCAP:
                # tanh(x) = 1 - 2 / (e^{2x} + 1): saturates cleanly (e^{2x} -> inf gives 1, -> 0 gives -1).
                s = cap_scale * (1.0 - 2.0 / (tl.exp2(s * TWO_LOG2E) + 1.0))
            if Q_ROWS > 1:
                # Row r sits at position limit - Q + r and sees keys up to it, and (per row) only its blocks.
                seen = ok[None, :] & (tok[None, :] <= (limit - Q_ROWS + q_row)[:, None])
                if PER_ROW:
                    bit = tl.load(rowsel[:, None] + block[None, :] * stride_rn, mask=seen, other=0)
                    seen = seen & (bit != 0)
                s = tl.where(seen, s, float("-inf"))
            else:
                s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + tok64[:, None] * stride_vt + dims[None, :] * stride_vd, mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
            n_read += ok.to(tl.int32)

        row_ok = rows < ROWS
        n_here = tl.sum(n_read, axis=0)
        if MERGE == 0:  # MERGE_NONE: the only split holds the whole result
            _store_rows(out_ptr, stride_ob, stride_oh, stride_oq, stride_od, b, h * GROUP + head, q_row, dims,
                        acc / l_i[:, None], row_ok)
            tl.store(tokens_ptr + bh, n_here.to(tl.int64))
        else:
            part = bh.to(tl.int64) * n_splits + split
            tl.store(o_part_ptr + (part * ROWS + rows)[:, None] * HEAD_DIM + dims[None, :], acc,
                     mask=row_ok[:, None])
            tl.store(m_part_ptr + part * ROWS + rows, m_i, mask=row_ok)
            tl.store(l_part_ptr + part * ROWS + rows, l_i, mask=row_ok)
            tl.store(n_part_ptr + part, n_here)
            if MERGE == 2:  # MERGE_LAST
                # Every thread's partial stores precede the ticket (barrier, then a release at GPU scope); the
                # program drawing the last ticket acquires them all and merges. It also resets the ticket, so
                # the next launch (a CUDA-graph replay) starts from zero with no memset.
                tl.debug_barrier()
                ticket = tl.atomic_add(ticket_ptr + bh, 1, sem="acq_rel", scope="gpu")
                if ticket == n_splits - 1:
                    s = tl.arange(0, SPLITS_PAD)
                    s_ok = s < n_splits
                    parts = bh.to(tl.int64) * n_splits + s
                    one = tl.zeros([1], dtype=tl.int32)
                    for g in range(ROWS):
                        res = _merge_row(o_part_ptr, m_part_ptr, l_part_ptr, parts, s_ok, g, dims, ROWS, HEAD_DIM)
                        _store_rows(out_ptr, stride_ob, stride_oh, stride_oq, stride_od, b,
                                    one + (h * GROUP + g // Q_ROWS), one + g % Q_ROWS, dims, res[None, :], one == 0)
                    n_all = tl.sum(tl.load(n_part_ptr + parts, mask=s_ok, other=0, cache_modifier=".cg"), axis=0)
                    tl.store(tokens_ptr + bh, n_all.to(tl.int64))
                    tl.store(ticket_ptr + bh, 0)

    def _merge_row(o_part_ptr, m_part_ptr, l_part_ptr, parts, s_ok, g, dims, ROWS: tl.constexpr,
                   HEAD_DIM: tl.constexpr):
        """Row ``g`` of a group merged over its splits ``parts`` (``s_ok`` masks padding splits).

        ``out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s`` with ``M = max_s m_s``; empty splits carry
        ``m = -1e30, l = 0`` and weigh nothing. Loads bypass L1 (``.cg``): in the one-launch merge the
        partials were written by other multiprocessors during this launch.
        """
        # All three loads are issued before any arithmetic, so their L2 round trips overlap (the merge is
        # latency-bound). Not measured on its own: the tenth session's comparison ran the same kernel twice
        # (benchmarks/RESULTS.md); the steps with it, 38.7-39.6 µs at 128K, are within the ninth session's range.
        o = tl.load(o_part_ptr + (parts * ROWS + g)[:, None] * HEAD_DIM + dims[None, :], mask=s_ok[:, None],
                    other=0.0, cache_modifier=".cg")
        m = tl.load(m_part_ptr + parts * ROWS + g, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
        lsum = tl.load(l_part_ptr + parts * ROWS + g, mask=s_ok, other=0.0, cache_modifier=".cg")
        w = tl.exp2(m - tl.max(m, axis=0))
        return tl.sum(o * w[:, None], axis=0) / tl.sum(lsum * w, axis=0)

    def _store_rows(out_ptr, stride_ob, stride_oh, stride_oq, stride_od, b, head, q_row, dims, res, ok):
        """Store rows ``res`` ``[R, D]`` at ``out[b, head[r], q_row[r], :]`` where ``ok`` (``head``, ``q_row``,
        ``ok`` are ``[R]``)."""
        base = out_ptr + b.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh + q_row.to(tl.int64) * stride_oq
        tl.store(base[:, None] + dims[None, :] * stride_od, res.to(out_ptr.dtype.element_ty), mask=ok[:, None])

    def _merge_kernel(
        o_part_ptr,
        m_part_ptr,
        l_part_ptr,
        n_part_ptr,
        out_ptr,
        tokens_ptr,
        stride_ob,
        stride_oh,
        stride_oq,
        stride_od,
        n_kv_heads,
        n_splits,
        GROUP: tl.constexpr,
        Q_ROWS: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        SPLITS_PAD: tl.constexpr,
        BLOCK_D: tl.constexpr,
        PDL: tl.constexpr = False,
    ):
        """Combine the partials of row ``program_id(1)`` (query head major, query row minor) of group
        ``program_id(0)`` (:func:`_merge_row`), its values from ``program_id(2) * BLOCK_D`` on: the two-launch path
        (``fused_merge=False``). Query head 0 of each group also writes the group's token count (int64, as the
        torch backend returns it). ``PDL``:
        launched while the split kernel runs, so first wait until it has finished and its partials are visible.
        """
        if PDL:
            gdc_wait()
        bh = tl.program_id(0)
        g = tl.program_id(1)
        s = tl.arange(0, SPLITS_PAD)
        dims = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
        s_ok = s < n_splits
        ROWS: tl.constexpr = GROUP * Q_ROWS
        parts = bh.to(tl.int64) * n_splits + s
        res = _merge_row(o_part_ptr, m_part_ptr, l_part_ptr, parts, s_ok, g, dims, ROWS, HEAD_DIM)
        b = bh // n_kv_heads
        h = bh % n_kv_heads
        one = tl.zeros([1], dtype=tl.int32)
        _store_rows(out_ptr, stride_ob, stride_oh, stride_oq, stride_od, b, one + (h * GROUP + g // Q_ROWS),
                    one + g % Q_ROWS, dims, res[None, :], one == 0)
        n = tl.sum(tl.load(n_part_ptr + parts, mask=s_ok, other=0), axis=0)
        tl.store(tokens_ptr + bh, n.to(tl.int64), mask=(g == 0) & (tl.program_id(2) == 0))

else:  # pragma: no cover
    _compact_kernel = _split_kernel = _merge_kernel = _merge_row = _store_rows = None
    HAVE_PDL = False


@functools.cache
def _jit(fn: Callable[..., Any]) -> Any:
    """``fn`` wrapped for the mode triton was imported in (:func:`~sparsebench.kernels.triton_support.jit`),
    with this module's device helpers wrapped too when compiling."""
    if not interpreter_enabled():
        jit_helpers(globals(), _HELPERS)
    return jit(fn)


_TICKETS: dict[torch.device, torch.Tensor] = {}


def _tickets(device: torch.device, n: int) -> torch.Tensor:
    """``n`` zeroed int32 counters for the one-launch merge, kept per device and reused by every launch.

    Why persistent: the kernel leaves them at zero (the merging program resets its counter), so no memset
    launch is needed, and a CUDA graph replays with the same address. A buffer too small is replaced by a
    larger one outside a capture; the old one stays referenced (graphs captured with it still use it).
    During a capture a too-small buffer gets a fresh, graph-owned one for that launch only (its memset is
    recorded in the graph). Concurrent launches on different streams must not share a device's counters.
    """
    buf = _TICKETS.get(device)
    if buf is not None and buf.numel() >= n:
        return buf
    capturing = device.type == "cuda" and torch.cuda.is_current_stream_capturing()
    fresh = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    if not capturing:
        _RETIRED.extend([buf] if buf is not None else [])
        _TICKETS[device] = fresh
    return fresh


_RETIRED: list[torch.Tensor] = []


# ----------------------------------------------------------------------------------------------
# launchers


def _require_runnable(device: torch.device) -> None:
    """Raise a one-line error unless the kernels can run on tensors of ``device``."""
    if not _HAVE_TRITON:
        raise DependencyError("the Triton attention kernels need triton: pip install 'sparsebench[triton]'")
    if device.type == "cuda":
        return
    if device.type == "cpu" and interpreter_enabled():
        return
    raise UsageError(f"the Triton attention kernels run on CUDA tensors (or on CPU tensors under "
                     f"TRITON_INTERPRET=1, for tests); got {device} tensors: use --backend torch")


def _check_mask(mask: torch.Tensor) -> torch.Tensor:
    """The bitmap as uint8 (a free view of the bool tensor), after shape and dtype checks."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() not in (3, 4):
        raise UsageError("the Triton backend takes a bool selection [batch, kv_heads, n_blocks], or "
                         "[batch, kv_heads, query_rows, n_blocks] per query row")
    return mask.view(torch.uint8)


def union_of_rows(mask: torch.Tensor) -> torch.Tensor:
    """The ``[B, Hkv, N]`` blocks any query row reads: what the kernels load (once for all rows) and count.

    A shared selection is returned as it is, a one-row one as a view; only several rows cost a reduction
    (on the device, no sync).
    """
    _check_mask(mask)
    if mask.dim() == 3:
        return mask
    return mask[:, :, 0] if mask.shape[2] == 1 else mask.any(2)


def compact_selection(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sequence, kv head) ascending lists of selected block ids, on the device, without a sync.

    Returns ``indices`` ``[B, Hkv, N]`` int32 (entries past a row's count are unspecified) and
    ``counts`` ``[B, Hkv]`` int32. One launch, one program per row: this is the ``indices`` mode's
    planning step. A per-query-row selection is compacted as the union of its rows.
    """
    sel = _check_mask(union_of_rows(mask))
    _require_runnable(sel.device)
    b, hkv, n = sel.shape
    indices = torch.empty((b, hkv, n), dtype=torch.int32, device=sel.device)
    counts = torch.empty((b, hkv), dtype=torch.int32, device=sel.device)
    if b * hkv == 0:
        return indices, counts
    chunk = min(8192, triton.next_power_of_2(max(n, 16)))
    _jit(_compact_kernel)[(b * hkv,)](
        sel, indices, counts, n, hkv, *sel.stride(), CHUNK=chunk, num_warps=8 if chunk >= 2048 else 4
    )
    return indices, counts


def check_block_size(block_size: int) -> None:
    """Reject block sizes the kernel does not tile: it needs a power of two from 16 to 128."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not (
        _is_pow2(block_size) and 16 <= block_size <= MAX_BLOCK_SIZE
    ):
        raise UsageError(f"the Triton backend needs a block size that is a power of two from 16 to "
                         f"{MAX_BLOCK_SIZE}, got {block_size!r}; use --block-size 16 or --backend torch")


def sparse_decode(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    *,
    block_size: int,
    scaling: float,
    softcap: float | None = None,
    kv_len: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-sparse decode attention; returns ``(out [B, Hq, Q, D], tokens_read [B, Hkv] int64)``.

    Shapes as in :meth:`sparsebench.kernels.base.AttentionBackend.attend`; ``key``/``value`` may have
    any strides. ``mask`` is ``[B, Hkv, N]`` (shared by the ``Q`` query rows) or ``[B, Hkv, Q, N]`` (per
    row); rows are causal within the last ``Q`` positions (see the module docstring). With
    ``indices``/``counts`` (from :func:`compact_selection` of ``mask``) the kernel reads the compacted
    lists, otherwise it scans the bitmap. Every check here looks at shapes and
    dtypes only, so the call never synchronises with the device and can be captured in a CUDA graph.
    """
    _check_mask(mask)
    _require_runnable(query.device)
    check_block_size(block_size)
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise UsageError("query must be [B, Hq, Q, D] and key/value [B, Hkv, T, D]")
    b, hq, q_rows, d = query.shape
    _, hkv, n_tokens, _ = key.shape
    if not 1 <= q_rows <= MAX_QUERY_ROWS:
        raise UsageError(f"the Triton backend takes 1 to {MAX_QUERY_ROWS} query rows per sequence, got {q_rows}; "
                         "use --backend torch")
    if mask.dim() == 4 and mask.shape[2] not in (1, q_rows):
        raise UsageError(f"a per-row selection of {mask.shape[2]} rows for {q_rows} query rows")
    per_row = mask.dim() == 4 and mask.shape[2] > 1
    rows_sel = mask.view(torch.uint8) if per_row else None
    # Given compacted lists, the kernel reads them and never the union: a view serves the shape checks below
    # and the union's reduction (one launch per layer) is skipped.
    sel = _check_mask(union_of_rows(mask) if indices is None else mask if mask.dim() == 3 else mask[:, :, 0])
    if key.shape != value.shape or key.shape[0] != b or key.shape[3] != d:
        raise UsageError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must both be [B, Hkv, T, D] "
                         f"matching query {tuple(query.shape)}")
    if hkv == 0 or hq % hkv:
        raise UsageError(f"query heads ({hq}) must be a multiple of kv heads ({hkv})")
    if query.dtype not in DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        raise UsageError(f"the Triton backend takes float16, bfloat16 or float32 query/key/value of one dtype, "
                         f"got {query.dtype}/{key.dtype}/{value.dtype}")
    if not (_is_pow2(d) and 16 <= d <= 256):
        raise UsageError(f"the Triton backend needs a power-of-two head dim from 16 to 256, got {d}")
    if key.device != query.device or value.device != query.device or sel.device != query.device:
        raise UsageError("query, key, value and the selection must be on one device")
    n_blocks = sel.shape[2]
    if tuple(sel.shape[:2]) != (b, hkv) or n_blocks != -(-n_tokens // block_size):
        raise UsageError(f"selection shape {tuple(sel.shape)} does not match [B={b}, Hkv={hkv}, "
                         f"ceil(T={n_tokens} / {block_size})]")
    if kv_len is not None:
        if kv_len.shape != (b,) or kv_len.device != query.device or kv_len.is_floating_point():
            raise UsageError(f"kv_len must be an integer tensor of shape ({b},) on {query.device}")
        kv_len = kv_len.to(torch.int32)
    use_indices = indices is not None
    if use_indices and (counts is None or indices.shape != sel.shape or counts.shape != (b, hkv)
                        or indices.dtype != torch.int32 or counts.dtype != torch.int32):
        raise UsageError("indices/counts must come from compact_selection(selection)")
    if softcap is not None and not softcap > 0:
        raise UsageError(f"softcap must be positive, got {softcap!r}")

    heads = b * hkv
    cfg = resolve_config(config, head_dim=d, dtype=query.dtype, block_size=block_size, n_blocks=n_blocks,
                         heads=heads, device=query.device)
    bpt, warps, stages, splits = cfg.blocks_per_tile, cfg.num_warps, cfg.num_stages, cfg.splits
    group = hq // hkv

    rows = group * q_rows
    out = torch.empty((b, hq, q_rows, d), dtype=query.dtype, device=query.device)
    tokens_read = torch.empty((b, hkv), dtype=torch.int64, device=query.device)
    if heads == 0:
        return out, tokens_read
    merge = MERGE_NONE if splits == 1 else MERGE_LAST if cfg.fused_merge else MERGE_SEPARATE
    o_part, m_part, l_part, n_part = split_partials(heads * splits if merge != MERGE_NONE else 1, rows, d,
                                                    query.device)
    score_scale, cap_scale = score_scales(scaling, softcap)
    lists = indices.view(torch.int32) if use_indices else sel
    dummy = n_part  # stands in for absent optional pointers; never read
    tickets = _tickets(query.device, heads) if merge == MERGE_LAST else dummy
    splits_pad = triton.next_power_of_2(splits)
    _jit(_split_kernel)[(heads, splits)](
        query, key, value, lists, counts if use_indices else dummy, kv_len if kv_len is not None else dummy,
        rows_sel if per_row else dummy, o_part, m_part, l_part, n_part, out, tokens_read, tickets,
        *query.stride(), *key.stride(), *value.stride(), *lists.stride(),
        *(rows_sel.stride() if per_row else (0, 0, 0, 0)), *out.stride(),
        hkv, n_tokens, n_blocks, -(-n_blocks // splits), float(score_scale), float(cap_scale),
        GROUP=group, Q_ROWS=q_rows, PER_ROW=per_row, GROUP_PAD=max(16, triton.next_power_of_2(rows)),
        HEAD_DIM=d, BLOCK_SIZE=block_size,
        BLOCKS_PER_TILE=bpt, USE_INDICES=use_indices, HAS_KV_LEN=kv_len is not None,
        SOFTCAP=softcap is not None, DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        MERGE=merge, SPLITS_PAD=splits_pad, num_warps=warps, num_stages=stages, **_pdl_args(bool(cfg.pdl)),
    )
    if merge == MERGE_SEPARATE:
        merge_partials(o_part, m_part, l_part, n_part, out, tokens_read, hkv=hkv, splits=splits, group=group,
                       q_rows=q_rows, pdl=bool(cfg.pdl), d_parts=int(cfg.merge_d_parts or 1))
    return out, tokens_read


def split_partials(n_parts: int, rows: int, head_dim: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Buffers a split kernel writes for :func:`merge_partials`: ``o`` ``[n_parts, rows, D]``, ``m`` and ``l``
    ``[n_parts, rows]`` (float32), tokens read ``[n_parts]`` (int32)."""
    o_part = torch.empty((n_parts, rows, head_dim), dtype=torch.float32, device=device)
    m_part = torch.empty((n_parts, rows), dtype=torch.float32, device=device)
    return o_part, m_part, torch.empty_like(m_part), torch.empty((n_parts,), dtype=torch.int32, device=device)


def score_scales(scaling: float, softcap: float | None) -> tuple[float, float]:
    """``(score_scale, cap_scale)`` of the split kernels, which keep scores in base 2: without soft-capping
    ``scaling * log2(e)`` and 1; with it ``scaling / softcap`` before ``tanh`` and ``softcap * log2(e)`` after."""
    if softcap is None:
        return scaling * _LOG2E, 1.0
    return scaling / softcap, softcap * _LOG2E


def merge_partials(o_part: torch.Tensor, m_part: torch.Tensor, l_part: torch.Tensor, n_part: torch.Tensor,
                   out: torch.Tensor, tokens_read: torch.Tensor, *, hkv: int, splits: int, group: int,
                   q_rows: int, pdl: bool = False, d_parts: int = 1) -> None:
    """Merge split-K partials into ``out`` ``[B, Hq, Q, D]`` and ``tokens_read`` ``[B, Hkv]`` (one launch).

    The partials' layout is the split kernel's: ``o_part`` ``[B * Hkv * splits, group * Q, D]`` float32
    (unnormalised), ``m_part``/``l_part`` ``[B * Hkv * splits, group * Q]`` (base-2 running max and sum),
    ``n_part`` ``[B * Hkv * splits]`` int32 tokens read. Shared with the CUDA kernel
    (:mod:`sparsebench.kernels.cuda_decode`), which writes the same layout. ``pdl``: launched as a programmatic
    dependent of the split kernel (launched with ``PDL`` too; see :attr:`KernelConfig.pdl`). ``d_parts``: programs
    per row (:attr:`KernelConfig.merge_d_parts`).
    """
    heads = o_part.shape[0] // splits
    block_d = out.shape[-1] // d_parts
    splits_pad = triton.next_power_of_2(splits)
    _jit(_merge_kernel)[(heads, group * q_rows, d_parts)](
        o_part, m_part, l_part, n_part, out, tokens_read,
        *out.stride(), hkv, splits,
        GROUP=group, Q_ROWS=q_rows, HEAD_DIM=out.shape[-1], SPLITS_PAD=splits_pad, BLOCK_D=block_d,
        num_warps=4 if block_d * splits_pad >= 4096 else 2, **_pdl_args(pdl),
    )


def _pdl_args(pdl: bool) -> dict[str, Any]:
    """The kernel argument and launch option of programmatic dependent launch (none at all when off, so the
    interpreter and older Triton never see them)."""
    return dict(PDL=True, launch_pdl=True) if pdl else {}
