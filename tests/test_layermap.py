"""Tests of the SpecAttn layer mapping: the DP against brute force over every path, the assignment
rule, the KL cost matrix, and input validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from sparsebench.errors import UsageError
from sparsebench.specattn import LayerMap, align_layers, kl_matrix
from sparsebench.specattn.layermap import path_to_assignment

STEPS = ((1, 1), (1, 0), (0, 1))


def all_paths(n_t: int, n_d: int) -> list[list[tuple[int, int]]]:
    """Every path from (0, 0) to (n_t - 1, n_d - 1) with the three allowed steps."""
    paths: list[list[tuple[int, int]]] = []

    def walk(path: list[tuple[int, int]]) -> None:
        i, j = path[-1]
        if (i, j) == (n_t - 1, n_d - 1):
            paths.append(list(path))
            return
        for di, dj in STEPS:
            if i + di < n_t and j + dj < n_d:
                path.append((i + di, j + dj))
                walk(path)
                path.pop()

    walk([(0, 0)])
    return paths


def delannoy(m: int, n: int) -> int:
    return sum(math.comb(m, k) * math.comb(n, k) * 2**k for k in range(min(m, n) + 1))


def assert_valid(result: LayerMap, cost: np.ndarray) -> None:
    n_t, n_d = cost.shape
    path = result.path
    assert path[0] == (0, 0) and path[-1] == (n_t - 1, n_d - 1)
    for (i0, j0), (i1, j1) in itertools.pairwise(path):
        assert (i1 - i0, j1 - j0) in STEPS
    assert result.total_cost == pytest.approx(sum(cost[i, j] for i, j in path), rel=1e-12, abs=1e-12)
    # Assignment rule: the last draft layer reached in each target row.
    for i in range(n_t):
        assert result.target_to_draft[i] == max(j for ii, j in path if ii == i)
    assert result.target_to_draft == sorted(result.target_to_draft)
    assert result.target_to_draft[-1] == n_d - 1


def test_enumeration_is_complete() -> None:
    for m, n in itertools.product(range(1, 5), repeat=2):
        assert len(all_paths(m, n)) == delannoy(m - 1, n - 1)


def test_dp_matches_brute_force() -> None:
    rng = np.random.default_rng()
    for n_t, n_d in itertools.product(range(1, 6), repeat=2):
        paths = all_paths(n_t, n_d)
        for _ in range(12):
            cost = rng.random((n_t, n_d))
            if rng.random() < 0.3:  # integer costs: many exact ties between paths
                cost = rng.integers(0, 3, (n_t, n_d)).astype(float)
            best = min(sum(cost[i, j] for i, j in p) for p in paths)
            result = align_layers(cost)
            assert result.total_cost == pytest.approx(best, rel=1e-12, abs=1e-12), (cost, result)
            assert_valid(result, cost)


def test_torch_input_and_types() -> None:
    cost = torch.rand(4, 3)
    result = align_layers(cost)
    assert isinstance(result.total_cost, float)
    assert all(isinstance(j, int) for j in result.target_to_draft)
    assert result == align_layers(cost.numpy())


def test_identity_like_cost_gives_diagonal() -> None:
    for n in (1, 2, 5, 12):
        cost = 1.0 - np.eye(n)
        result = align_layers(cost)
        assert result.path == [(i, i) for i in range(n)]
        assert result.target_to_draft == list(range(n))
        assert result.total_cost == 0.0
    # All-equal costs: the shortest (most diagonal) path wins.
    assert align_layers(np.ones((3, 3))).path == [(0, 0), (1, 1), (2, 2)]


def test_more_target_than_draft_layers_repeats() -> None:
    # Target layer i attends like draft layer i // 2: each draft layer serves two target layers.
    cost = np.array([[0.0 if j == i // 2 else 1.0 for j in range(3)] for i in range(6)])
    result = align_layers(cost)
    assert result.target_to_draft == [0, 0, 1, 1, 2, 2]
    assert result.total_cost == 0.0


def test_skips_use_last_draft_layer_in_row() -> None:
    # 2 target layers, 4 draft layers: target 0 must pass over draft layers on its row.
    cost = np.array([[0.0, 0.0, 0.0, 5.0], [5.0, 5.0, 5.0, 0.0]])
    result = align_layers(cost)
    assert result.path == [(0, 0), (0, 1), (0, 2), (1, 3)]
    assert result.target_to_draft == [2, 3]
    assert path_to_assignment(result.path, 2) == [2, 3]


@pytest.mark.parametrize(
    ("cost", "match"),
    [
        (np.zeros(3), "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.zeros((0, 3)), "at least one"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), "NaN or inf"),
        ([[0.0, 1.0]], "torch.Tensor or numpy.ndarray"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_align_layers_rejects_bad_cost(cost: object, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        align_layers(cost)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# kl_matrix


def random_attention(layers: int, tokens: int, heads: int, positions: int, temp: float = 2.0) -> list[torch.Tensor]:
    """Causal-looking attention maps: softmax of random scores with future positions masked out."""
    out = []
    causal = torch.ones(tokens, positions, dtype=torch.bool).tril(diagonal=positions - tokens)
    for _ in range(layers):
        scores = torch.randn(tokens, heads, positions) * temp
        scores = scores.masked_fill(~causal[:, None, :], float("-inf"))
        out.append(torch.softmax(scores, -1))
    return out


def test_kl_zero_iff_same_distribution() -> None:
    target = random_attention(4, tokens=6, heads=4, positions=10)
    kl = kl_matrix(target, target)
    assert kl.shape == (4, 4) and kl.dtype == torch.float64
    assert torch.allclose(kl.diagonal(), torch.zeros(4, dtype=torch.float64), atol=1e-10)
    off = kl[~torch.eye(4, dtype=torch.bool)]
    assert (off > 1e-3).all(), kl
    assert align_layers(kl).target_to_draft == [0, 1, 2, 3]


def test_kl_head_counts_differ() -> None:
    # Draft heads = means of pairs of target heads: the head-mean distributions are identical.
    target = random_attention(3, tokens=5, heads=4, positions=8)
    draft = [0.5 * (a[:, 0::2] + a[:, 1::2]) for a in target]
    kl = kl_matrix(target, draft)
    assert torch.allclose(kl.diagonal(), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    assert (kl[~torch.eye(3, dtype=torch.bool)] > 1e-3).all()


def test_kl_matches_direct_formula_and_direction() -> None:
    target = random_attention(2, tokens=3, heads=2, positions=5)
    draft = random_attention(3, tokens=3, heads=1, positions=5)
    eps = 1e-6
    kl = kl_matrix(target, draft, eps=eps)

    def smooth(a: torch.Tensor) -> torch.Tensor:
        d = a.double().mean(1) + eps
        return d / d.sum(-1, keepdim=True)

    for i, j in itertools.product(range(2), range(3)):
        p, q = smooth(target[i]), smooth(draft[j])
        expect = (p * (p / q).log()).sum(-1).mean()
        assert float(kl[i, j]) == pytest.approx(float(expect), rel=1e-9, abs=1e-12)
    # KL(target || draft): a draft that misses target mass costs more than the reverse.
    sharp = torch.zeros(1, 1, 4)
    sharp[..., 0] = 1.0
    flat = torch.full((1, 1, 4), 0.25)
    missing = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    assert kl_matrix([sharp], [missing])[0, 0] > kl_matrix([sharp], [flat])[0, 0] > 0


@pytest.mark.parametrize(
    ("target", "draft", "match"),
    [
        ([], [torch.rand(2, 1, 3)], "non-empty list"),
        (torch.rand(2, 1, 3), [torch.rand(2, 1, 3)], "non-empty list"),
        ([torch.rand(2, 3)], [torch.rand(2, 1, 3)], r"target_attn\[0\] must be a tensor"),
        ([torch.rand(2, 1, 3)], [torch.rand(2, 1, 4)], "same tokens and key positions"),
        ([torch.rand(2, 1, 3)], [torch.rand(3, 1, 3)], "same tokens and key positions"),
        ([torch.rand(2, 1, 3)], [-torch.rand(2, 1, 3)], "non-negative"),
        ([torch.full((2, 1, 3), float("nan"))], [torch.rand(2, 1, 3)], "finite"),
        ([torch.rand(2, 0, 3)], [torch.rand(2, 1, 3)], "empty dimension"),
    ],
)
def test_kl_rejects_bad_input(target: object, draft: object, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        kl_matrix(target, draft)  # type: ignore[arg-type]


@pytest.mark.parametrize("eps", [0.0, -1e-8, 1.0, float("nan"), True])
def test_kl_rejects_bad_eps(eps: float) -> None:
    with pytest.raises(UsageError, match="eps"):
        kl_matrix([torch.rand(2, 1, 3)], [torch.rand(2, 1, 3)], eps=eps)
