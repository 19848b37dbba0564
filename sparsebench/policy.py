"""The policy contract: data in, selection out.

A policy is a dataclass subclass of :class:`Policy` with a class-level ``name`` and parameters declared
with :func:`sparsebench.params.param`. Per decode step and per sparse layer the engine calls
``select(ctx)`` with a :class:`SelectionContext` and gets back a :class:`~sparsebench.selection.Selection`.

Rules a policy follows (the engine relies on them):

* it never touches the model, the tokenizer or the KV tensors beyond what ``ctx`` hands it;
* it declares in ``requires`` what the context must carry (per-block key summaries such as
  ``"minmax"``, the draft model's attention, the exact attention scores of the current query), so the
  cache keeps only what somebody asked for;
* ``select`` does no I/O and no host synchronisation (no ``.item()``, no ``.tolist()``): it must run
  unchanged on a GPU inside a CUDA graph later;
* it need not add the newest block nor handle the first ``dense_layers`` layers: the engine always
  adds the newest block and gives dense layers a full selection without asking.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sparsebench.errors import UsageError
from sparsebench.hookspecs import HOOKSPEC_VERSION
from sparsebench.params import ParamSpec, param_specs
from sparsebench.selection import Selection

#: Per-block key summaries a cache can maintain incrementally, by name.
SUMMARY_KINDS = ("minmax", "mean")


@dataclass(frozen=True)
class Requirements:
    """What a policy needs in its :class:`SelectionContext`."""

    summaries: frozenset[str] = frozenset()
    """Per-block key summaries: ``"minmax"`` (elementwise key min/max, Quest), ``"mean"``."""
    draft_attention: bool = False
    """The draft model's attention for this token, aggregated to KV blocks (SpecAttn)."""
    exact_scores: bool = False
    """The exact attention probabilities of the current query per block (oracle policies)."""

    def __post_init__(self) -> None:
        unknown = set(self.summaries) - set(SUMMARY_KINDS)
        if unknown:
            raise ValueError(f"unknown summary kinds {sorted(unknown)}; known: {SUMMARY_KINDS}")


