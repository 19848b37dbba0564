"""SpecAttn (draft-guided sparse attention) and its oracle upper bound.

SpecAttn: during (speculative) decoding the draft model has already attended to the same context. Each
target layer ``i`` is guided by draft layer ``layer_map[i]`` (KL-divergence alignment, see
:mod:`sparsebench.specattn.layermap`); the draft's attention probabilities of the current token,
summed per KV block, pick the smallest block set holding a fraction ``p`` of the mass (sorting-free
top-p, :mod:`sparsebench.kernels.topp`), and the target attends only to those blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparsebench.kernels.topk import topk_mask, topk_select
from sparsebench.kernels.topp import topp_mask_nd, triton_usable
from sparsebench.params import param
from sparsebench.policy import Policy, Requirements, SelectionContext
from sparsebench.selection import Selection

HEAD_REDUCTIONS = ("mean", "max")
#: The p grid both top-p policies sweep (``compare --sweep``), so their Pareto curves share x-positions.
P_SWEEP: tuple[float, ...] = (0.8, 0.9, 0.95, 0.97, 0.99)


def heads_to_kv_groups(mass: torch.Tensor, num_kv_heads: int, how: str) -> torch.Tensor:
    """Map per-head block mass ``[B, H, N]`` onto ``num_kv_heads`` kv heads: ``[B, Hkv, N]``.

    When ``H`` is a multiple of ``Hkv`` (a self-draft has the target's query heads), each kv head takes
    its own group of heads; otherwise (a draft from another model) every kv head takes the reduction over
    all heads, since there is no head correspondence to exploit.
    """
    b, h, n = mass.shape
    if h % num_kv_heads == 0:
        grouped = mass.reshape(b, num_kv_heads, h // num_kv_heads, n)
    else:
        grouped = mass.unsqueeze(1).expand(b, num_kv_heads, h, n)
    return grouped.mean(2) if how == "mean" else grouped.amax(2)


def _select_from_mass(ctx: SelectionContext, mass: torch.Tensor, p: float, select_by: str,
                      budget_frac: float, sink_blocks: int) -> Selection:
    """Top-p (or top-k) blocks of ``mass`` ``[B, Hkv, N]``, plus the first ``sink_blocks`` blocks.

    Top-k where the Triton kernels run (CUDA; the interpreter in tests) is one launch that also adds the newest
    block (which the engine always attends) and writes the block lists the Triton backend reads, as Quest does
    (:func:`~sparsebench.kernels.topk.topk_select`: the kernel's set, lowest index first among ties, the same
    as ``topk_mask``'s there). Elsewhere ``topk_mask`` (``torch.topk`` on CPU), without the newest block.
    """
    if select_by == "topk":
        k = ctx.budget_blocks(None, budget_frac)
        if triton_usable(mass.device):
            selection = topk_select(mass, k, keep_newest=True)
        else:
            selection = Selection(topk_mask(mass, k))
    else:
        selection = Selection(topp_mask_nd(mass, p, check=False))
    if sink_blocks:
        selection = selection.with_blocks(*range(min(sink_blocks, ctx.n_blocks)))
    return selection


@dataclass
class SpecAttn(Policy):
    """Draft-guided top-p: blocks holding a fraction p of the mapped draft layer's attention."""

    name = "specattn"
    requires = Requirements(draft_attention=True)
    full_budget_params: ClassVar[dict[str, Any]] = {"p": 1.0}
    budget_param = "p"
    sweep: ClassVar[dict[str, tuple[Any, ...]]] = {"p": P_SWEEP}

    p: float = param(0.95, "attention mass of the draft to keep (top-p over KV blocks); 1.0 is dense",
                     min=0.0, max=1.0, min_inclusive=False)
    select_by: str = param("topp", "top-p on the draft's attention, or top-k with --budget-frac",
                           choices=("topp", "topk"))
    budget_frac: float = param(0.25, "block budget as a fraction of the context when --select-by topk",
                               min=0.0, max=1.0, min_inclusive=False)
    sink_blocks: int = param(0, "leading blocks always kept (the attention sink), whatever the draft says",
                             min=0)
    head_reduce: str = param("mean", "how the draft heads of a kv group combine", choices=HEAD_REDUCTIONS)

    def select(self, ctx: SelectionContext) -> Selection:
        if self.select_by == "topp" and self.p >= 1.0:
            return ctx.full()  # exact: no block is dropped for rounding in the mass sum
        if ctx.draft_attention is None:
            raise RuntimeError(f"specattn got no draft attention for layer {ctx.layer}; this is an engine bug")
        mass = heads_to_kv_groups(ctx.draft_attention.float(), ctx.num_kv_heads, self.head_reduce)
        return _select_from_mass(ctx, mass, self.p, self.select_by, self.budget_frac, self.sink_blocks)


@dataclass
class OracleTopP(Policy):
    """Top-p over the target's own exact attention this step: the bound any attention predictor can reach."""

    name = "oracle-topp"
    requires = Requirements(exact_scores=True)
    full_budget_params: ClassVar[dict[str, Any]] = {"p": 1.0}
    budget_param = "p"
    sweep: ClassVar[dict[str, tuple[Any, ...]]] = {"p": P_SWEEP}

    p: float = param(0.95, "exact attention mass to keep; 1.0 is dense", min=0.0, max=1.0, min_inclusive=False)
    head_reduce: str = param("mean", "how the query heads of a kv group combine", choices=HEAD_REDUCTIONS)

    def select(self, ctx: SelectionContext) -> Selection:
        if self.p >= 1.0:
            return ctx.full()
        assert ctx.exact_scores is not None
        mass = heads_to_kv_groups(ctx.exact_scores, ctx.num_kv_heads, self.head_reduce)
        return _select_from_mass(ctx, mass, self.p, "topp", 1.0, 0)
