"""Several policies on the same documents, tabulated like the SpecAttn paper's Table 1.

Every policy runs through :func:`sparsebench.runner.run_evaluation` with the same base configuration
(model, documents, sequence length, engine settings), so rows differ only in the policy. Perplexity
differences are relative to the ``dense`` row, which is added when missing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from tabulate import tabulate

from sparsebench.config import RunConfig
from sparsebench.errors import UsageError
from sparsebench.runner import RunResult, run_evaluation, stored_rows


def split_policy_specs(text: str) -> list[str]:
    """``dense,quest:budget_frac=0.3,group_reduce=sum,specattn:p=0.95`` -> one spec per policy.

    An item with ``=`` but no ``:`` continues the previous policy's parameters.
    """
    specs: list[str] = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if "=" in item and ":" not in item:
            if not specs:
                raise UsageError(f"--policies: parameter {item!r} has no policy before it")
            specs[-1] += ("," if ":" in specs[-1] else ":") + item
        else:
            specs.append(item)
    if not specs:
        raise UsageError("--policies is empty; give e.g. dense,quest,specattn:p=0.95")
    return specs


def run_comparison(base: RunConfig, specs: list[tuple[str, dict[str, Any]]], *, progress: bool = True,
                   log: Callable[[str], None] | None = None) -> list[RunResult]:
    """Run each ``(policy, params)`` with ``base``'s other settings; dense first when missing.

    When ``base.out`` already holds the rows of a run with the identical configuration (policy parameters
    included), they are reused instead of rerun, so a comparison extended by one policy reruns only it.
    """
    if not any(name == "dense" for name, _ in specs):
        specs = [("dense", {}), *specs]
    results = []
    for name, params in specs:
        cfg = dataclasses.replace(base, policy=name, policy_params=params)
        stored = stored_rows(cfg)
        if len(stored) >= cfg.docs:  # finished earlier: no need to even load the model
            (log or print)(f"sparsebench: reusing {len(stored)} stored row(s) of {name} {params} from {base.out}")
            results.append(RunResult(list(stored.values())[: cfg.docs]))
        else:
            results.append(run_evaluation(cfg, progress=progress, log=log))
    return results


def group_runs(rows: list[dict[str, Any]]) -> list[RunResult]:
    """Stored rows grouped into runs by (policy, explicit parameters, model, dataset, length), in first-seen
    order; a rerun's duplicate rows of the same document are dropped (the last one wins)."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        cfg = row.get("config", {})
        key = json.dumps([row["policy"], cfg.get("policy_params"), cfg.get("model"), cfg.get("dataset"),
                          cfg.get("seq_len"), cfg.get("block_size"), cfg.get("dense_layers"), cfg.get("draft")],
                         sort_keys=True)
        groups.setdefault(key, {})[row["document"]["id"]] = row
    return [RunResult(list(docs.values())) for docs in groups.values()]


def method_label(row: dict[str, Any]) -> str:
    """``name:k=v`` with the parameters the user set explicitly (``specattn:p=0.95`` even at the default)."""
    explicit = row.get("config", {}).get("policy_params") or {}
    return row["policy"] + (":" + ",".join(f"{k}={v}" for k, v in explicit.items()) if explicit else "")


def table_one(results: list[RunResult], tablefmt: str = "github") -> str:
    """Method | Perplexity | Perp. Diff. | Rel. Increase | KV Reduction, relative to dense."""
    dense = next(r for r in results if r.rows[0]["policy"] == "dense").aggregate()
    rows = []
    for result in results:
        agg = result.aggregate()
        diff = agg["perplexity"] - dense["perplexity"]
        rows.append([
            method_label(result.rows[0]), f"{agg['perplexity']:.3f}", f"{diff:+.3f}",
            f"{100 * diff / dense['perplexity']:+.2f}%", f"{100 * agg['kv_reduction_sparse']:.1f}%",
            f"{100 * agg['kv_reduction_all']:.1f}%", f"{agg['tokens_per_s']:.1f}",
        ])
    return tabulate(rows, headers=["Method", "Perplexity", "Perp. Diff.", "Rel. Increase",
                                   "KV Reduction (sparse layers)", "KV Reduction (all layers)", "tokens/s"],
                    tablefmt=tablefmt, disable_numparse=True)
