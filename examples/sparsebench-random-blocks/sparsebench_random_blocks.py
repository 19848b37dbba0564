"""A third-party sparsebench policy, packaged on its own: random KV blocks.

Why it is useful: a random selection at a given budget is the floor a query-aware policy must beat at
the same KV reduction. Why it is an example: it shows the whole plugin contract in one file: a
dataclass subclass of ``sparsebench.policy.Policy`` with declared parameters (they become
``--keep-frac`` and ``--rng-seed`` on the command line), and one ``@hookimpl`` returning the class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from sparsebench.hookspecs import hookimpl
from sparsebench.params import param
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection


@dataclass
class RandomBlocks(Policy):
    """Keep a uniformly random `keep_frac` of the KV blocks per (sequence, kv head), reseeded per document."""

    name = "random_blocks"
    full_budget_params: ClassVar[dict[str, Any]] = {"keep_frac": 1.0}
    budget_param = "keep_frac"

    keep_frac: float = param(0.25, "fraction of blocks kept", min=0.0, max=1.0, min_inclusive=False)
    rng_seed: int = param(0, "seed of the block sampler (reset at each document)", min=0)
    _generators: dict[str, torch.Generator] = field(default_factory=dict, init=False, repr=False)

    def reset(self) -> None:
        self._generators.clear()

    def select(self, ctx: SelectionContext) -> Selection:
        device = ctx.query.device
        gen = self._generators.get(str(device))
        if gen is None:
            gen = self._generators[str(device)] = torch.Generator(device=device).manual_seed(self.rng_seed)
        k = ctx.budget_blocks(None, self.keep_frac)
        noise = torch.rand(ctx.batch, ctx.num_kv_heads, ctx.n_blocks, generator=gen, device=device)
        return Selection.from_indices(noise.topk(k, dim=-1).indices, ctx.n_blocks)


@hookimpl
def sparsebench_policies() -> list[type[Policy]]:
    return [RandomBlocks]
