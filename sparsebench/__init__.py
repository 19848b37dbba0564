"""sparsebench: compare sparse-attention policies for LLM decoding on equal terms."""

from __future__ import annotations

__version__ = "0.1.0"
