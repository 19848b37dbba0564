"""Built-in policies (registered by :mod:`sparsebench.builtin`, the built-in plugin)."""

from __future__ import annotations

from sparsebench.policies.dense import Dense
from sparsebench.policies.quest import Quest
from sparsebench.policies.specattn import OracleTopP, SpecAttn
from sparsebench.policies.streamingllm import StreamingLLM

__all__ = ["Dense", "OracleTopP", "Quest", "SpecAttn", "StreamingLLM"]
