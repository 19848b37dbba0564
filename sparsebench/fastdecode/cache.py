"""Static KV cache and static per-block key summaries, written on the device.

Why static: a CUDA graph replays fixed addresses, so every layer's keys and values live in one
preallocated ``[B, Hkv, capacity, D]`` tensor each (capacity rounded up to whole blocks, so a block is
never split and the cache's pages are contiguous for paged kernels), and the policy's summaries in
``[B, Hkv, capacity / block_size, D]`` tensors. A decode step writes at a position held in a device
tensor and refreshes the one block that position falls in, without telling the host anything.

Summary semantics are :mod:`sparsebench.kvcache`'s: ``key_min``/``key_max`` are the elementwise min/max
over the block's existing tokens (the last block partial), ``key_mean`` their mean (sums kept in fp32).
Slots past the written tokens hold zeros, never uninitialised memory: a backend masks them out of the
softmax, and ``0 * garbage`` could be NaN.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.quest_kernels import kernels_usable, refresh_block
from sparsebench.selection import n_blocks_for

_FILL = {"key_min": float("inf"), "key_max": float("-inf"), "key_sum": 0.0}


class StaticKVCache:
    """Keys, values and the requested summaries of ``layers`` layers, for ``capacity`` tokens per sequence."""

    def __init__(self, *, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 block_size: int, dtype: torch.dtype, device: torch.device | str,
                 summaries: frozenset[str] = frozenset(), summary_layers: Iterable[int] = ()) -> None:
        self.block_size = block_size
        self.capacity = n_blocks_for(capacity, block_size) * block_size
        self.max_blocks = self.capacity // block_size
        shape = (batch, kv_heads, self.capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        names = (["key_min", "key_max"] if "minmax" in summaries else []) + (["key_sum"] if "mean" in summaries else [])
        blocks = (batch, kv_heads, self.max_blocks, head_dim)
        self.summaries: dict[int, dict[str, torch.Tensor]] = {
            layer: {name: torch.zeros(blocks, dtype=torch.float32 if name == "key_sum" else dtype, device=device)
                    for name in names}
            for layer in summary_layers
        } if names else {}
        self._offsets = torch.arange(block_size, device=device)
        self._use_kernel: bool | None = None
        """Whether update_summaries launches the Triton kernel (decided on first use)."""

    @staticmethod
    def bytes_needed(*, layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int, block_size: int,
                     dtype: torch.dtype, summaries: frozenset[str], summary_layers: int) -> int:
        """Device bytes a cache of this shape allocates (to skip configurations that cannot fit)."""
        tokens = n_blocks_for(capacity, block_size) * block_size
        item = torch.empty((), dtype=dtype).element_size()
        kv = 2 * layers * batch * kv_heads * tokens * head_dim * item
        per_block = batch * kv_heads * (tokens // block_size) * head_dim
        per_entry = (2 * item if "minmax" in summaries else 0) + (4 if "mean" in summaries else 0)
        return kv + summary_layers * per_block * per_entry

    def check_fits(self, n_tokens: int) -> None:
        if n_tokens > self.capacity:
            raise UsageError(f"the context would reach {n_tokens} tokens but the static KV cache holds "
                             f"{self.capacity}; build the engine with a larger max_tokens")

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor, positions: torch.Tensor) -> None:
        """Store ``key``/``value`` ``[B, Hkv, T, D]`` at token ``positions`` ``[T]`` (int64, on the device)."""
        self.keys[layer].index_copy_(2, positions, key)
        self.values[layer].index_copy_(2, positions, value)

    def view(self, layer: int, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the first ``n_blocks`` blocks (views, ``[B, Hkv, n_blocks * block_size, D]``)."""
        end = n_blocks * self.block_size
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def refresh_summaries(self, layer: int, start: int, end: int) -> None:
        """Recompute the summaries of every block holding a token in ``[start, end)`` (prefill, host ints)."""
        if layer not in self.summaries or end <= start:
            return
        bs = self.block_size
        first, last = start // bs, n_blocks_for(end, bs)
        keys = self.keys[layer][:, :, first * bs : last * bs]
        valid = (torch.arange(first * bs, last * bs, device=keys.device) < end).view(1, 1, -1, 1)
        self._store(layer, keys, valid, slice(first, last))

    def update_summaries(self, layer: int, position: torch.Tensor) -> None:
        """Recompute the summaries of the block holding token ``position`` (``[1]`` int64 on the device).

        Recomputing the whole block from the cache (``block_size`` keys) rather than folding in the new
        key keeps the update idempotent, so replaying a step (warm-up, a second timed pass) is harmless.
        Where the Triton kernels serve the cache (CUDA) that is one launch for every summary
        (:func:`sparsebench.kernels.quest_kernels.refresh_block`) instead of about ten torch ops per layer;
        the result is the same (min/max bit for bit, the float32 sum up to summation order).
        """
        if layer not in self.summaries:
            return
        keys = self.keys[layer]
        if self._use_kernel is None:
            self._use_kernel = kernels_usable(keys) and (self.block_size & (self.block_size - 1)) == 0
        if self._use_kernel:
            target = self.summaries[layer]
            refresh_block(keys, position, self.block_size, key_min=target.get("key_min"),
                          key_max=target.get("key_max"), key_sum=target.get("key_sum"))
            return
        block = torch.div(position, self.block_size, rounding_mode="floor")
        tokens = block * self.block_size + self._offsets
        keys = self.keys[layer].index_select(2, tokens)
        self._store(layer, keys, (tokens <= position).view(1, 1, -1, 1), block)

    def _store(self, layer: int, keys: torch.Tensor, valid: torch.Tensor, blocks: slice | torch.Tensor) -> None:
        b, h, t, d = keys.shape
        for name, target in self.summaries[layer].items():
            masked = torch.where(valid, keys if name != "key_sum" else keys.float(), _FILL[name])
            grouped = masked.view(b, h, t // self.block_size, self.block_size, d)
            value = {"key_min": grouped.amin, "key_max": grouped.amax, "key_sum": grouped.sum}[name](3)
            if isinstance(blocks, slice):
                target[:, :, blocks] = value
            else:
                target.index_copy_(2, blocks, value)

    def summary_view(self, layer: int, n_blocks: int, kv_len: torch.Tensor) -> dict[str, torch.Tensor]:
        """The live blocks' summaries, as :meth:`sparsebench.kvcache.LayerSummaries.view` gives them.

        ``key_mean`` divides by each block's token count, taken from ``kv_len`` (``[B]`` on the device)
        so that a graph recorded for one token count stays right for every token of its last block.
        """
        if layer not in self.summaries:
            return {}
        out = {name: t[:, :, :n_blocks] for name, t in self.summaries[layer].items() if name != "key_sum"}
        if "key_sum" in self.summaries[layer]:
            starts = torch.arange(n_blocks, device=kv_len.device) * self.block_size
            sizes = (kv_len.view(-1, 1) - starts).clamp(1, self.block_size).float()  # [B, N]
            out["key_mean"] = self.summaries[layer]["key_sum"][:, :, :n_blocks] / sizes[:, None, :, None]
        return out

    def fill_random(self, n_tokens: int, generator: torch.Generator | None = None) -> None:
        """Random keys/values at positions ``[0, n_tokens)`` and their summaries (speed runs: no prefill)."""
        self.check_fits(n_tokens)
        for layer in range(len(self.keys)):
            self.keys[layer][:, :, :n_tokens].normal_(generator=generator)
            self.values[layer][:, :, :n_tokens].normal_(generator=generator)
            self.refresh_summaries(layer, 0, n_tokens)
