"""Speculative decoding with draft-guided sparse verification (SpecAttn used as the paper means it).

Why a package of its own: the loop (:mod:`.decoder`), the acceptance rules (:mod:`.acceptance`) and the
command-line driver (:mod:`.run`: prompts, documents, result rows) are separate concerns, and only the
acceptance rules decide whether the output is exact, so they stay testable without a model.
"""

from __future__ import annotations

from sparsebench.specdec.acceptance import accept_greedy, accept_sampling
from sparsebench.specdec.decoder import SpecDecResult, SpeculationConfig, SpeculativeDecoder

__all__ = ["SpecDecResult", "SpeculationConfig", "SpeculativeDecoder", "accept_greedy", "accept_sampling"]
