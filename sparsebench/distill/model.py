"""The distilled draft as a model: which target layers it starts from, how it is built, what it costs.

Why the draft is built from the target's own config: with the same width, heads, rotary settings and
vocabulary, the draft is an ordinary model of the target's architecture with fewer layers, so
``from_pretrained`` loads it, every sparsebench code path (KV caches, the attention interface, the
layer-map calibration) works unchanged, and its attention heads line up one to one with the target's,
which is what SpecAttn's per-kv-group head reduction assumes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparsebench.distill.headvocab import head_rows as installed_head_rows
from sparsebench.errors import UsageError

INITS = ("subset", "fresh")


def evenly_spaced_layers(n_target: int, n_draft: int) -> list[int]:
    """``n_draft`` target layer indices spread evenly over ``0 .. n_target - 1``, first and last included.

    Why first and last: the first layers build the token representation the embeddings expect and the
    last ones map back to the output head's space; a draft that keeps both starts close to the target's
    output distribution. With more draft than target layers some target layers repeat.
    """
    if n_draft < 1 or n_target < 1:
        raise ValueError(f"need at least one layer on each side, got {n_target} target and {n_draft} draft")
    if n_draft == 1:
        return [n_target - 1]
    return [round(j * (n_target - 1) / (n_draft - 1)) for j in range(n_draft)]


def decoder_of(model: nn.Module) -> nn.Module:
    """The base transformer of a Hugging Face causal LM: the child holding ``layers`` and ``norm``."""
    base = getattr(model, "model", None)
    if isinstance(base, nn.Module) and isinstance(getattr(base, "layers", None), nn.ModuleList) \
            and isinstance(getattr(base, "norm", None), nn.Module):
        return base
    raise UsageError(f"cannot distil {type(model).__name__}: a draft is built from a decoder-only Hugging Face "
                     "causal LM with its layers at .model.layers and a final .model.norm (llama, qwen2, gemma3 "
                     "text and similar)")


@dataclass
class BuiltDraft:
    """A freshly built draft and what it was built from."""

    model: nn.Module
    source_layers: list[int]
    """``source_layers[j]``: the target layer draft layer ``j`` was initialised from (``subset``) and whose
    attention it is matched to (both inits)."""
    frozen: list[str]
    """Names of the parameters kept frozen (the shared embeddings, final norm and head)."""


def build_draft(target: nn.Module, n_layers: int, *, init: str = "subset", share_embeddings: bool = True,
                seed: int = 0) -> BuiltDraft:
    """A ``n_layers``-layer draft of ``target``'s architecture, on ``target``'s device, in float32.

    ``init="subset"`` copies evenly spaced target layers (:func:`evenly_spaced_layers`); ``"fresh"`` keeps
    the architecture's own random initialisation (seeded by ``seed``). Either way the embeddings, final
    norm and output head start as copies of the target's; ``share_embeddings`` freezes them (they are
    then the target's exactly, and stay so), otherwise they are trained too. Copies rather than shared
    tensors: the saved draft must load on its own with ``from_pretrained``.
    """
    if init not in INITS:
        raise UsageError(f"--init must be one of {', '.join(INITS)}, got {init!r}")
    base = decoder_of(target)
    config = copy.deepcopy(target.config.get_text_config())
    n_target = int(config.num_hidden_layers)
    sources = evenly_spaced_layers(n_target, n_layers)
    config.num_hidden_layers = n_layers
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:  # Gemma 3's sliding/full pattern follows the layers the draft mirrors
        config.layer_types = [layer_types[i] for i in sources]
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    device = next(target.parameters()).device
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device)
    draft_base = decoder_of(draft)
    with torch.no_grad():
        if init == "subset":
            for j, src in enumerate(sources):
                draft_base.layers[j].load_state_dict(base.layers[src].state_dict())
        shared = {"input": (draft.get_input_embeddings(), target.get_input_embeddings()),
                  "norm": (draft_base.norm, base.norm),
                  "output": (draft.get_output_embeddings(), target.get_output_embeddings())}
        for mine, theirs in shared.values():
            mine.load_state_dict(theirs.state_dict())
    frozen: list[str] = []
    if share_embeddings:
        frozen_ids = {id(p) for mine, _ in shared.values() for p in mine.parameters()}
        for name, param in draft.named_parameters(remove_duplicate=False):  # a tied head under both names
            if id(param) in frozen_ids:
                param.requires_grad_(False)
                frozen.append(name)
    if getattr(target, "generation_config", None) is not None:
        draft.generation_config = copy.deepcopy(target.generation_config)
    return BuiltDraft(draft, sources, frozen)


def flops_per_token(model: nn.Module, context: int, *, head_rows: int | None = None) -> float:
    """Forward FLOPs of one decoded token with ``context`` tokens already cached.

    Counted: every linear layer of the decoder layers and the output head (2 FLOPs per weight), plus
    attention's ``q.K`` and ``p.V`` over the context (``4 * heads * head_dim`` per cached token and layer;
    sliding-window layers see at most their window). Why the head: a 49152 x 576 head is a fifth of
    smollm2-135m's per-token FLOPs, and a small draft shares it at full size unless it has a reduced head
    (``--head-vocab K``): then only its ``K`` rows count. ``head_rows`` gives that ``K`` for a model whose
    reduced head is not installed (None: what the installed head computes, see
    :func:`~sparsebench.distill.headvocab.head_rows`). Embedding lookups, norms and activations are a
    rounding error and not counted.
    """
    text = model.config.get_text_config()
    layers = decoder_of(model).layers
    linear = sum(m.weight.numel() for layer in layers for m in layer.modules() if isinstance(m, nn.Linear))
    rows = head_rows if head_rows is not None else installed_head_rows(model)
    head = rows * int(model.get_output_embeddings().weight.shape[1])
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    types: Sequence[str] = getattr(text, "layer_types", None) or ["full_attention"] * len(layers)
    window = getattr(text, "sliding_window", None)
    attention = sum(4 * heads * head_dim * (min(context, window) if t == "sliding_attention" and window else context)
                    for t in types)
    return float(2 * (linear + head) + attention)


def cost_ratio(draft: nn.Module, target: nn.Module, contexts: Sequence[int], *,
               draft_head_rows: int | None = None) -> list[dict[str, Any]]:
    """Per context length: both models' GFLOPs per token, the head rows each computes, and how many times
    cheaper the draft is (``draft_head_rows``: see :func:`flops_per_token`'s ``head_rows``)."""
    d_rows = draft_head_rows if draft_head_rows is not None else installed_head_rows(draft)
    t_rows = installed_head_rows(target)
    rows = []
    for context in contexts:
        d, t = flops_per_token(draft, context, head_rows=d_rows), flops_per_token(target, context)
        rows.append({"context_tokens": int(context), "draft_gflops_per_token": d / 1e9,
                     "target_gflops_per_token": t / 1e9, "target_over_draft": t / d,
                     "draft_head_rows": d_rows, "target_head_rows": t_rows})
    return rows
