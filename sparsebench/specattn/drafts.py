"""Turning ``--draft`` into a :class:`~sparsebench.specattn.capture.Draft` with its layer map.

``--draft self:SPEC`` builds a self-draft from a subset of the target's own layers (shared weights,
own KV cache); ``distilled:NAME`` (or a directory) loads a draft trained by ``sparsebench distill``; any
other value is loaded like ``--model``. A separate draft whose tokenizer differs from the target's becomes
a :class:`~sparsebench.specattn.crosstok.CrossTokenizerDraftModel`: it reads its own tokenization of the
text and its attention is mapped onto the target's KV blocks through character offsets (both tokenizers
must give offsets), and its layer map is calibrated on those mapped distributions. With no ``--draft``,
a model alias uses its registry default self-draft and anything else ``self:first-half``.
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
from sparsebench.specattn.calibrate import LayerMapResult, cached_layer_map, load_or_compute_layer_map
from sparsebench.specattn.capture import Draft
from sparsebench.specattn.crosstok import (
    CrossTokenizerDraftModel,
    check_offsets,
    check_schedule,
    cross_tokenizer_kl,
    document_schedule,
)

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


@dataclass
class LoadedDraft:
    """A loaded draft before its layer map: the module, who it is, and its tokenizer when it differs."""

    model: torch.nn.Module
    identity: dict[str, Any]
    """For caches and results."""
    description: str
    tokenizer: Any = None
    """The draft's own tokenizer when it differs from the target's (cross-tokenizer); None when shared."""

    def as_draft(self, layer_map: list[int], spec: str, target_tokenizer: Any) -> Draft:
        """The :class:`Draft` the engines take (a cross-tokenizer one when the tokenizers differ)."""
        if self.tokenizer is None:
            return Draft(self.model, layer_map, spec, self.description)
        return CrossTokenizerDraftModel(self.model, layer_map, spec, self.description, tokenizer=self.tokenizer,
                                        target_tokenizer=target_tokenizer)


def _millions(n: int) -> str:
    """``135M``; small models exactly (``181,312``: the tiny test models would all print as ``0M``)."""
    return f"{n / 1e6:.0f}M" if n >= 10e6 else f"{n:,}"


def load_draft_model(spec: str, target: Any, *, dtype: torch.dtype, device: str, progress: bool) -> LoadedDraft:
    """The draft module, its identity, a plain description, and its tokenizer if it is not the target's."""
    from sparsebench.models import build_self_draft, load_model

    if spec.startswith("self:"):
        draft = build_self_draft(target.model, spec.removeprefix("self:"))
        layers = draft.draft_source_layers
        n_target = target.model.config.get_text_config().num_hidden_layers
        description = (f"self-draft {spec}: {len(layers)} of the target's {n_target} layers ({_ranges(layers)}), "
                       "sharing its weights, with its own KV cache; it predicts attention, it is not trained "
                       "to propose tokens")
        return LoadedDraft(draft, {"kind": "self", "spec": spec, "layers": layers, "target": target.identity},
                           description)
    if _is_distilled(spec):
        from sparsebench.distill import load_distilled

        loaded = load_distilled(spec, dtype=dtype, device=device, progress=progress)
    else:
        loaded = load_model(spec, dtype=dtype, device=device, progress=progress)
    cross = not _shares_tokenizer(target, loaded)
    if cross:
        check_offsets(target.tokenizer, "target", target.name)
        check_offsets(loaded.tokenizer, "draft", loaded.name)
    n_draft = sum(p.numel() for p in loaded.model.parameters())
    n_target = sum(p.numel() for p in target.model.parameters())
    if n_draft > n_target:
        print(f"sparsebench: warning: the draft {spec} ({_millions(n_draft)} parameters) is larger than the "
              f"target {target.name} ({_millions(n_target)}); a draft is meant to be cheaper", file=sys.stderr)
    description = f"separate draft model {spec} ({_millions(n_draft)} parameters)"
    if cross:
        description += (f" with its own tokenizer ({type(loaded.tokenizer).__name__}); its attention is mapped onto "
                        "the target's KV blocks through character offsets")
        return LoadedDraft(loaded.model, loaded.identity | {"cross_tokenizer": True}, description, loaded.tokenizer)
    return LoadedDraft(loaded.model, loaded.identity, description)


