"""One CUDA graph per block count: capture the decode step, or say exactly why it cannot be captured.

A graph recorded for ``n_blocks`` replays for every token of that block: the step reads ``token``,
``position`` and ``kv_len`` from device buffers and advances them itself. What the graph freezes are the
host-side values the policy saw at capture (``n_tokens``, ``step``): a budget given as a fraction of the
context (``quest:budget_frac``, ``streamingllm:window_frac``) is computed from the ``n_tokens`` of the
block's first step, so it can differ from eager decoding by at most one block. Stateful policies that
change Python state between steps do not see those changes in a replay.

Before capturing, each block count gets two eager warm-up steps on the capture stream (compilation,
autotuning, lazily allocated workspaces), the second with ``torch.cuda.set_sync_debug_mode("error")``,
so that a host synchronisation is reported with the phase it happened in (the policy's ``select``, the
backend's ``plan`` or ``run``, ...) instead of as a capture failure deep inside CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparsebench.fastdecode.engine import FastDecoder
from sparsebench.fastdecode.timing import EventTimer, PhaseTracker
from sparsebench.kernels.base import AttentionBackend


class GraphCaptureError(RuntimeError):
    """A decode step (or speculation round) cannot be captured; the message names the phase responsible."""


def graph_blocker(decoder: FastDecoder) -> str | None:
    """Why this configuration cannot use CUDA graphs at all (before trying), or None."""
    return cuda_graph_blocker(decoder.device, decoder.backend)


def cuda_graph_blocker(device: torch.device, backend: AttentionBackend) -> str | None:
    """Why steps on ``device`` through ``backend`` cannot be captured at all (before trying), or None."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if not backend.capabilities.cuda_graph_safe:
        return (f"backend {backend.name!r} is not CUDA-graph safe (its Capabilities.cuda_graph_safe is False: "
                "it reads selection sizes on the host)")
    return None


def _culprit(decoder: FastDecoder, phase: str | None) -> str:
    policy, backend = decoder.policy.name, decoder.backend.name
    return {
        "select": f"policy {policy!r} (select)",
        "plan": f"backend {backend!r} (plan)",
        "attention": f"backend {backend!r} (run)",
        "summaries": "the engine's block-summary update",
        "draft": "the self-draft step",
    }.get(phase or "", f"the decode step (policy {policy!r}, backend {backend!r})")


@dataclass
class StepGraphs:
    """Captured decode steps by block count: plain ones for timing, instrumented ones for the breakdown."""

    decoder: FastDecoder
    instrumented: bool = True
    """Also capture graphs with CUDA events at the phase switches (turned off if that capture fails)."""
    notes: list[str] = field(default_factory=list)
    plain: dict[int, torch.cuda.CUDAGraph] = field(default_factory=dict)
    timed: dict[int, tuple[torch.cuda.CUDAGraph, EventTimer]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device=self.decoder.device)

    def prepare(self, steps: int) -> None:
        """Capture every block count the next ``steps`` steps visit; the decoder's state is restored after."""
        d = self.decoder
        start = d.snapshot()
        try:
            for _ in range(steps):
                n_blocks = d.begin_step()
                if n_blocks not in self.plain:
                    self._capture(n_blocks)
                d.end_step()
        finally:
            d.restore(start)
            d.timer = PhaseTracker()

    def _capture(self, n_blocks: int) -> None:
        d = self.decoder
        snap = d.snapshot()
        d.position.fill_(d.n_tokens)
        tracker = PhaseTracker()
        d.timer = tracker
        self.stream.wait_stream(torch.cuda.current_stream(d.device))
        with torch.cuda.stream(self.stream):
            d._step()  # warm-up: compilation and autotuning may synchronise, that is fine here
            d.position.fill_(d.n_tokens)
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                d._step()
            except RuntimeError as exc:
                raise GraphCaptureError(f"{_culprit(d, tracker.phase)} synchronizes with the host inside a decode "
                                        f"step ({first_line(exc)}), so the step cannot be captured in a CUDA graph"
                                        ) from exc
            finally:
                torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.current_stream(d.device).wait_stream(self.stream)
        d.restore(snap)
        self.plain[n_blocks] = self._record(tracker)
        if self.instrumented:
            timer = EventTimer(external=True)
            try:
                self.timed[n_blocks] = (self._record(timer), timer)
            except (RuntimeError, TypeError) as exc:
                self.instrumented = False
                self.timed.clear()
                self.notes.append(f"could not capture CUDA events inside the graph ({first_line(exc)}); the "
                                  "breakdown comes from an eager pass instead")
        d.restore(snap)

    def _record(self, timer: EventTimer | PhaseTracker) -> torch.cuda.CUDAGraph:
        d = self.decoder
        d.timer = timer
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                d._step()
        except RuntimeError as exc:
            if isinstance(timer, EventTimer):
                raise
            raise GraphCaptureError(f"CUDA-graph capture of the decode step failed in {_culprit(d, timer.phase)} "
                                    f"({first_line(exc)})") from exc
        finally:
            d.timer = PhaseTracker()
        return graph


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for one-line notes and errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
