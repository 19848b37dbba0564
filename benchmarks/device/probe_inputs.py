"""The decode-attention problem the session-9 device probes share: ``bench attention``'s own inputs
(:func:`sparsebench.bench.attention.make_problem`: 32 q / 8 kv heads x 128, bf16, 16-token blocks) with a
random 22% of each kv head's blocks kept, as ascending lists. The ninth session's raw files of
``kv_layout_probe.py`` and ``merge_tail_probe.py`` were taken with their own ``torch.randn`` inputs of the same
shapes (commit 7639f96); the kernels' speed does not depend on the values."""

from __future__ import annotations

import argparse
import functools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparsebench.bench.attention import make_problem, parse_args
from sparsebench.bench.topp import time_gpu
from sparsebench.kernels.triton_decode import compact_selection


def probe_args(doc: str | None) -> argparse.Namespace:
    """``--out`` (JSON folder), ``--contexts`` (comma-separated tokens) and ``--repeats`` of a probe."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--repeats", type=int, default=50)
    return ap.parse_args()


@functools.cache
def _flush_buffer() -> torch.Tensor:
    return torch.empty(256 * 2**20 // 4, dtype=torch.float32, device="cuda")


def flushed_us(fn: Callable[[], Any], repeats: int) -> float:
    """Median µs of ``fn`` over CUDA-graph replays, the L2 flushed before each by reading 256 MB (as
    ``bench attention --flush read``)."""
    return statistics.median(time_gpu(fn, warmup=5, repeats=repeats, flush=_flush_buffer(), flush_by_reading=True))


def decode_problem(n_tokens: int, *, keep: float = 0.22, device: str = "cuda",
                   seed: int = 0) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(problem, selection [1, Hkv, N] bool, lists, counts)`` for a context of ``n_tokens``."""
    args = parse_args(["--out", "unused", "--keep", str(keep)])
    pb = make_problem(n_tokens, args, device, torch.Generator().manual_seed(seed))
    top = pb.scores.topk(round(keep * pb.n_blocks), -1).indices
    sel = torch.zeros(pb.scores.shape, dtype=torch.bool, device=pb.scores.device).scatter_(-1, top, True)
    idx, cnt = compact_selection(sel)
    return pb, sel, idx, cnt