def _shares_tokenizer(target: Any, draft: Any) -> bool:
    """Whether the draft can read the target's token ids (same vocabulary and tokenization)."""
    from sparsebench.models import check_same_tokenizer

    try:
        check_same_tokenizer(target.tokenizer, draft.tokenizer, target.name, draft.name)
    except UsageError:
        return False
    return True


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


def calibration_documents(tokenizer: Any, settings: CalibrationSettings, *, data_dir: str | None,
                          data_source: str, log: Callable[[str], None]) -> list[tuple[Any, list[int]]]:
    """The calibration documents with their first ``settings.seq_len`` token ids."""
    corpus = load_corpus(settings.dataset, data_dir=data_dir, source=data_source, log=log)
    docs, _ = tokenize_documents(select_documents(corpus.documents, settings.seed), tokenizer,
                                 settings.seq_len, settings.docs)
    if not docs:
        raise UsageError(f"no calibration document of {settings.dataset!r} has {settings.seq_len} tokens")
    return docs


def calibration_sequences(tokenizer: Any, settings: CalibrationSettings, *, device: torch.device | str,
                          data_dir: str | None, data_source: str,
                          log: Callable[[str], None]) -> tuple[list[torch.Tensor], dict[str, Any]]:
    docs = calibration_documents(tokenizer, settings, data_dir=data_dir, data_source=data_source, log=log)
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
    loaded = load_draft_model(spec, target, dtype=dtype, device=str(device), progress=progress)
    cache_dir = cache_root() / "layermaps"
    if loaded.tokenizer is not None:
        result, path, cached = _cross_tokenizer_layer_map(target, loaded, settings, block_size=block_size,
                                                          data_dir=data_dir, data_source=data_source,
                                                          cache_dir=cache_dir, progress=progress,
                                                          recompute=recompute, log=log)
    else:
        seqs, calib_info = calibration_sequences(target.tokenizer, settings, device=device, data_dir=data_dir,
                                                 data_source=data_source, log=log)
        calib_info["rows"] = settings.rows
        result, path, cached = load_or_compute_layer_map(
            target.model, loaded.model, target_id=target.identity, draft_id=loaded.identity, sequences=seqs,
            calibration=calib_info, block_size=block_size, rows=settings.rows, cache_dir=cache_dir,
            progress=progress, recompute=recompute,
        )
    log(f"sparsebench: draft = {loaded.description}")
    log(f"sparsebench: layer map {'loaded from' if cached else 'computed and saved to'} {path}: "
        f"{result.target_to_draft}")
    return loaded.as_draft(result.target_to_draft, spec, target.tokenizer), result


def _cross_tokenizer_layer_map(target: Any, draft: LoadedDraft, settings: CalibrationSettings, *, block_size: int,
                               data_dir: str | None, data_source: str, cache_dir: Path, progress: bool,
                               recompute: bool, log: Callable[[str], None]) -> tuple[LayerMapResult, Path, bool]:
    """The layer map of a cross-tokenizer draft: the KL matrix over the draft's attention mapped onto the
    target's blocks (:func:`~sparsebench.specattn.crosstok.cross_tokenizer_kl`), cached like the
    shared-tokenizer map under a key naming both models, the calibration documents and the mapping."""
    docs = calibration_documents(target.tokenizer, settings, data_dir=data_dir, data_source=data_source, log=log)
    calibration = {"dataset": settings.dataset, "documents": [d.id for d, _ in docs], "seq_len": settings.seq_len,
                   "seed": settings.seed, "rows": settings.rows, "block_size": block_size,
                   "mapping": "character-offsets"}

    def kl() -> torch.Tensor:
        schedules = []
        for doc, ids in docs:
            schedule = document_schedule(draft.tokenizer, target.tokenizer, doc.text, settings.seq_len)
            check_schedule(schedule, ids, f"calibration document {doc.id}")
            schedules.append(schedule)
        return cross_tokenizer_kl(target.model, draft.model, schedules, seq_len=settings.seq_len,
                                  block_size=block_size, rows=settings.rows, progress=progress)

    result, path, cached = cached_layer_map(target_id=target.identity, draft_id=draft.identity,
                                            calibration=calibration, cache_dir=cache_dir, recompute=recompute,
                                            kl=kl)
    assert path is not None
    return result, path, cached
