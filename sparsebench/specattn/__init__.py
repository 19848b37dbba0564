"""SpecAttn: the draft model's attention decides which KV blocks the target model reads.

Why a package of its own: the policy needs pieces that are useful on their own and testable apart
from a model, namely the mapping of target layers to draft layers (:mod:`.layermap`) and the
sorting-free top-p selection of blocks (:mod:`sparsebench.kernels.topp`).
"""

from __future__ import annotations

from sparsebench.specattn.layermap import LayerMap, align_layers, kl_matrix

__all__ = ["LayerMap", "align_layers", "kl_matrix"]
