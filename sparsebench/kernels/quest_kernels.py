"""Quest on the GPU: the block-score bound in one launch, and the newest block's key summaries in one launch.

Why: in the fast decode engine (Llama-3-8B shape, 32 layers, H200) the torch path cost 1.5-4.3 ms per step
for Quest's scoring (two matmuls over ``[B, Hkv, G, D] x [B, Hkv, N, D]`` with their clamps, casts and the
group reduction: several launches and full-size temporaries per layer) and 1.6 ms per step for the block
summaries (gather the block's keys, mask, reduce, scatter: about ten launches per layer). Both are small
memory-bound reductions that fit one kernel each.

* :func:`quest_scores` reads each kv head's block ``key_min``/``key_max`` once for its whole GQA group and
  writes ``[B, Hkv, N]`` float32 scores, the group already reduced (``max``, ``sum`` or ``mean``, as
  :func:`sparsebench.policy.reduce_groups`). The bound is :func:`sparsebench.policies.quest.quest_upper_bound`'s,
  ``sum_d relu(q_d) * max_d + min(q_d, 0) * min_d``, computed as two tensor-core products whose operands are
  the summaries' dtype (the query is cast to it, as the torch path does on a GPU) with float32 accumulation
  and no intermediate rounding: the float32 reference's value up to summation order (equal bit for bit when
  every partial sum is exact, e.g. integer-valued inputs). The torch path on a GPU rounds each of the two
  products to bfloat16 first, so on real data the two can order near-equal blocks differently.
* :func:`refresh_block` recomputes the summaries of the block holding the token at a device position from
  the cache (at most ``block_size`` keys), exactly as :meth:`sparsebench.fastdecode.cache.StaticKVCache._store`
  does (min/max bit for bit; the float32 sum up to summation order). Recomputing rather than folding in the
  new key keeps the update idempotent (replayed steps, restored snapshots).

Both run compiled on CUDA tensors and under Triton's interpreter on CPU tensors (tests); neither
synchronises with the host, so both can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from sparsebench.errors import DependencyError, UsageError
from sparsebench.kernels.topp import triton_usable
from sparsebench.kernels.triton_support import HAVE_TRITON as _HAVE_TRITON
from sparsebench.kernels.triton_support import jit as _jit
from sparsebench.kernels.triton_support import tl, triton

__all__ = ["GROUP_REDUCE_CODES", "kernels_usable", "quest_scores", "refresh_block"]

#: Group reductions the scoring kernel applies (names as in :data:`sparsebench.policy.GROUP_REDUCTIONS`).
GROUP_REDUCE_CODES = {"max": 0, "sum": 1, "mean": 2}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
#: Blocks scored per program: a [64, D] min tile and max tile (32 KB at D = 128 in bf16).
_BLOCKS_PER_PROGRAM = 64


def kernels_usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels can run on these tensors: triton present, CUDA (or the interpreter on CPU),
    a dtype they load and a power-of-two head dim from 16 to 256."""
    if not _HAVE_TRITON or not tensors:
        return False
    d = tensors[0].shape[-1]
    return (triton_usable(tensors[0].device) and all(t.dtype in _DTYPES for t in tensors)
            and d >= 16 and d <= 256 and d & (d - 1) == 0)


