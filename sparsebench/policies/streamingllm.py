"""StreamingLLM (Xiao et al., 2023): attention sinks plus a window of recent tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparsebench.params import param
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection


@dataclass
class StreamingLLM(Policy):
    """Keep the first `sink_tokens` tokens and the most recent window; query-independent.

    Granularity is the KV block: every block overlapping the sinks or the window is read, so the budget
    is rounded up to whole blocks (the KV reduction reported counts those whole blocks).
    """

    name = "streamingllm"
    full_budget_params: ClassVar[dict[str, Any]] = {"window_frac": 1.0}
    budget_param = "window_frac"
    sweep: ClassVar[dict[str, tuple[Any, ...]]] = {"window_frac": (0.1, 0.2, 0.3, 0.4, 0.6)}

    sink_tokens: int = param(4, "attention-sink tokens kept at the start of the context", min=0)
    window_tokens: int = param(256, "most recent tokens kept (the recent window)", min=1)
    window_frac: float | None = param(
        None, "recent window as a fraction of the current context; overrides --window-tokens",
        min=0.0, max=1.0, min_inclusive=False,
    )

    def reset(self) -> None:
        self._memo: tuple[tuple[Any, ...], Selection] | None = None

    def select(self, ctx: SelectionContext) -> Selection:
        # Query-independent: every sparse layer of a step gets the same blocks, so the bitmap is built
        # once per step and shared (on a GPU that is ~15 us of small kernels per layer saved). Backends
        # only read selections, and the engine's "newest block" addition is the same for every layer.
        # A CUDA-graph capture gets its own bitmap (allocated in the graph's memory pool, which outlives
        # this memo), never one left by an eager step whose memory may be reused after replacement.
        capturing = ctx.query.is_cuda and torch.cuda.is_current_stream_capturing()
        key = (ctx.n_tokens, ctx.n_blocks, ctx.block_size, ctx.batch, ctx.num_kv_heads, ctx.query.device, capturing)
        memo = getattr(self, "_memo", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        selection = self._select(ctx)
        self._memo = (key, selection)
        return selection

    def _select(self, ctx: SelectionContext) -> Selection:
        window = (
            math.ceil(self.window_frac * ctx.n_tokens) if self.window_frac is not None else self.window_tokens
        )
        first_recent_block = max(0, ctx.n_tokens - window) // ctx.block_size
        sink_blocks = -(-self.sink_tokens // ctx.block_size)
        blocks = torch.arange(ctx.n_blocks, device=ctx.query.device)
        keep = (blocks < sink_blocks) | (blocks >= first_recent_block)
        return Selection(keep.expand(ctx.batch, ctx.num_kv_heads, ctx.n_blocks).clone())
