"""Per-block key summaries, maintained incrementally as tokens are appended.

The keys and values themselves live in the model's own cache (a Hugging Face ``DynamicCache`` in the
teacher-forced engine): the attention function sees the full ``[B, Hkv, T, D]`` tensors after the
append. This module keeps, per layer, only what policies asked for, e.g. Quest's elementwise key
min/max per block. An append of ``t`` tokens recomputes at most the one partial block it extends plus
the ``t`` new tokens: never the whole cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparsebench.selection import n_blocks_for


@dataclass
class LayerSummaries:
    """Summaries of one layer's keys: ``key_min``/``key_max``/``key_sum`` ``[B, Hkv, capacity, D]``."""

    kinds: frozenset[str]
    block_size: int
    n_tokens: int = 0
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, keys: torch.Tensor) -> None:
        """Bring the summaries up to date with ``keys`` ``[B, Hkv, T, D]`` (all cached keys, T grows)."""
        total = keys.shape[2]
        if total < self.n_tokens:
            raise RuntimeError(f"key cache shrank from {self.n_tokens} to {total} tokens; call reset()")
        if total == self.n_tokens:
            return
        bs = self.block_size
        first = self.n_tokens // bs  # first block touched by this append (may be partial)
        last = n_blocks_for(total, bs)
        self._ensure_capacity(keys, last)
        chunk = keys[:, :, first * bs : total]
        pad = (last - first) * bs - chunk.shape[2]
        b, h, _, d = keys.shape
        if "minmax" in self.kinds:
            lo = torch.nn.functional.pad(chunk, (0, 0, 0, pad), value=float("inf"))
            hi = torch.nn.functional.pad(chunk, (0, 0, 0, pad), value=float("-inf"))
            self.tensors["key_min"][:, :, first:last] = lo.view(b, h, last - first, bs, d).amin(3)
            self.tensors["key_max"][:, :, first:last] = hi.view(b, h, last - first, bs, d).amax(3)
        if "mean" in self.kinds:
            padded = torch.nn.functional.pad(chunk.float(), (0, 0, 0, pad))
            self.tensors["key_sum"][:, :, first:last] = padded.view(b, h, last - first, bs, d).sum(3)
        self.n_tokens = total

    def crop(self, n_tokens: int) -> None:
        """Forget every token from ``n_tokens`` on (the KV cache was rolled back after a speculation).

        The partial block the cut leaves is recomputed by the next :meth:`update`, which always restarts
        from the block holding token ``self.n_tokens``.
        """
        self.n_tokens = min(self.n_tokens, n_tokens)

    def view(self) -> dict[str, torch.Tensor]:
        """The summaries of the ``ceil(n_tokens / block_size)`` live blocks (``key_mean`` derived)."""
        n = n_blocks_for(self.n_tokens, self.block_size)
        out = {name: t[:, :, :n] for name, t in self.tensors.items() if name != "key_sum"}
        if "mean" in self.kinds:
            sizes = torch.full((n,), float(self.block_size), device=self.tensors["key_sum"].device)
            sizes[-1] = self.n_tokens - (n - 1) * self.block_size
            out["key_mean"] = self.tensors["key_sum"][:, :, :n] / sizes[:, None]
        return out

    def _ensure_capacity(self, keys: torch.Tensor, blocks: int) -> None:
        current = next(iter(self.tensors.values())).shape[2] if self.tensors else 0
        if blocks <= current:
            return
        capacity = max(blocks, 2 * current, 64)  # amortised growth: O(1) reallocations per doubling
        b, h, _, d = keys.shape
        specs = {"key_min": keys.dtype, "key_max": keys.dtype} if "minmax" in self.kinds else {}
        if "mean" in self.kinds:
            specs["key_sum"] = torch.float32
        for name, dtype in specs.items():
            grown = torch.zeros(b, h, capacity, d, dtype=dtype, device=keys.device)
            if name in self.tensors:
                grown[:, :, :current] = self.tensors[name]
            self.tensors[name] = grown


class BlockSummaryStore:
    """Summaries for every layer that a policy reads; empty (and free) when no policy asked."""

    def __init__(self, kinds: frozenset[str], block_size: int) -> None:
        self.kinds = kinds
        self.block_size = block_size
        self._layers: dict[int, LayerSummaries] = {}

    def update(self, layer: int, keys: torch.Tensor) -> None:
        if not self.kinds:
            return
        if layer not in self._layers:
            self._layers[layer] = LayerSummaries(self.kinds, self.block_size)
        self._layers[layer].update(keys)

    def view(self, layer: int) -> dict[str, torch.Tensor]:
        return self._layers[layer].view() if layer in self._layers else {}

    def crop(self, n_tokens: int) -> None:
        """Every layer forgets the tokens from ``n_tokens`` on (see :meth:`LayerSummaries.crop`)."""
        for layer in self._layers.values():
            layer.crop(n_tokens)

    def reset(self) -> None:
        self._layers.clear()
