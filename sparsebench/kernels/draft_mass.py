"""Dense decode attention that also returns each query head's attention mass per KV block, in one read of K.

Why this exists: SpecAttn selects the target's blocks from the draft's attention of the same token, summed
per KV block. Computing that mass next to the attention in torch (scores, softmax, block sums, output) reads
the draft's keys several times and launches a dozen kernels per layer and draft step; at 128K tokens that
made the SpecAttn draft 2.7x slower than a dense draft. Here the mass comes out of the flash-decoding pass
the draft needs anyway: while a program walks its tiles it already has every score, so it also stores, per
(sequence, query head, block), the block's log-sum-exp of scores (base 2); once the splits' running maxima
and sums are merged into the row's total log-sum-exp, the block mass is ``2^(lse_block - lse_total)``.

Launches (both capturable in a CUDA graph, no host synchronisation, shapes alone fix the grid):

1. ``_split_kernel``, grid ``(B * Hkv, splits)``: one program per (sequence, kv head) and share of the
   blocks, serving the whole GQA group (padded to 16 rows so both products run on ``tl.dot``), online
   softmax in base 2 as :mod:`sparsebench.kernels.triton_decode` does; writes its partial accumulator,
   maximum and sum per query head, and the block log-sum-exps of the blocks it covered.
2. ``_finish_kernel``, grid ``(B * Hq, chunks)``: each program merges its query head's partial maxima and
   sums into the total; chunk 0 also merges the output row; every chunk turns its share of the block
   log-sum-exps into masses, written at row ``mass_row`` (a device counter: one graph per block count serves
   every draft step) of a caller's buffer.

``skip=(lo, hi)`` leaves blocks ``lo .. hi - 1`` out (StreamingLLM on the draft: keep block 0, the sink, and
the recent window); the splits share the blocks that remain, so a window costs what it reads, and the skipped
blocks get mass 0. Tokens at or past ``kv_len[b]`` are neither read nor given mass.

Numerics: products in fp32 (``tl.dot`` accumulates in fp32; fp32 inputs use IEEE products), softmax in fp32;
a block whose mass is below ``2^-126`` of its tile's largest probability may come out as 0.
Runs compiled on CUDA tensors and under Triton's interpreter (``TRITON_INTERPRET=1``) on CPU tensors.
"""

from __future__ import annotations

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.triton_decode import DTYPES, KernelConfig, check_block_size, resolve_config
from sparsebench.kernels.triton_support import HAVE_TRITON as _HAVE_TRITON
from sparsebench.kernels.triton_support import interpreter_enabled, tl, triton
from sparsebench.kernels.triton_support import jit as _jit

__all__ = ["attention_with_block_mass", "mass_kernel_unavailable"]

_LOG2E = 1.4426950408889634
#: Block masses per program of the finishing kernel.
_FINISH_CHUNK = 1024


