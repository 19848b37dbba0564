"""Capturing one call in a CUDA graph, the way the speed engine and the benchmarks replay kernels.

Why a warm-up on a side stream first: Triton compiles (and torch allocates) on a kernel's first call, and
neither may happen inside a capture; PyTorch requires the warm-up on a stream other than the default one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def capture(fn: Callable[[], T], *, warmup: int = 1) -> tuple[torch.cuda.CUDAGraph, T]:
    """Run ``fn`` ``warmup`` times on a side stream, then capture one call; returns the graph and that call's
    output, whose tensors are the graph's static outputs (``graph.replay()`` rewrites them in place)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