if _HAVE_TRITON:

    def _score_kernel(
        q_ptr,
        kmin_ptr,
        kmax_ptr,
        out_ptr,
        n_kv_heads,
        n_blocks,
        stride_qb,
        stride_qh,
        stride_qd,
        stride_sb,
        stride_sh,
        stride_sn,
        stride_sd,
        stride_ob,
        stride_oh,
        stride_on,
        GROUP: tl.constexpr,
        GROUP_PAD: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        BLOCK_N: tl.constexpr,
        REDUCE: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """Scores of blocks ``[program_id(1) * BLOCK_N, ...)`` of (sequence, kv head) ``program_id(0)``.

        The group's ``GROUP`` query rows (padded to ``GROUP_PAD`` for ``tl.dot``) are split into their
        positive and negative parts; one product with the block maxima, one with the minima. ``min_ptr``
        and ``max_ptr`` share strides (the cache allocates them alike; the launcher checks).
        """
        bh = tl.program_id(0)
        tile = tl.program_id(1)
        b = bh // n_kv_heads
        h = bh % n_kv_heads
        rows = tl.arange(0, GROUP_PAD)
        dims = tl.arange(0, HEAD_DIM)
        blocks = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        q = tl.load(q_ptr + b.to(tl.int64) * stride_qb + (h * GROUP + rows).to(tl.int64)[:, None] * stride_qh
                    + dims[None, :] * stride_qd, mask=rows[:, None] < GROUP, other=0.0)
        q = q.to(kmax_ptr.dtype.element_ty)
        # Both dot operands must be the summaries' dtype. Not tl.maximum/tl.minimum with zero: Triton 3.6 (the
        # H200's) promotes their bfloat16 operands to float32 and then rejects the fp32 x bf16 tl.dot; 3.9
        # (the CPU tests', interpreter included) does not promote, so only a 3.6 compile showed it. tl.where
        # keeps the dtype; the casts keep it whatever a Triton version's promotion rules are
        # (tests/test_fused_attention.py compiles every dtype pair for sm_90 without a GPU).
        q_pos = tl.where(q > 0, q, 0.0).to(q.dtype)
        q_neg = tl.where(q < 0, q, 0.0).to(q.dtype)
        summary = (b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh
                   + blocks.to(tl.int64)[:, None] * stride_sn + dims[None, :] * stride_sd)
        live = blocks[:, None] < n_blocks
        kmax = tl.load(kmax_ptr + summary, mask=live, other=0.0)
        kmin = tl.load(kmin_ptr + summary, mask=live, other=0.0)
        s = tl.dot(q_pos, tl.trans(kmax.to(q.dtype)), input_precision=DOT_PRECISION)
        s = tl.dot(q_neg, tl.trans(kmin.to(q.dtype)), acc=s, input_precision=DOT_PRECISION)  # [GROUP_PAD, BLOCK_N]
        in_group = rows[:, None] < GROUP
        if REDUCE == 0:
            score = tl.max(tl.where(in_group, s, float("-inf")), axis=0)
        else:
            score = tl.sum(tl.where(in_group, s, 0.0), axis=0)
            if REDUCE == 2:
                score = score / GROUP
        tl.store(out_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + blocks * stride_on, score,
                 mask=blocks < n_blocks)

    def _refresh_kernel(
        k_ptr,
        pos_ptr,
        kmin_ptr,
        kmax_ptr,
        ksum_ptr,
        n_kv_heads,
        stride_kb,
        stride_kh,
        stride_kt,
        stride_kd,
        stride_sb,
        stride_sh,
        stride_sn,
        stride_sd,
        stride_ub,
        stride_uh,
        stride_un,
        stride_ud,
        BLOCK_SIZE: tl.constexpr,
        HEAD_DIM: tl.constexpr,
        MINMAX: tl.constexpr,
        SUM: tl.constexpr,
    ):
        """Summaries of the block holding token ``pos_ptr[0]`` for (sequence, kv head) ``program_id(0)``,
        over its tokens up to that position: min/max (``MINMAX``, strides ``stride_s*``) and the float32
        sum (``SUM``, strides ``stride_u*``)."""
        bh = tl.program_id(0)
        b = bh // n_kv_heads
        h = bh % n_kv_heads
        pos = tl.load(pos_ptr)
        block = pos // BLOCK_SIZE
        tok = block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        dims = tl.arange(0, HEAD_DIM)
        ok = (tok <= pos)[:, None]
        keys = tl.load(k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
                       + tok.to(tl.int64)[:, None] * stride_kt + dims[None, :] * stride_kd, mask=ok, other=0.0)
        if MINMAX:
            at = b.to(tl.int64) * stride_sb + h.to(tl.int64) * stride_sh + block.to(tl.int64) * stride_sn
            tl.store(kmin_ptr + at + dims * stride_sd, tl.min(tl.where(ok, keys, float("inf")), axis=0))
            tl.store(kmax_ptr + at + dims * stride_sd, tl.max(tl.where(ok, keys, float("-inf")), axis=0))
        if SUM:
            at = b.to(tl.int64) * stride_ub + h.to(tl.int64) * stride_uh + block.to(tl.int64) * stride_un
            tl.store(ksum_ptr + at + dims * stride_ud, tl.sum(tl.where(ok, keys.to(tl.float32), 0.0), axis=0))

else:  # pragma: no cover
    _score_kernel = _refresh_kernel = None


def _require(*tensors: torch.Tensor) -> None:
    if not _HAVE_TRITON:
        raise DependencyError("the Quest kernels need triton: pip install 'sparsebench[triton]'")
    if not kernels_usable(*tensors):
        raise UsageError(f"the Quest kernels run on CUDA tensors (CPU only under TRITON_INTERPRET=1) of float16, "
                         f"bfloat16 or float32 with a power-of-two head dim from 16 to 256; got "
                         f"{[(str(t.device), str(t.dtype), tuple(t.shape)) for t in tensors]}")


def quest_scores(query: torch.Tensor, key_min: torch.Tensor, key_max: torch.Tensor,
                 group_reduce: str = "max") -> torch.Tensor:
    """``[B, Hkv, N]`` float32 Quest scores: the upper bound of each query head, reduced over its GQA group.

    ``query`` is ``[B, Hq, 1, D]`` (or ``[B, Hq, D]``); ``key_min``/``key_max`` ``[B, Hkv, N, D]`` with equal
    strides (any: the cache's sliced views are fine). One launch, no host synchronisation.
    """
    q = query[:, :, 0] if query.dim() == 4 else query
    _require(q, key_min, key_max)
    if group_reduce not in GROUP_REDUCE_CODES:
        raise UsageError(f"unknown group reduction {group_reduce!r}; choose one of {', '.join(GROUP_REDUCE_CODES)}")
    if key_min.dim() != 4 or key_min.shape != key_max.shape or key_min.stride() != key_max.stride():
        raise UsageError(f"key_min {tuple(key_min.shape)} and key_max {tuple(key_max.shape)} must be [B, Hkv, N, D] "
                         "tensors of equal strides")
    if key_min.dtype != key_max.dtype:
        raise UsageError(f"key_min and key_max must share a dtype, got {key_min.dtype} and {key_max.dtype}")
    b, hkv, n, d = key_min.shape
    if q.dim() != 3 or q.shape[0] != b or q.shape[2] != d or q.shape[1] % hkv:
        raise UsageError(f"query {tuple(query.shape)} does not fit summaries {tuple(key_min.shape)}: "
                         "need [B, Hq, 1, D] with Hq a multiple of Hkv")
    group = q.shape[1] // hkv
    out = torch.empty((b, hkv, n), dtype=torch.float32, device=q.device)
    if b * hkv * n == 0:
        return out
    tile = _BLOCKS_PER_PROGRAM if n > 16 else 16
    _jit(_score_kernel)[(b * hkv, triton.cdiv(n, tile))](
        q, key_min, key_max, out, hkv, n, *q.stride(), *key_min.stride(), *out.stride(),
        GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)), HEAD_DIM=d, BLOCK_N=tile,
        REDUCE=GROUP_REDUCE_CODES[group_reduce],
        DOT_PRECISION="ieee" if key_min.dtype == torch.float32 else "tf32", num_warps=4,
    )
    return out


