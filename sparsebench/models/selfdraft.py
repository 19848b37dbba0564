"""Self-drafts: a draft model made of a subset of the target's own decoder layers.

Why: draft-guided sparse attention (SpecAttn-style) and speculative decoding need a cheap model that
shares the target's tokenizer and, ideally, its representation. Running only some of the target's
layers gives one with no extra weights. The draft is a separate Hugging Face causal LM object whose
config says it has ``len(layers)`` layers, so it gets its own KV cache of that many layers and every
transformers code path (masks, caches, ``generate``) works unchanged; its parameters are the target's
tensors, shared by reference, so building it allocates no parameter memory.

Spec forms (``self:SPEC`` in the CLI; the ``self:`` prefix is optional here):

* ``0-7`` or ``0-6,23-29`` or ``0,2,5``: target layer indices, ranges inclusive, in increasing order;
* ``every=3``: layers 0, 3, 6, ... ;
* ``first-half``: layers ``0 .. n//2 - 1``;
* ``all``: every layer (the draft then computes exactly the target's logits; useful as a check).
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

from torch import nn

from sparsebench.errors import UsageError

SPEC_EXAMPLES = ("0-7", "0-6,23-29", "0,2,5", "every=3", "first-half", "all")


def _spec_error(spec: str, why: str) -> UsageError:
    examples = ", ".join(f"self:{e}" for e in SPEC_EXAMPLES)
    return UsageError(f"bad self-draft spec {spec!r}: {why}. Valid examples: {examples}")


def parse_layer_spec(spec: str, num_layers: int) -> list[int]:
    """Target layer indices chosen by ``spec`` for a model of ``num_layers`` layers.

    Raises ``UsageError`` (with examples of valid specs) for syntax errors, indices out of range,
    repeated or decreasing indices, and empty selections.
    """
    original = spec
    body = spec.strip()
    body = body.removeprefix("self:").strip()
    if not body:
        raise _spec_error(original, "it is empty")
    if body == "all":
        return list(range(num_layers))
    if body == "first-half":
        half = num_layers // 2
        if half < 1:
            raise _spec_error(original, f"the target has {num_layers} layer(s), too few to halve")
        return list(range(half))
    if m := re.fullmatch(r"every\s*=\s*(\d+)", body):
        step = int(m.group(1))
        if step < 1:
            raise _spec_error(original, "every=K needs K >= 1")
        return list(range(0, num_layers, step))
    layers: list[int] = []
    for part in body.split(","):
        part = part.strip()
        if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", part):
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise _spec_error(original, f"range {part!r} runs backwards; write {hi}-{lo}")
            layers.extend(range(lo, hi + 1))
        elif re.fullmatch(r"\d+", part):
            layers.append(int(part))
        else:
            raise _spec_error(original, f"cannot read {part!r}")
    bad = [i for i in layers if i >= num_layers]
    if bad:
        raise _spec_error(original,
                          f"layer {bad[0]} does not exist; the target has layers 0-{num_layers - 1}")
    for a, b in itertools.pairwise(layers):
        if b <= a:
            raise _spec_error(original, f"layer {b} comes after {a}; list layers once, in increasing order")
    return layers


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing ``module``'s tensors and children, with its own bookkeeping dicts.

    ``copy.copy`` alone would share the ``_modules``/``_parameters``/hook dicts, so replacing a child
    of the copy would also replace it in the target.
    """
    new = copy.copy(module)
    for key, value in vars(new).items():
        if key.startswith("_") and isinstance(value, (dict, set)):
            new.__dict__[key] = copy.copy(value)
    return new


def _decoder(model: nn.Module) -> nn.Module:
    """The base transformer (the child holding ``layers``) of a Hugging Face causal LM."""
    base = getattr(model, "model", None)
    if (isinstance(base, nn.Module) and isinstance(getattr(base, "layers", None), nn.ModuleList)
            and getattr(base, "config", None) is getattr(model, "config", None)):
        return base
    raise UsageError(
        f"cannot build a self-draft from {type(model).__name__}: self-drafts need a decoder-only Hugging "
        "Face causal LM with its layers at .model.layers (llama, qwen2, gemma3 text and similar)"
    )


def build_self_draft(target: Any, spec: str) -> nn.Module:
    """A draft causal LM running the target layers chosen by ``spec`` (see the module docstring).

    ``target`` is a ``LoadedModel`` or a Hugging Face causal LM. The draft shares every parameter and
    buffer with it (embeddings, chosen layers, final norm, head, rotary tables); its config is a copy
    with ``num_hidden_layers`` (and, for models like Gemma 3, ``layer_types``) cut to the chosen layers,
    and each chosen layer is renumbered so that it writes to its own slot of the draft's KV cache.
    ``draft.draft_source_layers[i]`` is the target layer that draft layer ``i`` runs.

    Build it after the target has its final device and dtype: ``draft.to(...)`` on its own would give
    the draft converted copies of the tensors instead of the shared ones.
    """
    model = target if isinstance(target, nn.Module) else getattr(target, "model", None)
    if not isinstance(model, nn.Module):
        raise UsageError(f"cannot build a self-draft from a {type(target).__name__}; pass a loaded model")
    base = _decoder(model)
    config = model.config
    num_layers = int(config.num_hidden_layers)
    chosen = parse_layer_spec(spec, num_layers)

    draft_config = copy.deepcopy(config)
    draft_config.num_hidden_layers = len(chosen)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        draft_config.layer_types = [layer_types[i] for i in chosen]

    layers = []
    for new_idx, src_idx in enumerate(chosen):
        layer = _shallow_copy(base.layers[src_idx])
        _renumber(layer, new_idx, draft_config)
        attn = getattr(layer, "self_attn", None)
        if isinstance(attn, nn.Module):
            attn = _shallow_copy(attn)
            _renumber(attn, new_idx, draft_config)
            layer._modules["self_attn"] = attn
        layers.append(layer)

    draft_base = _shallow_copy(base)
    draft_base._modules["layers"] = nn.ModuleList(layers)
    draft_base.config = draft_config
    draft = _shallow_copy(model)
    _replace_child(draft, base, draft_base)
    draft.config = draft_config
    if getattr(model, "generation_config", None) is not None:
        draft.generation_config = copy.deepcopy(model.generation_config)
    # Plain attributes (not modules), so they do not register the target as a submodule.
    draft.draft_source_layers = list(chosen)
    draft.draft_spec = spec
    _check_shared(model, draft)
    return draft


def _renumber(module: nn.Module, idx: int, config: Any) -> None:
    if hasattr(module, "layer_idx"):
        module.layer_idx = idx
    if hasattr(module, "config"):
        module.config = config


def _replace_child(parent: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, child in parent._modules.items():
        if child is old:
            parent._modules[name] = new
            return
    raise AssertionError(f"{type(old).__name__} is not a direct child of {type(parent).__name__}")


def _check_shared(target: nn.Module, draft: nn.Module) -> None:
    """Guards the no-new-memory promise: every draft tensor must be one of the target's."""
    target_ptrs = {t.data_ptr() for t in target.parameters()} | {b.data_ptr() for b in target.buffers()}
    for name, tensor in [*draft.named_parameters(), *draft.named_buffers()]:
        if tensor.numel() and tensor.data_ptr() not in target_ptrs:
            raise AssertionError(f"self-draft tensor {name} is not shared with the target; this is a bug")
