from __future__ import annotations

import pytest
import torch

from sparsebench.errors import UsageError
from sparsebench.params import ParamSpec
from sparsebench.policies import Quest, StreamingLLM
from sparsebench.selection import Selection, n_blocks_for


def test_param_ranges_and_types() -> None:
    spec = ParamSpec("p", float, 0.9, "mass", min=0.0, max=1.0, min_inclusive=False)
    assert spec.range_text() == "(0, 1]"
    assert spec.validate(1, "x") == 1.0
    assert spec.parse("0.5", "x") == 0.5
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(UsageError, match="--p"):
            spec.validate(bad, "x")
    with pytest.raises(UsageError, match="expects float"):
        spec.parse("abc", "x")


def test_policy_params_declared_and_validated() -> None:
    names = [s.name for s in Quest.param_specs()]
    assert names == ["budget", "budget_frac", "group_reduce"]
    assert Quest(budget=64).label() == "quest:budget=64"
    with pytest.raises(UsageError, match="out of range"):
        Quest(budget=0)
    with pytest.raises(UsageError, match="not one of"):
        Quest(group_reduce="median")
    with pytest.raises(UsageError, match="no parameter"):
        StreamingLLM.from_params({"window": 3})


def test_selection_from_indices_ignores_padding() -> None:
    idx = torch.tensor([[[0, 3, -1], [2, -1, -1]]])
    sel = Selection.from_indices(idx, 5)
    assert sel.mask.tolist() == [[[True, False, False, True, False], [False, False, True, False, False]]]
    assert sel.with_blocks(4).counts().tolist() == [[3, 2]]
    assert n_blocks_for(33, 16) == 3 and n_blocks_for(32, 16) == 2


def test_selection_rejects_wrong_type() -> None:
    with pytest.raises(TypeError, match="bool tensor"):
        Selection(torch.zeros(1, 2, 3))
