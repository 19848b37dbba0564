"""The one place sparsebench meets transformers: a registered attention function.

We register ``"sparsebench"`` with transformers' ``AttentionInterface`` (and the matching mask builder
with ``AttentionMaskInterface``) and switch a model to it with ``set_attn_implementation``; no model
source is patched. Any decoder-only model whose attention goes through that interface works (Llama,
Qwen2, Gemma 3, ...). While no router is active the function is plain SDPA, so a model switched to it
still computes exactly what it did before.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_NAME = "sparsebench"


class AttentionRouter(Protocol):
    """Decides, per call, how a layer attends. Returns ``[B, Hq, Q, D]`` or None for dense SDPA."""

    def attention(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        scaling: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor | None: ...


_ACTIVE: contextvars.ContextVar[AttentionRouter | None] = contextvars.ContextVar("sparsebench_router", default=None)


def dense_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float,
    softcap: float | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Exact dense attention honouring the model's mask; returns ``[B, Hq, Q, D]``."""
    if softcap is None:
        out, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
        return out.transpose(1, 2)
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    v = value.repeat_interleave(groups, dim=1).float()
    scores = torch.tanh((query.float() @ k.transpose(-1, -2)) * scaling / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask if attention_mask.dtype != torch.bool else \
            scores.masked_fill(~attention_mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v).to(query.dtype)


def sparsebench_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered attention function (transformers' calling convention; output ``[B, Q, Hq, D]``)."""
    if scaling is None:
        scaling = module.head_dim**-0.5  # the models we serve pass their own; this is the fallback
    router = _ACTIVE.get()
    out = None
    if router is not None:
        out = router.attention(
            module.layer_idx, query, key, value,
            scaling=scaling, sliding_window=sliding_window, softcap=softcap,
        )
    if out is None:
        out = dense_attention(module, query, key, value, attention_mask, scaling=scaling, softcap=softcap,
                              dropout=dropout, **kwargs)
    return out.transpose(1, 2).contiguous(), None


def install() -> None:
    """Register the attention function and its mask builder (idempotent)."""
    AttentionInterface.register(ATTN_NAME, sparsebench_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


@contextlib.contextmanager
def attached(*models: torch.nn.Module) -> Iterator[None]:
    """Within the block, the models' attention goes through ``sparsebench_attention``; restored after.

    A model whose modules are shared with another (a self-draft) may be passed too: switching is
    idempotent.
    """
    install()
    previous = [m.config._attn_implementation for m in models]
    for model in models:
        model.set_attn_implementation(ATTN_NAME)
    try:
        yield
    finally:
        for model, impl in zip(models, previous, strict=True):
            model.set_attn_implementation(impl)


@contextlib.contextmanager
def use_router(router: AttentionRouter | None) -> Iterator[None]:
    """Route attention calls made within the block to ``router`` (cheap: one context-variable set)."""
    token = _ACTIVE.set(router)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def routed(model: torch.nn.Module, router: AttentionRouter) -> Iterator[None]:
    """``attached(model)`` and ``use_router(router)`` together."""
    with attached(model), use_router(router):
        yield


def cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward`` (``cache`` in newer transformers 5.x)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
