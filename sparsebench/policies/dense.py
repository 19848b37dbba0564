"""Dense attention expressed as a policy: every block, every step (the reference row of every table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection


@dataclass
class Dense(Policy):
    """Read every KV block (the baseline; runs through the same block-sparse path as the others)."""

    name = "dense"
    full_budget_params: ClassVar[dict[str, Any]] = {}

    def select(self, ctx: SelectionContext) -> Selection:
        return ctx.full()
