"""Quest (Tang et al., 2024): query-aware top-k pages by an upper bound on the attention score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparsebench.kernels.quest_kernels import kernels_usable, quest_scores
from sparsebench.kernels.topk import MAX_N, topk_mask, topk_select
from sparsebench.params import param
from sparsebench.policy import GROUP_REDUCTIONS, Policy, Requirements, SelectionContext, reduce_groups
from sparsebench.selection import Selection


def quest_upper_bound(query: torch.Tensor, key_min: torch.Tensor, key_max: torch.Tensor) -> torch.Tensor:
    """Per-block bound ``sum_d max(q_d * min_d, q_d * max_d)`` on ``q . k`` for any key in the block.

    ``query`` is ``[B, Hkv, G, D]``; ``key_min``/``key_max`` are ``[B, Hkv, N, D]``; returns
    ``[B, Hkv, G, N]``. ``max(q*lo, q*hi) = relu(q)*hi + min(q, 0)*lo`` turns the bound into two
    matrix products instead of a ``[.., N, D]`` broadcast.
    """
    if key_max.dtype in (torch.float16, torch.bfloat16) and key_max.is_cuda:
        # Half-precision summaries on a GPU: matmuls in their dtype (fp32 accumulation) rather than fp32
        # copies of the whole summary tensors, which cost more than the ranking they feed.
        q = query.to(key_max.dtype)
        high = q.clamp(min=0) @ key_max.transpose(-1, -2)
        return high.float() + (q.clamp(max=0) @ key_min.transpose(-1, -2)).float()
    q = query.float()
    return q.clamp(min=0) @ key_max.float().transpose(-1, -2) + q.clamp(max=0) @ key_min.float().transpose(-1, -2)


@dataclass
class Quest(Policy):
    """Query-aware top-k blocks ranked by the Quest upper bound from per-block key min/max.

    GQA: each query head of a kv head's group scores every block; the group's scores are combined by
    `group_reduce` (default ``max``: a block is kept if any head of the group bounds it high), then the
    top-k blocks are kept for that kv head. The budget is in tokens (`budget`) or, when `budget` is not
    given, a fraction of the current context (`budget_frac`); both round up to whole blocks.

    Where the Triton kernels serve the tensors (CUDA; the interpreter in tests), scoring is one launch
    (:func:`sparsebench.kernels.quest_kernels.quest_scores`: the same bound in float32, without the torch
    GPU path's bfloat16 rounding of its two halves) and the top-k one more
    (:func:`sparsebench.kernels.topk.topk_select`), which also adds the newest block the engine always
    attends and writes the block lists the Triton backend reads, so its ``plan()`` launches nothing.
    Elsewhere the torch path below; both keep the lowest index among tied scores (torch.topk on CPU: any).
    """

    name = "quest"
    full_budget_params: ClassVar[dict[str, Any]] = {"budget_frac": 1.0}
    budget_param = "budget_frac"
    sweep: ClassVar[dict[str, tuple[Any, ...]]] = {"budget_frac": (0.1, 0.2, 0.3, 0.4, 0.6)}
    requires = Requirements(summaries=frozenset({"minmax"}))

    budget: int | None = param(None, "token budget per kv head; overrides --budget-frac when given", min=1)
    budget_frac: float = param(
        0.25, "budget as a fraction of the current context", min=0.0, max=1.0, min_inclusive=False
    )
    group_reduce: str = param("max", "how a GQA group's query heads combine block scores",
                              choices=GROUP_REDUCTIONS)

    def select(self, ctx: SelectionContext) -> Selection:
        k = ctx.budget_blocks(self.budget, None if self.budget is not None else self.budget_frac)
        if k >= ctx.n_blocks:
            return ctx.full()
        key_min, key_max = ctx.summaries["key_min"], ctx.summaries["key_max"]
        if ctx.n_blocks <= MAX_N and kernels_usable(ctx.query, key_min, key_max):
            return topk_select(quest_scores(ctx.query, key_min, key_max, self.group_reduce), k, keep_newest=True)
        bound = quest_upper_bound(ctx.grouped_query(), key_min, key_max)
        scores = reduce_groups(bound, self.group_reduce)
        # The sorting-free Triton kernel on CUDA (lowest index wins a tie), torch.topk on CPU.
        return Selection(topk_mask(scores, k))