def refresh_block(keys: torch.Tensor, position: torch.Tensor, block_size: int, *,
                  key_min: torch.Tensor | None = None, key_max: torch.Tensor | None = None,
                  key_sum: torch.Tensor | None = None) -> None:
    """Recompute, in place, the summaries of the block holding token ``position`` (``[1]`` int64 on the
    device) from ``keys`` ``[B, Hkv, T, D]``: ``key_min``/``key_max`` (keys' dtype, equal strides) and/or
    ``key_sum`` (float32), each ``[B, Hkv, N, D]``. One launch, no host synchronisation."""
    _require(keys)
    if (key_min is None) != (key_max is None):
        raise UsageError("refresh_block updates key_min and key_max together")
    if block_size < 1 or block_size & (block_size - 1):
        raise UsageError(f"refresh_block needs a power-of-two block size, got {block_size}")
    b, hkv, _, d = keys.shape
    minmax = key_min is not None and key_max is not None
    if minmax and (key_min.stride() != key_max.stride() or key_min.dtype != keys.dtype):  # type: ignore[union-attr]
        raise UsageError("key_min and key_max must share strides and the keys' dtype")
    if key_sum is not None and key_sum.dtype != torch.float32:
        raise UsageError(f"key_sum must be float32, got {key_sum.dtype}")
    if b * hkv == 0 or (not minmax and key_sum is None):
        return
    dummy = keys
    mm = key_min if minmax else dummy
    _jit(_refresh_kernel)[(b * hkv,)](
        keys, position, mm, key_max if minmax else dummy, key_sum if key_sum is not None else dummy, hkv,
        *keys.stride(), *(mm.stride() if minmax else (0, 0, 0, 0)),  # type: ignore[union-attr]
        *(key_sum.stride() if key_sum is not None else (0, 0, 0, 0)),
        BLOCK_SIZE=block_size, HEAD_DIM=d, MINMAX=minmax, SUM=key_sum is not None, num_warps=4,
    )
