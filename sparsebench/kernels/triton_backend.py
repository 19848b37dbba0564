"""The ``triton`` attention backend: block-sparse split-K decode kernels that never synchronise with the host.

Importing this module imports neither triton nor the kernels (:mod:`sparsebench.kernels.triton_decode`
loads them on first use), so registering the backend costs nothing on a CPU-only machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.base import (
    AttendResult,
    AttentionBackend,
    AttentionPlan,
    Capabilities,
    cuda_package_unavailable,
)
from sparsebench.kernels.compact import compacted
from sparsebench.selection import Selection

if TYPE_CHECKING:  # the kernels module imports triton; keep that off the import path
    from sparsebench.kernels.triton_decode import KernelConfig

#: Selection modes (see :mod:`sparsebench.kernels.triton_decode`): scan the bitmap in the kernel, or
#: compact it into sorted block lists in ``plan()`` and give every program an equal share of them.
SELECTION_MODES = ("bitmap", "indices")


@dataclass(frozen=True)
class TritonPlan(AttentionPlan):
    """A plan plus, in ``indices`` mode, the device-side block lists ``[B, Hkv, N]`` and counts ``[B, Hkv]``
    (of the union of the query rows' blocks for a per-row selection)."""

    indices: torch.Tensor | None = None
    counts: torch.Tensor | None = None


class TritonBackend(AttentionBackend):
    """Split-K (flash-decoding) block-sparse decode in Triton; plan + run are CUDA-graph capturable.

    ``selection_mode="bitmap"`` has no planning step (each program scans its share of the bitmap and
    loads only selected blocks); ``"indices"`` compacts the bitmap in ``plan()`` (one small kernel) so
    each program loads only useful tiles and the work is split evenly. ``config`` overrides the launch
    parameters (tile, warps, stages, splits), which benchmarks sweep.

    Several query rows (speculative verification) run in the same programs as their GQA group: every
    selected block is loaded once for all rows, each row masked to its own blocks and causally, and the
    tokens read are the union's, as the torch backend counts them.
    """

    name = "triton"
    capabilities: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        head_dims=frozenset({64, 128, 256}),
        multi_row_queries=True,
        cuda_graph_safe=True,
        softcap=True,
    )
    #: The mode ``TritonBackend()`` (and so ``--backend triton``) uses; chosen by ``sparsebench bench attention``.
    default_mode: ClassVar[str] = "indices"

    def __init__(self, selection_mode: str | None = None, config: KernelConfig | None = None) -> None:
        mode = self.default_mode if selection_mode is None else selection_mode
        if mode not in SELECTION_MODES:
            raise UsageError(f"unknown Triton selection mode {mode!r}; choose one of {', '.join(SELECTION_MODES)}")
        self.selection_mode = mode
        self.config = config

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return cuda_package_unavailable(
            "triton", "pip install 'sparsebench[triton]'",
            no_cuda="no CUDA device is visible: the Triton backend runs compiled kernels on NVIDIA GPUs")

    def plan(
        self,
        selection: Selection,
        *,
        block_size: int,
        n_tokens: int,
        kv_len: torch.Tensor | None = None,
    ) -> TritonPlan:
        """Check the block size and, in ``indices`` mode, compact the bitmap on the device (no sync), unless
        the selection already carries its lists (a :class:`~sparsebench.kernels.compact.CompactSelection`; for a
        per-row selection, the lists of its rows' union, as :func:`~sparsebench.kernels.verify_select.verify_select`
        writes them): then no launch at all."""
        from sparsebench.kernels import triton_decode

        triton_decode.check_block_size(block_size)
        if selection.n_blocks != -(-n_tokens // block_size):
            raise UsageError(f"selection has {selection.n_blocks} blocks but {n_tokens} tokens in blocks of "
                             f"{block_size} need {-(-n_tokens // block_size)}")
        indices, counts = self._lists(selection)
        return TritonPlan(selection=selection, block_size=block_size, n_tokens=n_tokens, kv_len=kv_len,
                          indices=indices, counts=counts)

    def _lists(self, selection: Selection) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The block lists and counts the kernel reads in ``indices`` mode: carried by the selection, else
        compacted on the device; ``(None, None)`` in ``bitmap`` mode, where the kernel scans the bitmap."""
        if self.selection_mode != "indices":
            return None, None
        from sparsebench.kernels import triton_decode

        return compacted(selection) or triton_decode.compact_selection(selection.mask)

    def _plan_lists(self, plan: AttentionPlan) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The lists ``run()`` reads: the plan's own, else (bitmap mode, or another backend's plan) compacted
        now, as in :meth:`_lists`."""
        indices, counts = getattr(plan, "indices", None), getattr(plan, "counts", None)
        if indices is None or self.selection_mode != "indices":
            return self._lists(plan.selection)
        return indices, counts

    def run(
        self,
        plan: AttentionPlan,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        scaling: float,
        softcap: float | None = None,
    ) -> AttendResult:
        from sparsebench.kernels import triton_decode

        indices, counts = self._plan_lists(plan)
        out, tokens_read = triton_decode.sparse_decode(
            query, key, value, plan.selection.mask, block_size=plan.block_size, scaling=scaling, softcap=softcap,
            kv_len=plan.kv_len, indices=indices, counts=counts, config=self.config,
        )
        return AttendResult(out, tokens_read)
