"""The one type that flows from every policy to every backend.

A :class:`Selection` is a boolean block bitmap of shape ``[batch, kv_heads, n_blocks]`` on the cache's
device: ``True`` means "read this KV block". Why a bitmap rather than index lists: policies build it
without host synchronisation (top-k -> scatter, windows -> comparisons), union and "always keep the
newest block" are elementwise ops, and each backend converts it to whatever it reads (gathered indices
for the torch backend, page lists for FlashInfer) in one place.

Speculative verification feeds several query rows per sequence, each with its own block set: a
per-row selection has shape ``[batch, kv_heads, rows, n_blocks]`` (:meth:`Selection.stack_rows`), and
only backends declaring ``Capabilities.multi_row_queries`` accept it. Policies still return the 3-D form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Selection:
    """Which KV blocks each (sequence, kv head) attends: ``mask[b, h, j]`` for block ``j``.

    Or, per query row, ``mask[b, h, r, j]`` (see the module docstring).
    """

    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool or self.mask.dim() not in (3, 4):
            raise TypeError(
                f"Selection.mask must be a bool tensor [batch, kv_heads, n_blocks] (or [batch, kv_heads, rows, "
                f"n_blocks] per query row), got {self.mask.dtype} of shape {tuple(self.mask.shape)}"
            )

    @property
    def per_row(self) -> bool:
        """True for a per-query-row selection ``[batch, kv_heads, rows, n_blocks]``."""
        return self.mask.dim() == 4

    @property
    def n_blocks(self) -> int:
        return self.mask.shape[-1]

    @classmethod
    def full(cls, batch: int, kv_heads: int, n_blocks: int, device: torch.device | str) -> Selection:
        """Every block: the dense selection."""
        return cls(torch.ones(batch, kv_heads, n_blocks, dtype=torch.bool, device=device))

    @classmethod
    def from_indices(cls, indices: torch.Tensor, n_blocks: int) -> Selection:
        """From block indices ``[batch, kv_heads, k]``; entries < 0 are padding and ignored."""
        b, h, _ = indices.shape
        mask = torch.zeros(b, h, n_blocks + 1, dtype=torch.bool, device=indices.device)
        # Padding (-1) is routed to an extra column that is dropped afterwards.
        idx = torch.where(indices < 0, torch.full_like(indices, n_blocks), indices)
        mask.scatter_(-1, idx, True)
        return cls(mask[..., :n_blocks])

    @classmethod
    def stack_rows(cls, rows: list[Selection], n_blocks: int) -> Selection:
        """One per-row selection from the rows' own selections, oldest row first.

        Row ``r`` may cover fewer blocks than ``n_blocks`` (an earlier query position sees a shorter
        context); its missing blocks are not selected, which is what causality asks of them.
        """
        padded = [torch.nn.functional.pad(row.mask, (0, n_blocks - row.n_blocks)) for row in rows]
        return cls(torch.stack(padded, dim=2))

    def with_blocks(self, *blocks: int) -> Selection:
        """This selection plus the given blocks for every (sequence, head)."""
        mask = self.mask.clone()
        mask[..., list(blocks)] = True
        return Selection(mask)

    def union(self, other: Selection) -> Selection:
        return Selection(self.mask | other.mask)

    def counts(self) -> torch.Tensor:
        """Selected blocks per (sequence, kv head), ``[batch, kv_heads]``."""
        return self.mask.sum(-1)


def n_blocks_for(n_tokens: int, block_size: int) -> int:
    """Number of blocks covering ``n_tokens`` tokens (the last one may be partial)."""
    return -(-n_tokens // block_size)


def blocks_for_budget(tokens: int, block_size: int, n_blocks: int) -> int:
    """How many whole blocks a budget of ``tokens`` buys, at least 1 and at most ``n_blocks``."""
    return max(1, min(n_blocks, -(-tokens // block_size)))