@dataclass(frozen=True)
class SelectionContext:
    """Everything a policy may look at for one (decode step, layer).

    Shapes use ``B`` batch, ``Hq`` query heads, ``Hkv`` kv heads, ``D`` head dim, ``N`` KV blocks.
    """

    layer: int
    """Index of the model layer (0-based, over all layers of the model)."""
    query: torch.Tensor
    """The current query, ``[B, Hq, 1, D]``, after rotary embedding (what attention will use)."""
    n_tokens: int
    """KV tokens in the cache including the current one; the current position is ``n_tokens - 1``."""
    block_size: int
    n_blocks: int
    """``ceil(n_tokens / block_size)``; block ``n_blocks - 1`` holds the newest token."""
    num_kv_heads: int
    scaling: float
    """The model's own softmax scaling (Gemma 3: ``query_pre_attn_scalar**-0.5``)."""
    step: int
    """Decode step within the document (0 for the first token after the prefill)."""
    summaries: dict[str, torch.Tensor] = field(default_factory=dict)
    """Requested summaries, e.g. ``"key_min"``/``"key_max"`` ``[B, Hkv, N, D]`` (last block partial)."""
    draft_attention: torch.Tensor | None = None
    """``[B, Hkv_or_heads, N]`` block-aggregated draft attention, when requested and available."""
    exact_scores: torch.Tensor | None = None
    """``[B, Hq, N]`` exact attention mass per block of the current query, when requested."""

    @property
    def group_size(self) -> int:
        """Query heads per kv head (GQA)."""
        return self.query.shape[1] // self.num_kv_heads

    @property
    def batch(self) -> int:
        return self.query.shape[0]

    def grouped_query(self) -> torch.Tensor:
        """The query as ``[B, Hkv, group, D]`` in fp32: the layout GQA policies reduce over."""
        b, hq, _, d = self.query.shape
        return self.query.reshape(b, self.num_kv_heads, hq // self.num_kv_heads, d).float()

    def full(self) -> Selection:
        """The dense selection for this context."""
        return Selection.full(self.batch, self.num_kv_heads, self.n_blocks, self.query.device)

    def budget_blocks(self, budget_tokens: int | None, budget_frac: float | None) -> int:
        """Blocks to keep for a budget given in tokens or as a fraction of the context (one is None)."""
        if budget_tokens is not None:
            tokens = budget_tokens
        else:
            assert budget_frac is not None
            tokens = math.ceil(budget_frac * self.n_tokens)
        return max(1, min(self.n_blocks, -(-tokens // self.block_size)))


class Policy(abc.ABC):
    """Base class of every sparse-attention policy (built-in or plugin). Subclasses are dataclasses."""

    name: ClassVar[str]
    """Registry name, used on the command line (``--policy NAME``)."""
    requires: ClassVar[Requirements] = Requirements()
    api_version: ClassVar[str] = HOOKSPEC_VERSION
    description: ClassVar[str] = ""
    """One line for ``sparsebench policies`` (defaults to the docstring's first line)."""
    budget_param: ClassVar[str | None] = None
    """The one float parameter in (0, 1] that sets how much the policy reads (larger reads more), used by
    ``compare --match-kv-reduction`` to bisect budgets; None when the policy has no such knob."""
    sweep: ClassVar[dict[str, tuple[Any, ...]]] = {}
    """Grid of parameter values ``compare --sweep`` runs, for Pareto plots."""
    full_budget_params: ClassVar[dict[str, Any] | None] = None
    """Parameters under which the policy reads every block. The shared test runs every registered
    policy with them and requires dense attention's logits; a policy that leaves it ``None`` fails it."""

    def __post_init__(self) -> None:
        for spec in self.param_specs():
            setattr(self, spec.name, spec.validate(getattr(self, spec.name), self.name))
        self.validate()

    def validate(self) -> None:
        """Cross-parameter checks; raise :class:`UsageError` (override when needed)."""

    @classmethod
    def param_specs(cls) -> tuple[ParamSpec, ...]:
        return param_specs(cls)

    @classmethod
    def summary(cls) -> str:
        if cls.description:
            return cls.description
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else ""

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Policy:
        """Build from a dict of parameter values (unknown names are a clear error)."""
        known = {s.name for s in cls.param_specs()}
        unknown = sorted(set(params) - known)
        if unknown:
            raise UsageError(
                f"policy {cls.name!r} has no parameter(s) {', '.join(unknown)}; "
                f"its parameters: {', '.join(sorted(known)) or 'none'}"
            )
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """Current parameter values, defaults included (goes into every results row)."""
        return {s.name: getattr(self, s.name) for s in self.param_specs()}

    def label(self) -> str:
        """``name:k=v,...`` with the parameters that differ from their defaults."""
        changed = [f"{s.name}={getattr(self, s.name)}" for s in self.param_specs()
                   if getattr(self, s.name) != s.default]
        return self.name + (":" + ",".join(changed) if changed else "")

    def reset(self) -> None:
        """Called before each document; stateful policies clear their state here."""

    @abc.abstractmethod
    def select(self, ctx: SelectionContext) -> Selection:
        """Return which KV blocks to read for this (step, layer). See the module docstring."""


def reduce_groups(scores: torch.Tensor, how: str) -> torch.Tensor:
    """Combine per-query-head block scores ``[B, Hkv, group, N]`` into per-kv-head ``[B, Hkv, N]``.

    Why a choice: a kv head is shared by its group's query heads, so the group must agree on one block
    set. ``max`` keeps a block any head needs (safest for quality), ``sum``/``mean`` favour blocks the
    group needs on aggregate.
    """
    if how == "max":
        return scores.amax(dim=2)
    if how == "sum":
        return scores.sum(dim=2)
    if how == "mean":
        return scores.mean(dim=2)
    raise ValueError(f"unknown group reduction {how!r}")


GROUP_REDUCTIONS = ("max", "sum", "mean")
