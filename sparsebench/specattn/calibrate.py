"""Layer-map calibration: which draft layer's attention best predicts each target layer's.

Both models prefill the same calibration sequences (WikiText-2 validation by default). For the last
``rows`` query positions of each sequence, every layer's attention probabilities are summed per KV block
(the granularity SpecAttn selects at) and collected; ``kl_matrix`` turns them into the target-by-draft
KL-divergence matrix and ``align_layers`` into a monotone map. The result is cached on disk, keyed by
both models' identities, the calibration data and the settings, since it is a property of the model
pair, not of a run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparsebench.hf_attention import attached, use_router
from sparsebench.kernels.mass import block_attention_mass
from sparsebench.specattn.layermap import align_layers, kl_matrix

LAYERMAP_FORMAT = 1


class CalibrationCapture:
    """Attention router that records block-aggregated attention of the last ``rows`` queries per layer."""

    def __init__(self, block_size: int, rows: int) -> None:
        self.block_size = block_size
        self.rows = rows
        self.per_layer: dict[int, torch.Tensor] = {}

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                  scaling: float, sliding_window: int | None, softcap: float | None) -> torch.Tensor | None:
        q_len, n_keys = query.shape[2], key.shape[2]
        rows = min(self.rows, q_len)
        positions = torch.arange(n_keys - rows, n_keys, device=query.device)
        mass = block_attention_mass(query[:, :, q_len - rows:], key, scaling, self.block_size,
                                    query_positions=positions, sliding_window=sliding_window, softcap=softcap)
        self.per_layer[layer] = mass[0].transpose(0, 1).float().cpu()  # [rows, H, N]
        return None


@torch.inference_mode()
def collect_block_attention(model: torch.nn.Module, token_ids: torch.Tensor, block_size: int,
                            rows: int) -> list[torch.Tensor]:
    """Per layer, ``[rows, heads, n_blocks]`` attention mass of the last ``rows`` positions of ``token_ids``."""
    capture = CalibrationCapture(block_size, rows)
    with attached(model), use_router(capture):
        model(input_ids=token_ids, use_cache=False)
    n_layers = model.config.get_text_config().num_hidden_layers
    missing = [i for i in range(n_layers) if i not in capture.per_layer]
    if missing:
        raise RuntimeError(f"layers {missing} did not go through the attention interface")
    return [capture.per_layer[i] for i in range(n_layers)]


@dataclass
class LayerMapResult:
    target_to_draft: list[int]
    kl: list[list[float]]
    path: list[tuple[int, int]]
    total_cost: float
    meta: dict[str, Any]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> LayerMapResult:
        data = json.loads(path.read_text())
        data["path"] = [tuple(x) for x in data["path"]]
        return cls(**data)


def compute_layer_map(target: torch.nn.Module, draft: torch.nn.Module, sequences: Sequence[torch.Tensor],
                      *, block_size: int, rows: int, progress: bool = True) -> tuple[torch.Tensor, Any]:
    """KL matrix ``[L_target, L_draft]`` over the calibration sequences and the DP alignment."""
    target_rows: list[list[torch.Tensor]] = []
    draft_rows: list[list[torch.Tensor]] = []
    for ids in tqdm(sequences, desc="layer map: calibration", unit="seq", disable=not progress):
        target_rows.append(collect_block_attention(target, ids, block_size, rows))
        draft_rows.append(collect_block_attention(draft, ids, block_size, rows))
    # Concatenate the query rows of all sequences, per layer (pad block counts to the longest).
    def stack(per_seq: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        width = max(t.shape[-1] for layers in per_seq for t in layers)
        return [torch.cat([torch.nn.functional.pad(layers[i], (0, width - layers[i].shape[-1]))
                           for layers in per_seq]) for i in range(len(per_seq[0]))]
    kl = kl_matrix(stack(target_rows), stack(draft_rows))
    return kl, align_layers(kl)


def layer_map_key(target_id: dict[str, Any], draft_id: dict[str, Any], calibration: dict[str, Any]) -> str:
    """Stable hash of everything the map depends on."""
    blob = json.dumps({"format": LAYERMAP_FORMAT, "target": target_id, "draft": draft_id,
                       "calibration": calibration}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_layer_map(*, target_id: dict[str, Any], draft_id: dict[str, Any], calibration: dict[str, Any],
                     cache_dir: Path | None, recompute: bool,
                     kl: Callable[[], torch.Tensor]) -> tuple[LayerMapResult, Path | None, bool]:
    """The map cached under the key of (target, draft, calibration) when there is one; else ``kl()`` (the KL
    matrix ``[L_target, L_draft]``), its DP alignment, saved. Returns (map, path, was_cached). Shared by the
    same-tokenizer and the cross-tokenizer calibrations, which differ only in how the KL matrix is measured."""
    key = layer_map_key(target_id, draft_id, calibration)
    path = cache_dir / f"layermap-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists() and not recompute:
        return LayerMapResult.load(path), path, True
    matrix = kl()
    aligned = align_layers(matrix)
    result = LayerMapResult(
        target_to_draft=list(aligned.target_to_draft), kl=matrix.tolist(),
        path=[tuple(x) for x in aligned.path], total_cost=float(aligned.total_cost),
        meta={"target": target_id, "draft": draft_id, "calibration": calibration, "key": key},
    )
    if path is not None:
        result.save(path)
    return result, path, False


def load_or_compute_layer_map(
    target: torch.nn.Module, draft: torch.nn.Module, *, target_id: dict[str, Any], draft_id: dict[str, Any],
    sequences: Sequence[torch.Tensor], calibration: dict[str, Any], block_size: int, rows: int,
    cache_dir: Path | None, progress: bool = True, recompute: bool = False,
) -> tuple[LayerMapResult, Path | None, bool]:
    """The cached map when there is one, else compute and cache it. Returns (map, path, was_cached)."""
    return cached_layer_map(
        target_id=target_id, draft_id=draft_id, calibration=dict(calibration, block_size=block_size, rows=rows),
        cache_dir=cache_dir, recompute=recompute,
        kl=lambda: compute_layer_map(target, draft, sequences, block_size=block_size, rows=rows,
                                     progress=progress)[0],
    )
