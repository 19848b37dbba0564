"""Self-drafts on the fast model: which target layers the draft runs and which draft layer guides which target layer.

A self-draft (see :mod:`sparsebench.models.selfdraft`) runs a subset of the target's own layers with its own
KV cache. Here it is the same :class:`~sparsebench.fastdecode.model.FastModel` run over ``layers`` before the
target each step; the engine computes, for each draft layer some sparse target layer is mapped to, the
block-aggregated attention mass of the draft's query over the draft's cache (what SpecAttn selects from).

The layer map is given explicitly, or taken from the project's cached calibration through
:func:`sparsebench.specattn.drafts.resolve_draft` (real models, by the benchmark), or, for random weights
where calibration means nothing, :func:`nearest_layer_map`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsebench.errors import UsageError
from sparsebench.models.selfdraft import parse_layer_spec


def nearest_layer_map(layers: list[int], n_target_layers: int) -> list[int]:
    """Target layer ``i`` -> the draft layer running the deepest target layer ``<= i`` (0 when none).

    Why this default: draft layer ``j`` *is* target layer ``layers[j]`` (shared weights), so the nearest one
    at or before ``i`` is the natural guess when no calibration exists (random weights).
    """
    return [max((j for j, src in enumerate(layers) if src <= i), default=0) for i in range(n_target_layers)]


def parse_layer_map(text: str, n_target_layers: int, n_draft_layers: int) -> list[int]:
    """``"0,0,1,2"`` -> a map with one draft layer per target layer, or a clear ``UsageError``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--layer-map {text!r}: give comma-separated draft layer indices, one per target "
                         "layer") from None
    if len(values) != n_target_layers:
        raise UsageError(f"--layer-map has {len(values)} entries; the target has {n_target_layers} layers")
    bad = [v for v in values if not 0 <= v < n_draft_layers]
    if bad:
        raise UsageError(f"--layer-map names draft layer {bad[0]}; the draft has layers 0-{n_draft_layers - 1}")
    return values


@dataclass(frozen=True)
class SelfDraft:
    """Draft layer ``j`` runs target layer ``layers[j]``; draft layer ``layer_map[i]`` guides target layer ``i``."""

    layers: list[int]
    layer_map: list[int]
    spec: str = ""

    @classmethod
    def build(cls, spec: str, n_target_layers: int, layer_map: list[int] | None = None) -> SelfDraft:
        """From a ``self:SPEC`` layer spec and an optional map (default :func:`nearest_layer_map`)."""
        layers = parse_layer_spec(spec, n_target_layers)
        if layer_map is None:
            layer_map = nearest_layer_map(layers, n_target_layers)
        if len(layer_map) != n_target_layers or not all(0 <= j < len(layers) for j in layer_map):
            raise UsageError(f"layer map {layer_map} must give one draft layer (0-{len(layers) - 1}) for each of "
                             f"the {n_target_layers} target layers")
        return cls(layers, list(layer_map), spec)

    def needed(self, dense_layers: int) -> list[int]:
        """Draft layers whose attention a sparse target layer reads (the first ``dense_layers`` never ask)."""
        return sorted(set(self.layer_map[dense_layers:]))

    def run_layers(self, dense_layers: int) -> list[int]:
        """Target layers the draft runs each step: up to the deepest needed draft layer (later ones feed
        nothing a policy reads, so a speed engine skips them; the teacher-forced engine runs them all)."""
        needed = self.needed(dense_layers)
        return self.layers[: needed[-1] + 1] if needed else []