def mass_kernel_unavailable(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why :func:`attention_with_block_mass` cannot serve this configuration, or None."""
    if not _HAVE_TRITON:
        return "triton is not installed"
    if device.type != "cuda" and not (device.type == "cpu" and interpreter_enabled()):
        return f"the kernel runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not {device.type}"
    if dtype not in DTYPES:
        return f"dtype {dtype} is not one of {DTYPES}"
    if not (head_dim & (head_dim - 1) == 0 and 16 <= head_dim <= 256):
        return f"head dim {head_dim} is not a power of two from 16 to 256"
    return None


if _HAVE_TRITON:

    def _split_kernel(
        q_ptr, k_ptr, v_ptr, kvlen_ptr, o_part_ptr, m_part_ptr, l_part_ptr, lse_ptr,
        stride_qb, stride_qh, stride_qd,
        stride_kb, stride_kh, stride_kt, stride_kd,
        stride_vb, stride_vh, stride_vt, stride_vd,
        stride_lb, stride_lh, stride_ln,
        n_kv_heads, n_tokens, n_live, skip_lo, skip_len, blocks_per_split, score_scale,
        GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
        BLOCKS_PER_TILE: tl.constexpr, HAS_KV_LEN: tl.constexpr, WRITE_LSE: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """Partial attention of one GQA group over live blocks ``[split * blocks_per_split, ...)``.

        Live block ``i`` is block ``i`` below ``skip_lo`` and block ``i + skip_len`` from there on. Scores are
        in base 2 (``score_scale = scaling * log2(e)``). With ``WRITE_LSE`` each covered block's
        ``log2(sum 2^score)`` per query head goes to ``lse_ptr`` (``-inf`` for a block with no live token).
        """
        TILE: tl.constexpr = BLOCKS_PER_TILE * BLOCK_SIZE
        NEG_BIG: tl.constexpr = -1.0e30  # finite running-max start: an all-masked tile gives 2^(m - m) = 1
        bh = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        b = bh // n_kv_heads
        h = bh % n_kv_heads
        rows = tl.arange(0, GROUP_PAD)
        row_ok = rows < GROUP
        dims = tl.arange(0, HEAD_DIM)
        t = tl.arange(0, TILE)
        t_slot = t // BLOCK_SIZE
        tiles = tl.arange(0, BLOCKS_PER_TILE)

        q_base = q_ptr + b.to(tl.int64) * stride_qb + (h * GROUP).to(tl.int64) * stride_qh
        q = tl.load(q_base + rows[:, None] * stride_qh + dims[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
        k_base = k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_base = v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        lse_base = lse_ptr + b.to(tl.int64) * stride_lb + (h * GROUP).to(tl.int64) * stride_lh
        limit = n_tokens
        if HAS_KV_LEN:
            limit = tl.minimum(tl.load(kvlen_ptr + b), n_tokens)
        lo = split * blocks_per_split
        hi = tl.minimum(lo + blocks_per_split, n_live)

        m_i = tl.full([GROUP_PAD], NEG_BIG, dtype=tl.float32)
        l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
        acc = tl.zeros([GROUP_PAD, HEAD_DIM], dtype=tl.float32)
        for start in range(lo, hi, BLOCKS_PER_TILE):
            live = start + t_slot
            block = tl.where(live < skip_lo, live, live + skip_len)
            tok = block * BLOCK_SIZE + t % BLOCK_SIZE
            ok = (live < hi) & (tok < limit)
            tok64 = tok.to(tl.int64)
            k = tl.load(k_base + tok64[:, None] * stride_kt + dims[None, :] * stride_kd, mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * score_scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if WRITE_LSE:
                # The tile's probabilities (relative to its running max) summed per block: no second read of K.
                block_sum = tl.sum(tl.reshape(p, [GROUP_PAD, BLOCKS_PER_TILE, BLOCK_SIZE]), axis=2)
                lse = m_new[:, None] + tl.log2(block_sum)
                live_t = start + tiles
                block_t = tl.where(live_t < skip_lo, live_t, live_t + skip_len)
                tl.store(lse_base + rows[:, None] * stride_lh + block_t[None, :].to(tl.int64) * stride_ln, lse,
                         mask=row_ok[:, None] & (live_t < hi)[None, :])
            v = tl.load(v_base + tok64[:, None] * stride_vt + dims[None, :] * stride_vd, mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new

        part = bh.to(tl.int64) * n_splits + split
        tl.store(o_part_ptr + (part * GROUP + rows)[:, None] * HEAD_DIM + dims[None, :], acc, mask=row_ok[:, None])
        tl.store(m_part_ptr + part * GROUP + rows, m_i, mask=row_ok)
        tl.store(l_part_ptr + part * GROUP + rows, l_i, mask=row_ok)

    def _finish_kernel(
        o_part_ptr, m_part_ptr, l_part_ptr, lse_ptr, out_ptr, mass_ptr, row_ptr,
        stride_lb, stride_lh, stride_ln,
        stride_ob, stride_oh, stride_od,
        stride_mr, stride_mb, stride_mh, stride_mn,
        n_heads, n_splits, n_blocks, skip_lo, skip_hi,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SPLITS_PAD: tl.constexpr, CHUNK: tl.constexpr,
        WRITE_MASS: tl.constexpr, HAS_ROW: tl.constexpr,
    ):
        """Query head ``program_id(0)``: merge its splits (chunk 0 writes the output row) and turn blocks
        ``[chunk * CHUNK, ...)`` of its log-sum-exps into masses at row ``*row_ptr`` of ``mass_ptr``."""
        bq = tl.program_id(0)
        chunk = tl.program_id(1)
        b = bq // n_heads
        hq = bq % n_heads
        g = hq % GROUP
        bh = b * (n_heads // GROUP) + hq // GROUP
        s = tl.arange(0, SPLITS_PAD)
        s_ok = s < n_splits
        parts = bh.to(tl.int64) * n_splits + s
        m = tl.load(m_part_ptr + parts * GROUP + g, mask=s_ok, other=float("-inf"))
        m_all = tl.max(m, axis=0)
        w = tl.exp2(m - m_all)
        l_all = tl.sum(tl.load(l_part_ptr + parts * GROUP + g, mask=s_ok, other=0.0) * w, axis=0)
        if chunk == 0:
            dims = tl.arange(0, HEAD_DIM)
            o = tl.load(o_part_ptr + (parts * GROUP + g)[:, None] * HEAD_DIM + dims[None, :], mask=s_ok[:, None],
                        other=0.0)
            res = tl.sum(o * w[:, None], axis=0) / l_all
            out = out_ptr + b.to(tl.int64) * stride_ob + hq.to(tl.int64) * stride_oh + dims * stride_od
            tl.store(out, res.to(out_ptr.dtype.element_ty))
        if WRITE_MASS:
            total = m_all + tl.log2(l_all)
            n = chunk * CHUNK + tl.arange(0, CHUNK)
            live = n < n_blocks
            kept = live & ((n < skip_lo) | (n >= skip_hi))
            lse = tl.load(lse_ptr + b.to(tl.int64) * stride_lb + hq.to(tl.int64) * stride_lh + n * stride_ln,
                          mask=kept, other=float("-inf"))
            row = tl.load(row_ptr).to(tl.int64) if HAS_ROW else 0
            dest = mass_ptr + row * stride_mr + b.to(tl.int64) * stride_mb + hq.to(tl.int64) * stride_mh
            tl.store(dest + n * stride_mn, tl.exp2(lse - total), mask=live)

else:  # pragma: no cover
    _split_kernel = _finish_kernel = None


def attention_with_block_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    block_size: int,
    scaling: float,
    kv_len: torch.Tensor | None = None,
    skip: tuple[int, int] | None = None,
    want_mass: bool = True,
    mass_out: torch.Tensor | None = None,
    mass_row: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dense one-query decode attention and the attention mass of each query head per KV block.

    ``query`` ``[B, Hq, 1, D]``; ``key``/``value`` ``[B, Hkv, T, D]`` (any strides, ``T`` whole blocks or a
    partial last one); ``kv_len`` ``[B]`` (device) masks tokens at or past it; ``skip`` (host ints) leaves
    blocks ``lo .. hi - 1`` out (see the module docstring). Returns ``out`` ``[B, Hq, 1, D]`` in the query's
    dtype and ``mass`` ``[B, Hq, N]`` fp32 (None without ``want_mass``). With ``mass_out`` ``[R, B, Hq, >= N]``
    and ``mass_row`` (an int64 device tensor of one element) the masses go to ``mass_out[mass_row, :, :, :N]``
    instead (no allocation, and the row can advance between CUDA-graph replays) and ``mass_out`` is returned.
    Every check looks at shapes and dtypes only: the call never synchronises with the device.
    """
    if not _HAVE_TRITON:
        raise UsageError("the draft-mass kernel needs triton: pip install 'sparsebench[triton]'")
    check_block_size(block_size)
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4 or query.shape[2] != 1:
        raise UsageError("query must be [B, Hq, 1, D] and key/value [B, Hkv, T, D]")
    b, hq, _, d = query.shape
    _, hkv, n_tokens, _ = key.shape
    why = mass_kernel_unavailable(query.device, query.dtype, d)
    if why:
        raise UsageError(f"the draft-mass kernel cannot run here: {why}")
    if key.shape != value.shape or key.shape[0] != b or key.shape[3] != d or hkv == 0 or hq % hkv:
        raise UsageError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must be [B, Hkv, T, D] with Hkv "
                         f"dividing the query's heads, for query {tuple(query.shape)}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise UsageError(f"query, key and value must share a dtype, got {query.dtype}/{key.dtype}/{value.dtype}")
    n_blocks = -(-n_tokens // block_size)
    lo, hi = skip if skip is not None else (0, 0)
    if not 0 <= lo <= hi <= n_blocks:
        raise UsageError(f"skip {skip} must be a block range within 0 .. {n_blocks}")
    if kv_len is not None:
        if kv_len.shape != (b,) or kv_len.device != query.device or kv_len.is_floating_point():
            raise UsageError(f"kv_len must be an integer tensor of shape ({b},) on {query.device}")
        kv_len = kv_len.to(torch.int32)
    if mass_out is not None and (mass_row is None or mass_out.dim() != 4 or mass_out.dtype != torch.float32
                                 or mass_row.numel() != 1 or tuple(mass_out.shape[1:3]) != (b, hq)
                                 or mass_out.shape[3] < n_blocks):
        raise UsageError(f"mass_out must be float32 [R, {b}, {hq}, >= {n_blocks}] with a one-element mass_row")
    n_live = n_blocks - (hi - lo)
    heads = b * hkv
    cfg = resolve_config(config, head_dim=d, dtype=query.dtype, block_size=block_size, n_blocks=max(n_live, 1),
                         heads=heads, device=query.device)
    bpt, splits = cfg.blocks_per_tile, cfg.splits
    group = hq // hkv
    dev = query.device
    out = torch.empty((b, hq, 1, d), dtype=query.dtype, device=dev)
    o_part = torch.empty((heads * splits, group, d), dtype=torch.float32, device=dev)
    m_part = torch.empty((heads * splits, group), dtype=torch.float32, device=dev)
    l_part = torch.empty_like(m_part)
    lse = torch.empty((b, hq, n_blocks if want_mass else 1), dtype=torch.float32, device=dev)
    if want_mass and mass_out is None:
        mass_out, mass_row = torch.empty((1, b, hq, max(n_blocks, 1)), dtype=torch.float32, device=dev), None
    dummy = m_part  # stands in for absent optional pointers; never read
    _jit(_split_kernel)[(heads, splits)](
        query, key, value, kv_len if kv_len is not None else dummy, o_part, m_part, l_part, lse,
        query.stride(0), query.stride(1), query.stride(3), *key.stride(), *value.stride(), *lse.stride(),
        hkv, n_tokens, n_live, lo, hi - lo, -(-n_live // splits), float(scaling * _LOG2E),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK_SIZE=block_size,
        BLOCKS_PER_TILE=bpt, HAS_KV_LEN=kv_len is not None, WRITE_LSE=want_mass,
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    chunk = min(_FINISH_CHUNK, triton.next_power_of_2(max(n_blocks, 16)))
    mass_strides = mass_out.stride() if mass_out is not None else (0, 0, 0, 0)
    _jit(_finish_kernel)[(b * hq, -(-n_blocks // chunk) if want_mass else 1)](
        o_part, m_part, l_part, lse, out, mass_out if mass_out is not None else dummy,
        mass_row if mass_row is not None else dummy,
        *lse.stride(), out.stride(0), out.stride(1), out.stride(3), *mass_strides,
        hq, splits, n_blocks, lo, hi,
        GROUP=group, HEAD_DIM=d, SPLITS_PAD=triton.next_power_of_2(splits), CHUNK=chunk, WRITE_MASS=want_mass,
        HAS_ROW=mass_row is not None, num_warps=4,
    )
    if not want_mass:
        return out, None
    assert mass_out is not None
    return out, (mass_out[0, :, :, :n_blocks] if mass_row is None else mass_out)
