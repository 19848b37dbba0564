"""Measuring decode speed: warm-up, an instrumented pass for the breakdown, timed passes for the headline.

Every pass decodes the same ``steps`` tokens from the same starting point (the decoder is restored
before each), so passes are comparable and the KV cache they write is the same.

* Headline (tokens/s, ms/step): the median of ``repeats`` un-instrumented passes, timed with two CUDA
  events around the whole pass (CUDA-graph replays when the configuration allows, else eager steps), or
  with the host clock on a CPU.
* Breakdown (per-phase ms/step): one instrumented pass. With CUDA graphs, graphs captured with CUDA events
  at every phase switch are replayed one step at a time; without, an eager pass records the same events
  and an interval then includes the GPU waiting for the host to launch the next kernel. On a CPU, the
  host clock. It always says which.
* KV reads: the backend's ``tokens_read`` of the last timed pass, summed on the device, read once.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sparsebench.evals.metrics import KVAccessSummary
from sparsebench.fastdecode.engine import FastDecoder, Snapshot
from sparsebench.fastdecode.graphs import GraphCaptureError, StepGraphs, graph_blocker
from sparsebench.fastdecode.timing import EventTimer, PhaseTracker, WallTimer, add_into, time_repeated


@dataclass
class Measurement:
    """What :func:`measure` found for one (decoder, steps)."""

    mode: str
    """``"cuda-graphs"`` or ``"eager"``: how the headline passes ran."""
    steps: int
    batch: int
    pass_ms: list[float]
    """Wall time of each timed pass (all ``steps`` steps)."""
    breakdown_ms: dict[str, float]
    """Milliseconds per step per phase, from the instrumented pass."""
    breakdown_source: str
    kv: list[KVAccessSummary]
    tokens: torch.Tensor
    """``[B, steps]`` greedy tokens of the last timed pass (CPU)."""
    notes: list[str] = field(default_factory=list)

    @property
    def ms_per_step(self) -> float:
        return statistics.median(self.pass_ms) / self.steps

    @property
    def tokens_per_second(self) -> float:
        return self.batch * 1000.0 / self.ms_per_step

    @property
    def instrumented_ms_per_step(self) -> float:
        return sum(self.breakdown_ms.values())


@torch.inference_mode()
def measure(decoder: FastDecoder, steps: int, *, cuda_graphs: bool = True, repeats: int = 3,
            log: Callable[[str], None] | None = None) -> Measurement:
    """Decode ``steps`` tokens per sequence from the decoder's current state, several times (module docstring)."""
    say = log or (lambda _msg: None)
    decoder.cache.check_fits(decoder.n_tokens + steps)
    start = decoder.snapshot()
    notes: list[str] = []
    graphs = _try_graphs(decoder, steps, notes) if cuda_graphs else None
    _run_pass(decoder, start, steps, graphs)  # warm-up: compilation, autotuning, allocator, graph upload
    breakdown, source = _instrumented_pass(decoder, start, steps, graphs, notes)
    for note in notes:
        say(f"sparsebench: {note}")
    pass_ms = [_run_pass(decoder, start, steps, graphs) for _ in range(max(1, repeats))]
    return Measurement(
        mode="cuda-graphs" if graphs is not None else "eager", steps=steps, batch=decoder.batch, pass_ms=pass_ms,
        breakdown_ms={k: v / steps for k, v in breakdown.items()}, breakdown_source=source,
        kv=decoder.kv_summaries(), tokens=decoder.generated_tokens(start.n_tokens, steps), notes=notes,
    )


def _try_graphs(decoder: FastDecoder, steps: int, notes: list[str]) -> StepGraphs | None:
    blocker = graph_blocker(decoder)
    if blocker is not None:
        notes.append(f"{blocker}; decoding eagerly")
        return None
    graphs = StepGraphs(decoder)
    try:
        graphs.prepare(steps)
    except GraphCaptureError as exc:
        torch.cuda.synchronize(decoder.device)
        notes.append(f"{exc}; decoding eagerly")
        return None
    notes.extend(graphs.notes)
    return graphs


def _step(decoder: FastDecoder, graphs: StepGraphs | None) -> int:
    n_blocks = decoder.begin_step()
    if graphs is not None:
        graphs.plain[n_blocks].replay()
    else:
        decoder._step()
    decoder.end_step()
    return n_blocks


def _run_pass(decoder: FastDecoder, start: Snapshot, steps: int, graphs: StepGraphs | None) -> float:
    """Milliseconds for ``steps`` un-instrumented steps from ``start``."""
    decoder.restore(start)
    decoder.reset_counters()
    decoder.timer = PhaseTracker()
    return time_repeated(decoder.device, lambda: _step(decoder, graphs), steps)


def _instrumented_pass(decoder: FastDecoder, start: Snapshot, steps: int, graphs: StepGraphs | None,
                       notes: list[str]) -> tuple[dict[str, float], str]:
    """Summed milliseconds per phase over ``steps`` steps, and where the numbers come from."""
    decoder.restore(start)
    decoder.reset_counters()
    if graphs is not None and graphs.instrumented:
        totals: dict[str, float] = {}
        try:
            for _ in range(steps):
                n_blocks = decoder.begin_step()
                graph, timer = graphs.timed[n_blocks]
                graph.replay()
                torch.cuda.synchronize(decoder.device)
                add_into(totals, timer.collect())
                decoder.end_step()
            return totals, "CUDA events captured inside the CUDA graphs, replayed one step at a time"
        except RuntimeError as exc:
            notes.append(f"reading CUDA events recorded inside the graphs failed ({type(exc).__name__}: {exc}); "
                         "the breakdown comes from an eager pass instead")
            decoder.restore(start)
            decoder.reset_counters()
    cuda = decoder.device.type == "cuda"
    timer = EventTimer() if cuda else WallTimer()
    decoder.timer = timer
    try:
        for _ in range(steps):
            _step(decoder, None)
    finally:
        decoder.timer = PhaseTracker()
    if cuda:
        torch.cuda.synchronize(decoder.device)
        return timer.collect(), ("eager pass with CUDA events at phase switches (intervals include GPU idle "
                                 "time waiting for host launches)")
    return timer.collect(), "eager pass, host clock (CPU)"
