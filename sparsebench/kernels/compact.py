"""A :class:`~sparsebench.selection.Selection` that also carries its compacted block lists.

Why: the ``indices`` mode of the Triton backend reads, per (sequence, kv head), the ascending list of
selected block ids and their count. Compacting the bitmap in ``plan()`` is one more launch per layer
(6-8 µs measured on the H200, as much as a fifth of the sparse step). A selection kernel that knows the
kept set anyway (the fused top-k, :func:`sparsebench.kernels.topk.topk_select`) writes the lists in the
same launch as the bitmap, and the backend's ``plan()`` takes them as they are.

The bitmap stays the source of truth: ``mask`` is always there (the kernel writes it, a few bytes per
block), so metrics, unions and policies that look at it keep working; ``indices``/``counts`` are exactly
its compaction. Operations that change the set (``union``, ``with_blocks``) return a plain
:class:`Selection`, which a backend compacts itself. The backend never learns which policy chose the
blocks: it only sees a selection that is already compacted.

A per-row selection (``mask`` ``[B, Hkv, Q, N]``, one bitmap per query row of a speculative verification)
carries the lists of the *union* of its rows, ``[B, Hkv, N]``: the blocks the decode kernel loads once for all
rows (each row is then masked to its own bitmap). :func:`sparsebench.kernels.verify_select.verify_select`
writes them in the same launch as the rows' bitmaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sparsebench.selection import Selection


@dataclass(frozen=True)
class CompactSelection(Selection):
    """``mask`` ``[B, Hkv, N]`` (or per query row ``[B, Hkv, Q, N]``) plus the ascending block lists of it (of the
    union of its rows) ``indices`` ``[B, Hkv, N]`` (int32, entries past a list's count unspecified) and ``counts``
    ``[B, Hkv]`` (int32), all on one device."""

    indices: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    includes_newest: bool = False
    """Every row already holds block ``N - 1`` (the newest), which engines always add: they may then pass
    the selection on unchanged instead of rebuilding the bitmap (and dropping the lists)."""
    capacity: int | None = None
    """When set, every list holds exactly this many blocks, known on the host without reading ``counts``
    back. Why: a backend that schedules its work on the host from the list lengths (FlashInfer's
    ``plan()``) can then plan once and replay, with no synchronisation per layer
    (:class:`~sparsebench.kernels.flashinfer_backend.FlashInferFixedBackend`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.indices, torch.Tensor) or not isinstance(self.counts, torch.Tensor):
            raise TypeError("a CompactSelection needs its indices and counts tensors")
        lists = (*self.mask.shape[:2], self.mask.shape[-1])  # per-row masks: the union's lists
        if (self.indices.dtype != torch.int32 or self.counts.dtype != torch.int32
                or tuple(self.indices.shape) != lists
                or tuple(self.counts.shape) != tuple(self.mask.shape[:2])
                or self.indices.device != self.mask.device or self.counts.device != self.mask.device):
            raise TypeError(f"CompactSelection: indices must be int32 {lists} and counts int32 "
                            f"{tuple(self.mask.shape[:2])} on {self.mask.device}, got {self.indices.dtype} "
                            f"{tuple(self.indices.shape)} and {self.counts.dtype} {tuple(self.counts.shape)}")
        if self.capacity is not None and not 0 <= self.capacity <= self.mask.shape[-1]:
            raise TypeError(f"CompactSelection: capacity must be in [0, {self.mask.shape[-1]}], got {self.capacity}")


def compacted(selection: Selection) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(indices, counts)`` when ``selection`` carries them, else None (the backend compacts it)."""
    if isinstance(selection, CompactSelection):
        return selection.indices, selection.counts  # type: ignore[return-value]  # checked in __post_init__
    return None
