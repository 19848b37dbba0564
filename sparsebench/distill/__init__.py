"""Distilled drafts: a few-layer model with the target's tokenizer, trained to match the target.

Why: SpecAttn needs a draft that both proposes tokens (speculative decoding) and predicts the target's
attention. No pretrained pair sharing a tokenizer is available offline, and a layer-subset self-draft
predicts attention but proposes poor tokens; a draft distilled from the target does both.
:mod:`.model` builds the draft and counts its cost, :mod:`.data` supplies the token stream
(:mod:`.generated` adds text the target writes itself), :mod:`.losses` the objective, :mod:`.train`
the resumable loop, :mod:`.evaluate` the report's measurements and :mod:`.store` the saved directory
(``--draft distilled:NAME``).
"""

from __future__ import annotations

from sparsebench.distill.store import PREFIX, is_distilled_dir, load_distilled
from sparsebench.distill.train import DistillConfig, Distiller

__all__ = ["PREFIX", "DistillConfig", "Distiller", "is_distilled_dir", "load_distilled"]
