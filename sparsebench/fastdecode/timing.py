"""Phase timers for the decode step: where the time of one step goes.

The engine calls ``timer.switch(phase)`` at every phase boundary of a step (``draft``, ``summaries``,
``select``, ``plan``, ``attention``, ``other``; ``None`` ends the step). A timer attributes the time
between two switches to the phase the first one opened.

* :class:`EventTimer` records a CUDA event at each switch. Recorded eagerly, an interval is GPU
  timeline time, which includes any wait for the host to launch the next kernel. Recorded while a CUDA
  graph is captured (``external=True``), the events become nodes of the graph and every replay re-times
  the phases of the graph itself: no launch gaps.
* :class:`WallTimer` uses the host clock (CPU runs, where work is synchronous).
* :class:`PhaseTracker` only remembers the current phase, so an error can say which phase raised it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

PHASES = ("draft", "summaries", "select", "plan", "attention", "other")


class Timer(Protocol):
    def switch(self, phase: str | None) -> None: ...


class PhaseTracker:
    """No timing: remembers the phase last opened (``None`` outside a step)."""

    def __init__(self) -> None:
        self.phase: str | None = None

    def switch(self, phase: str | None) -> None:
        self.phase = phase


def _attribute(phases: Sequence[str | None], stamps_ms: Sequence[float]) -> dict[str, float]:
    """Milliseconds per phase from the phase each switch opened and the switch times."""
    totals: dict[str, float] = {}
    for phase, t0, t1 in zip(phases, stamps_ms, stamps_ms[1:], strict=False):
        if phase is not None:
            totals[phase] = totals.get(phase, 0.0) + (t1 - t0)
    return totals


class EventTimer:
    """CUDA events at phase switches; :meth:`collect` after the stream has finished the recorded work."""

    def __init__(self, *, external: bool = False) -> None:
        self.external = external
        self.phases: list[str | None] = []
        self.events: list[torch.cuda.Event] = []

    def switch(self, phase: str | None) -> None:
        event = torch.cuda.Event(enable_timing=True, external=self.external)
        event.record()
        self.phases.append(phase)
        self.events.append(event)

    def collect(self) -> dict[str, float]:
        """Milliseconds per phase over everything recorded (or, in a graph, over its last replay)."""
        if not self.events:
            return {}
        first = self.events[0]
        stamps = [first.elapsed_time(e) for e in self.events]
        return _attribute(self.phases, stamps)

    def clear(self) -> None:
        self.phases.clear()
        self.events.clear()


class WallTimer:
    """Host clock at phase switches (CPU: the work is done when the call returns)."""

    def __init__(self) -> None:
        self.phases: list[str | None] = []
        self.stamps: list[float] = []

    def switch(self, phase: str | None) -> None:
        self.phases.append(phase)
        self.stamps.append(time.perf_counter() * 1e3)

    def collect(self) -> dict[str, float]:
        return _attribute(self.phases, self.stamps)

    def clear(self) -> None:
        self.phases.clear()
        self.stamps.clear()


def add_into(totals: dict[str, float], part: dict[str, float]) -> None:
    for phase, ms in part.items():
        totals[phase] = totals.get(phase, 0.0) + ms


def time_repeated(device: torch.device, body: Callable[[], object], times: int) -> float:
    """Milliseconds for ``times`` calls of ``body``: CUDA events around the whole loop on a GPU (no host
    synchronisation between calls, as a decode loop runs), wall clock elsewhere."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(times):
            body()
        return (time.perf_counter() - t0) * 1e3
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    begin.record()
    for _ in range(times):
        body()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)
