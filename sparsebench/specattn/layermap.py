"""Which draft layer stands in for which target layer: the layer-mapping DP of SpecAttn (sec. 3.3, app. B).

Why: SpecAttn selects the target's KV blocks from the draft's attention, and the draft has fewer
layers. Each target layer must borrow the attention of the draft layer that attends most like it,
and the mapping should keep depth order (early target layers with early draft layers), so it is
found as a monotone alignment of minimum total cost over a matrix of layer-to-layer divergences.

Alignment semantics (the choices the paper leaves open, fixed here)
-------------------------------------------------------------------
* Cells are ``(i, j)`` = (target layer, draft layer). A path starts at ``(0, 0)``, ends at
  ``(L_t - 1, L_d - 1)`` and moves by one of three steps:
  diagonal match ``(i-1, j-1) -> (i, j)``, horizontal repeat ``(i-1, j) -> (i, j)`` (the next target
  layer reuses the same draft layer), vertical skip ``(i, j-1) -> (i, j)`` (the draft advances while
  the target layer stays: draft layers are passed over).
* Cost of a path: the sum of ``C[i, j]`` over every cell it visits, as in the paper (and in dynamic
  time warping). A skipped draft layer therefore still costs its cell in the row where it is passed.
* Assignment: target layer ``i`` uses the **last** draft layer the path reaches in row ``i``, i.e. the
  deepest draft layer aligned with it. Every target layer gets exactly one draft layer, the mapping
  is non-decreasing, the first target layer maps to a draft layer reached from draft layer 0 by
  skips only, and the last target layer maps to the last draft layer.
* Ties between equal-cost predecessors are broken diagonal, then repeat, then skip, so that an
  all-equal cost matrix gives the most diagonal path.

Divergence matrix
-----------------
``kl_matrix`` builds ``C[i, j] = mean over tokens of KL(P_target_i || P_draft_j)``. The heads of the
two models have no correspondence (different counts, independently trained), so each layer's
attention is first averaged over its heads into one distribution over key positions per query
token; a mean of distributions is a distribution, and it is what a per-layer block selection
sees. The direction KL(target || draft) is the mass-covering one: it is large where the target
attends and the draft does not, which is exactly the error that makes SpecAttn prune KV blocks the
target needs; the reverse direction would mostly punish the draft for attending where the target
does not, which only costs some extra blocks. Both distributions are smoothed with ``eps`` (added
to every position, then renormalised) so that positions the draft gives zero mass keep KL finite.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sparsebench.errors import UsageError

__all__ = ["LayerMap", "align_layers", "kl_matrix", "path_to_assignment"]

#: Step order for tie-breaking: diagonal match, horizontal repeat, vertical skip.
_STEPS: tuple[tuple[int, int], ...] = ((1, 1), (1, 0), (0, 1))


@dataclass(frozen=True)
class LayerMap:
    """Result of :func:`align_layers`.

    ``target_to_draft[i]`` is the draft layer whose attention target layer ``i`` uses; ``path`` is the
    full list of visited cells ``(target_layer, draft_layer)`` from ``(0, 0)`` to the last cell;
    ``total_cost`` is the sum of the cost matrix over ``path``.
    """

    target_to_draft: list[int]
    path: list[tuple[int, int]]
    total_cost: float


def _as_cost_matrix(cost: torch.Tensor | np.ndarray) -> np.ndarray:
    """The cost matrix as float64 numpy, or ``UsageError`` saying what is wrong with it."""
    if isinstance(cost, torch.Tensor):
        arr = cost.detach().to("cpu", torch.float64).numpy()
    elif isinstance(cost, np.ndarray):
        if not (np.issubdtype(cost.dtype, np.floating) or np.issubdtype(cost.dtype, np.integer)):
            raise UsageError(f"cost matrix must be numeric, got dtype {cost.dtype}")
        arr = cost.astype(np.float64)
    else:
        raise UsageError(f"cost matrix must be a torch.Tensor or numpy.ndarray, got {type(cost).__name__}")
    if arr.ndim != 2:
        raise UsageError(f"cost matrix must be 2-D [target_layers, draft_layers], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UsageError(f"cost matrix must have at least one target and one draft layer, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise UsageError("cost matrix contains NaN or inf; check the attention maps it was computed from")
    return arr


def align_layers(cost: torch.Tensor | np.ndarray) -> LayerMap:
    """Minimum-cost monotone alignment of target layers (rows) to draft layers (columns).

    Dynamic programme over ``D[i, j] = C[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` in float64,
    O(L_t * L_d); see the module docstring for the path, cost and assignment semantics.
    """
    c = _as_cost_matrix(cost)
    n_t, n_d = c.shape
    acc = np.full((n_t, n_d), np.inf)
    # back[i, j] = index into _STEPS of the step that reached (i, j); -1 at the start cell.
    back = np.full((n_t, n_d), -1, dtype=np.int8)
    for i, j in itertools.product(range(n_t), range(n_d)):
        if i == 0 and j == 0:
            acc[0, 0] = c[0, 0]
            continue
        best, best_step = np.inf, -1
        for s, (di, dj) in enumerate(_STEPS):
            pi, pj = i - di, j - dj
            if pi >= 0 and pj >= 0 and acc[pi, pj] < best:  # strict: earlier steps win ties
                best, best_step = acc[pi, pj], s
        acc[i, j] = c[i, j] + best
        back[i, j] = best_step
    path = [(n_t - 1, n_d - 1)]
    while path[-1] != (0, 0):
        i, j = path[-1]
        di, dj = _STEPS[back[i, j]]
        path.append((i - di, j - dj))
    path.reverse()
    return LayerMap(target_to_draft=path_to_assignment(path, n_t), path=path,
                    total_cost=float(sum(c[i, j] for i, j in path)))


def path_to_assignment(path: Sequence[tuple[int, int]], n_target: int) -> list[int]:
    """Target layer -> draft layer under the "last draft layer reached in the row" rule."""
    out = [-1] * n_target
    for i, j in path:  # the path visits each row's cells in increasing j, so the last write wins
        out[i] = j
    return out


def _layer_distributions(attn: Sequence[torch.Tensor], name: str, eps: float) -> list[torch.Tensor]:
    """Per layer: head-mean attention [tokens, positions], eps-smoothed and renormalised, float64."""
    if isinstance(attn, torch.Tensor) or not isinstance(attn, Sequence) or len(attn) == 0:
        raise UsageError(f"{name} must be a non-empty list (one entry per layer) of tensors "
                         "[tokens, heads, positions]")
    out = []
    for k, a in enumerate(attn):
        if not isinstance(a, torch.Tensor) or a.dim() != 3:
            shape = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise UsageError(f"{name}[{k}] must be a tensor [tokens, heads, positions], got {shape}")
        if a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
            raise UsageError(f"{name}[{k}] has an empty dimension: shape {tuple(a.shape)}")
        a64 = a.detach().to(torch.float64)
        if not torch.isfinite(a64).all() or (a64 < 0).any():
            raise UsageError(f"{name}[{k}] must hold finite non-negative attention probabilities")
        dist = a64.mean(dim=1) + eps
        out.append(dist / dist.sum(-1, keepdim=True))
    return out


def kl_matrix(
    target_attn: Sequence[torch.Tensor],
    draft_attn: Sequence[torch.Tensor],
    eps: float = 1e-8,
) -> torch.Tensor:
    """Cost matrix ``C[i, j] = mean_tokens KL(target layer i || draft layer j)``, float64 [L_t, L_d].

    ``target_attn`` and ``draft_attn`` are per-layer lists of attention probabilities
    [tokens, heads, positions] for the same query tokens over the same key positions; the head
    counts may differ (each layer is averaged over its heads, see the module docstring).
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (0.0 < float(eps) < 1.0):
        raise UsageError(f"eps must be a small positive number (e.g. 1e-8), got {eps!r}")
    tgt = _layer_distributions(target_attn, "target_attn", float(eps))
    drf = _layer_distributions(draft_attn, "draft_attn", float(eps))
    shape = tgt[0].shape
    for name, dists in (("target_attn", tgt), ("draft_attn", drf)):
        for k, d in enumerate(dists):
            if d.shape != shape:
                raise UsageError(
                    f"{name}[{k}] covers [tokens, positions] = {tuple(d.shape)} but target_attn[0] covers "
                    f"{tuple(shape)}; both models must be run on the same tokens and key positions"
                )
    device = tgt[0].device
    t = torch.stack(tgt)  # [L_t, tokens, positions]
    log_d = torch.stack([d.to(device) for d in drf]).log()  # [L_d, tokens, positions]
    neg_entropy = (t * t.log()).sum(-1).mean(-1)  # [L_t]: mean_tokens sum_pos P log P
    cross = torch.einsum("atp,btp->ab", t, log_d) / shape[0]  # mean_tokens sum_pos P_t log P_d
    return (neg_entropy[:, None] - cross).clamp_min(0.0)
