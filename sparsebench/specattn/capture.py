"""Capturing a draft model's attention, block by block, while it decodes in lockstep with the target.

The draft runs its own dense attention (SDPA) and, for the layers the target's layer map points at,
also computes the current query's attention probabilities over its own KV cache, summed per KV block
(:func:`~sparsebench.kernels.mass.block_attention_mass`). Nothing else is kept: one ``[B, H, N]`` tensor
per mapped draft layer per step, on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparsebench.kernels.mass import block_attention_mass


@dataclass
class Draft:
    """A draft model paired with a target: which draft layer guides each target layer."""

    model: torch.nn.Module
    layer_map: list[int]
    """``layer_map[i]``: the draft layer whose attention guides target layer ``i``."""
    name: str
    description: str = ""
    """Plain words for the output, e.g. 'self-draft: target layers 0-14 (shares weights)'."""


@dataclass
class DraftAttentionCapture:
    """Attention router for the draft: dense attention, plus block mass of the decode query."""

    block_size: int
    layers: frozenset[int]
    n_tokens: int = 0
    """Tokens in the draft's cache after this step's append (set by the engine before each step)."""
    probs: dict[int, torch.Tensor] = field(default_factory=dict)
    """Draft layer -> ``[B, H_draft, N]`` attention mass per KV block for the current token."""

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                  scaling: float, sliding_window: int | None, softcap: float | None) -> torch.Tensor | None:
        if layer in self.layers and query.shape[2] == 1:  # decode steps only, not the prefill
            n_keys = key.shape[2]
            self.probs[layer] = block_attention_mass(
                query, key, scaling, self.block_size,
                key_offset=self.n_tokens - n_keys,  # a sliding-window layer's cache holds only the window
                total_tokens=self.n_tokens, softcap=softcap,
            )[:, :, 0]
        return None  # the draft itself attends densely
