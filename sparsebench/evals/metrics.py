"""Observers of the decode loop: KV reads, perplexity, timing.

KV reduction is counted from what the backend reports it read (``AttendResult.tokens_read``), never
from what a policy meant to select. Counters stay on the device during a document and are read once
at its end, so observing costs no host synchronisation per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

#: How a layer was served at a decode step.
SPARSE, DENSE_LAYER, SLIDING = "sparse", "dense_layer", "sliding_window"


class KVAccessMeter:
    """Sums, per layer and per sequence of the batch, KV tokens read and KV tokens a dense step would read."""

    def __init__(self) -> None:
        self.read: dict[int, torch.Tensor | int] = {}
        self.dense: dict[int, int] = {}
        self.kind: dict[int, str] = {}

    def observe(self, layer: int, kind: str, tokens_read: torch.Tensor | int, dense_tokens: int) -> None:
        """Record one layer of one decode step.

        ``tokens_read`` is the backend's ``[B, Hkv]`` device tensor, or an int per sequence for layers
        served densely; ``dense_tokens`` is per sequence (kv heads x KV length).
        """
        if isinstance(tokens_read, torch.Tensor):
            tokens_read = tokens_read.sum(-1)  # [B], stays on the device
        self.read[layer] = self.read.get(layer, 0) + tokens_read
        self.dense[layer] = self.dense.get(layer, 0) + dense_tokens
        self.kind[layer] = kind

    def summaries(self, batch: int) -> list[KVAccessSummary]:
        """One summary per sequence of the batch (one host sync for all counters)."""
        layers = sorted(self.read)
        rows = []
        for layer in layers:
            value = self.read[layer]
            per_seq = value.tolist() if isinstance(value, torch.Tensor) else [value] * batch
            rows.append([int(x) for x in per_seq])
        return [
            KVAccessSummary({lay: (rows[i][b], self.dense[lay], self.kind[lay]) for i, lay in enumerate(layers)})
            for b in range(batch)
        ]


@dataclass(frozen=True)
class KVAccessSummary:
    """Per-layer ``(tokens read, dense-equivalent tokens, kind)`` over a document's decode steps."""

    per_layer: dict[int, tuple[int, int, str]]

    def _totals(self, kinds: set[str] | None) -> tuple[int, int]:
        rows = [(r, d) for r, d, k in self.per_layer.values() if kinds is None or k in kinds]
        return sum(r for r, _ in rows), sum(d for _, d in rows)

    @property
    def read_all(self) -> int:
        return self._totals(None)[0]

    @property
    def dense_all(self) -> int:
        return self._totals(None)[1]

    @property
    def read_sparse(self) -> int:
        return self._totals({SPARSE})[0]

    @property
    def dense_sparse(self) -> int:
        return self._totals({SPARSE})[1]

    @property
    def reduction_all(self) -> float:
        """``1 - read / dense`` over every layer (dense and sliding-window layers read in full)."""
        return _reduction(self.read_all, self.dense_all)

    @property
    def reduction_sparse(self) -> float:
        """``1 - read / dense`` over the layers the policy controls: the headline number."""
        return _reduction(self.read_sparse, self.dense_sparse)

    def layer_rows(self) -> list[dict[str, object]]:
        return [
            {"layer": layer, "kind": kind, "read": r, "dense": d, "reduction": _reduction(r, d)}
            for layer, (r, d, kind) in self.per_layer.items()
        ]


def _reduction(read: int, dense: int) -> float:
    return 1.0 - read / dense if dense else 0.0


def perplexity(nll: torch.Tensor | list[float]) -> float:
    """``exp(mean NLL)`` of the scored tokens."""
    values = nll.double() if isinstance(nll, torch.Tensor) else torch.tensor(nll, dtype=torch.float64)
    return math.exp(values.mean().item()) if values.numel() else float("nan")


@dataclass
class StepTimer:
    """Accumulates host wall time per phase (``select``, ``attend``, ``step``).

    On the CPU host time is the time. On a GPU, work is asynchronous, so host time around a launch is
    not kernel time; the GPU engine (later) measures with CUDA events and this timer labels its numbers
    as host time.
    """

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, phase: str, dt: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + dt
