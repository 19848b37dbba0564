"""Turning ``--draft`` into a :class:`~sparsebench.specattn.capture.Draft` with its layer map.

``--draft self:SPEC`` builds a self-draft from a subset of the target's own layers (shared weights,
own KV cache); ``distilled:NAME`` (or a directory) loads a draft trained by ``sparsebench distill``; any
other value is loaded like ``--model``. Separate drafts must share the target's tokenizer. With
no ``--draft``, a model alias uses its registry default self-draft and anything else ``self:first-half``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparsebench.data import load_corpus, select_documents, tokenize_documents
from sparsebench.errors import UsageError
from sparsebench.specattn.calibrate import LayerMapResult, load_or_compute_layer_map
from sparsebench.specattn.capture import Draft

CALIBRATION_CORPUS = "wikitext-validation"


@dataclass(frozen=True)
class CalibrationSettings:
    """How the layer map is calibrated (part of its cache key)."""

    dataset: str = CALIBRATION_CORPUS
    docs: int = 4
    seq_len: int = 512
    rows: int = 64
    seed: int = 0


def default_draft_spec(model_name: str) -> str:
    from sparsebench.models import ALIASES

    entry = ALIASES.get(model_name)
    return f"self:{entry.default_self_draft}" if entry is not None else "self:first-half"


def load_draft_model(spec: str, target: Any, *, dtype: torch.dtype, device: str,
                     progress: bool) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """The draft module, its identity (for caches and results) and a plain description of it."""
    from sparsebench.models import build_self_draft, check_same_tokenizer, load_model

    if spec.startswith("self:"):
        draft = build_self_draft(target.model, spec.removeprefix("self:"))
        layers = draft.draft_source_layers
        n_target = target.model.config.get_text_config().num_hidden_layers
        description = (f"self-draft {spec}: {len(layers)} of the target's {n_target} layers ({_ranges(layers)}), "
                       "sharing its weights, with its own KV cache; it predicts attention, it is not trained "
                       "to propose tokens")
        return draft, {"kind": "self", "spec": spec, "layers": layers, "target": target.identity}, description
    if _is_distilled(spec):
        from sparsebench.distill import load_distilled

        loaded = load_distilled(spec, dtype=dtype, device=device, progress=progress)
    else:
        loaded = load_model(spec, dtype=dtype, device=device, progress=progress)
    check_same_tokenizer(target.tokenizer, loaded.tokenizer, target.name, loaded.name)
    n_draft = sum(p.numel() for p in loaded.model.parameters())
    n_target = sum(p.numel() for p in target.model.parameters())
    if n_draft > n_target:
        print(f"sparsebench: warning: the draft {spec} ({n_draft / 1e6:.0f}M parameters) is larger than the "
              f"target {target.name} ({n_target / 1e6:.0f}M); a draft is meant to be cheaper", file=sys.stderr)
    return loaded.model, loaded.identity, f"separate draft model {spec} ({n_draft / 1e6:.0f}M parameters)"


def _is_distilled(spec: str) -> bool:
    """``distilled:NAME`` or a directory written by ``sparsebench distill`` (whose tokenizer may be the
    tiny models' byte tokenizer, which ``load_model`` cannot read from files)."""
    from sparsebench.distill import PREFIX, is_distilled_dir

    return spec.startswith(PREFIX) or is_distilled_dir(Path(spec).expanduser())


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    start = prev = layers[0]
    for cur in [*layers[1:], None]:
        if cur is None or cur != prev + 1:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur if cur is not None else start
        prev = cur if cur is not None else prev
    return ",".join(parts)


def calibration_sequences(tokenizer: Any, settings: CalibrationSettings, *, device: torch.device | str,
                          data_dir: str | None, data_source: str,
                          log: Callable[[str], None]) -> tuple[list[torch.Tensor], dict[str, Any]]:
    corpus = load_corpus(settings.dataset, data_dir=data_dir, source=data_source, log=log)
    docs, _ = tokenize_documents(select_documents(corpus.documents, settings.seed), tokenizer,
                                 settings.seq_len, settings.docs)
    if not docs:
        raise UsageError(f"no calibration document of {settings.dataset!r} has {settings.seq_len} tokens")
    seqs = [torch.tensor([ids], device=device) for _, ids in docs]
    # The cache key names the documents, not where they were read from, so the same corpus found at
    # another path (or through the hub) reuses the map.
    info = {"dataset": settings.dataset, "documents": [d.id for d, _ in docs],
            "seq_len": settings.seq_len, "seed": settings.seed}
    return seqs, info


def resolve_draft(spec: str | None, target: Any, *, dtype: torch.dtype, device: torch.device | str,
                  block_size: int, data_dir: str | None = None, data_source: str = "auto",
                  settings: CalibrationSettings | None = None, progress: bool = True, recompute: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[Draft, LayerMapResult]:
    """Build the draft for ``target`` and its (cached) layer map."""
    from sparsebench.models.registry import cache_root

    log = log or (lambda msg: print(msg, file=sys.stderr))
    settings = settings or CalibrationSettings()
    spec = spec or default_draft_spec(target.name)
    model, draft_id, description = load_draft_model(spec, target, dtype=dtype, device=str(device), progress=progress)
    seqs, calib_info = calibration_sequences(target.tokenizer, settings, device=device, data_dir=data_dir,
                                             data_source=data_source, log=log)
    calib_info["rows"] = settings.rows
    result, path, cached = load_or_compute_layer_map(
        target.model, model, target_id=target.identity, draft_id=draft_id, sequences=seqs,
        calibration=calib_info, block_size=block_size, rows=settings.rows, cache_dir=cache_root() / "layermaps",
        progress=progress, recompute=recompute,
    )
    log(f"sparsebench: draft = {description}")
    log(f"sparsebench: layer map {'loaded from' if cached else 'computed and saved to'} {path}: "
        f"{result.target_to_draft}")
    return Draft(model, result.target_to_draft, spec, description), result
