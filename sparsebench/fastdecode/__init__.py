"""A GPU decode engine for measuring speed (gpt-fast style) that runs the same policies through the same
backend contract as the teacher-forced evaluation.

Modules, one job each: :mod:`~sparsebench.fastdecode.model` (a compact Llama/Qwen2 decoder),
:mod:`~sparsebench.fastdecode.cache` (static KV cache and block summaries), :mod:`~sparsebench.fastdecode.draft`
(self-drafts and layer maps), :mod:`~sparsebench.fastdecode.engine` (prefill and the decode step),
:mod:`~sparsebench.fastdecode.graphs` (one CUDA graph per block count), :mod:`~sparsebench.fastdecode.measure`
(warm-up, instrumented and timed passes) and :mod:`~sparsebench.fastdecode.timing` (phase timers).
``sparsebench bench decode`` (:mod:`sparsebench.bench.decode`) is the command line.
"""

from __future__ import annotations

from sparsebench.fastdecode.draft import SelfDraft
from sparsebench.fastdecode.engine import FastDecoder
from sparsebench.fastdecode.model import PRESETS, FastModel, ModelSpec

__all__ = ["PRESETS", "FastDecoder", "FastModel", "ModelSpec", "SelfDraft"]
