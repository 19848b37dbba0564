"""benchmarks/length_budget_table.py: the budget read off a measured (budget fraction -> KV reduction) curve, used
to match Quest and StreamingLLM to SpecAttn's reduction without rerunning the model (their reads depend only on
the lengths)."""

from __future__ import annotations

import itertools
import json
import sys

import pytest
from interpreted import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from length_budget_table import budget_for

TABLE = {"curves": {"quest": {"param": "budget_frac", "points": [[0.3, 0.69], [0.1, 0.89], [0.2, 0.79]]}}}


@pytest.mark.parametrize(("reduction", "want"), [(0.79, 0.2), (0.74, 0.25), (0.84, 0.15), (0.95, 0.1), (0.5, 0.3)])
def test_budget_is_interpolated_and_clamped(reduction: float, want: float) -> None:
    """Linear between measured points (reduction falls as the fraction grows), clamped outside them."""
    assert budget_for(TABLE, "quest", reduction) == pytest.approx(want, abs=1e-4)


def test_committed_table_is_monotone_and_reads_back() -> None:
    """The committed 2048-token table: each policy's reduction falls as its budget grows, and a reduction
    taken from the curve gives back its own budget."""
    table = json.loads((REPO / "benchmarks" / "results" / "length_budget_2048.json").read_text())
    assert table["lengths"] == {"seq_len": 2048, "prefill_frac": 0.1, "block_size": 16, "dense_layers": 2}
    for policy, curve in table["curves"].items():
        points = sorted(curve["points"])
        assert all(r0 > r1 for (_, r0), (_, r1) in itertools.pairwise(points)), policy
        frac, reduction = points[len(points) // 2]
        assert budget_for(table, policy, reduction) == pytest.approx(frac, abs=1e-4), policy
