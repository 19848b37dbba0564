"""The backend contract: compute attention over exactly the selected KV blocks, and count the reads.

A backend never knows which policy chose the blocks. It declares what it can serve
(:class:`Capabilities`) and, for a configuration it cannot serve, returns the reasons, so ``--backend
auto`` can fall back and an explicit ``--backend NAME`` fails with a message that says why.
"""

from __future__ import annotations

import abc
import importlib.util
from dataclasses import dataclass
from typing import ClassVar

import torch

from sparsebench.selection import Selection


@dataclass(frozen=True)
class Capabilities:
    """What a backend can serve. ``head_dims=None`` means any head dimension."""

    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    head_dims: frozenset[int] | None = None
    multi_row_queries: bool = False
    """Several query rows per sequence, each with its own selection (speculative verification)."""
    cuda_graph_safe: bool = False
    softcap: bool = False


@dataclass(frozen=True)
class AttentionPlan:
    """What a backend's :meth:`AttentionBackend.plan` produced; backends subclass it to add their data."""

    selection: Selection
    block_size: int
    n_tokens: int
    kv_len: torch.Tensor | None = None


@dataclass(frozen=True)
class AttendResult:
    """Attention output and what producing it read."""

    out: torch.Tensor
    """``[B, Hq, Q, D]`` in the query's dtype."""
    tokens_read: torch.Tensor
    """``[B, Hkv]`` KV tokens actually read per (sequence, kv head); stays on the device."""


def cuda_package_unavailable(package: str, install: str, *, no_cuda: str = "no CUDA device is visible") -> str | None:
    """Why a backend built on ``package`` (a CUDA-only kernel library) cannot run here, or None."""
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed ({install})"
    if not torch.cuda.is_available():
        return no_cuda
    return None


class AttentionBackend(abc.ABC):
    """Base class of block-sparse attention backends."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run in this environment at all (missing package, no CUDA), or None."""
        return None

    @classmethod
    def reasons_to_reject(
        cls, *, device: torch.device | str, dtype: torch.dtype, head_dim: int, softcap: bool = False
    ) -> list[str]:
        """Reasons this backend cannot serve the configuration; empty when it can."""
        reasons = []
        env = cls.unavailable_reason()
        if env:
            reasons.append(env)
        caps = cls.capabilities
        dev_type = torch.device(device).type
        if dev_type not in caps.devices:
            reasons.append(f"device {dev_type!r} not supported (supports {sorted(caps.devices)})")
        if dtype not in caps.dtypes:
            names = sorted(str(d).removeprefix("torch.") for d in caps.dtypes)
            reasons.append(f"dtype {str(dtype).removeprefix('torch.')} not supported (supports {names})")
        if caps.head_dims is not None and head_dim not in caps.head_dims:
            reasons.append(f"head dim {head_dim} not supported (supports {sorted(caps.head_dims)})")
        if softcap and not caps.softcap:
            reasons.append("attention logit soft-capping not supported")
        return reasons

    def plan(
        self,
        selection: Selection,
        *,
        block_size: int,
        n_tokens: int,
        kv_len: torch.Tensor | None = None,
    ) -> AttentionPlan:
        """Turn a selection into what :meth:`run` reads (page lists, compacted indices, a FlashInfer plan).

        Why a separate step: planning is where block-sparse decode loses its speed (host-side CSR
        construction, ``plan()`` calls), so engines time it apart from the kernel, and a backend may
        reuse one plan for several layers. The default keeps the selection as it is. ``n_tokens`` is the
        host's view of the context length (the key tensor's token capacity when ``kv_len`` is given).
        """
        return AttentionPlan(selection=selection, block_size=block_size, n_tokens=n_tokens, kv_len=kv_len)

    @abc.abstractmethod
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
        """Attention of ``query`` over the blocks ``plan`` describes (see :meth:`attend` for shapes)."""

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        selection: Selection,
        *,
        block_size: int,
        scaling: float,
        softcap: float | None = None,
        kv_len: torch.Tensor | None = None,
    ) -> AttendResult:
        """``softmax(q K_S^T * scaling) V_S`` over the selected blocks ``S`` of each (sequence, kv head).

        ``query`` is ``[B, Hq, Q, D]``; ``key``/``value`` are ``[B, Hkv, T, D]`` holding every cached
        token (block ``j`` is tokens ``[j*block_size, (j+1)*block_size)``, the last one partial). The
        query heads of a GQA group read their kv head's selection.

        ``kv_len`` (``[B]`` int32 on the device, optional) serves static caches: ``T`` is then a capacity
        (``n_blocks * block_size`` slots of a preallocated cache) and only tokens ``< kv_len[b]`` exist.
        Why a device tensor rather than slicing: a CUDA graph recorded once per block count replays for
        every token of that block, so the length must be data, not shape.
        """
        plan = self.plan(selection, block_size=block_size, n_tokens=key.shape[2], kv_len=kv_len)
        return self.run(plan, query, key, value, scaling=scaling, softcap=softcap)
