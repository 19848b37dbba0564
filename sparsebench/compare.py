"""Several policies on the same documents, tabulated like the SpecAttn paper's Table 1.

Every policy runs through :func:`sparsebench.runner.run_evaluation` with the same base configuration
(model, documents, sequence length, engine settings), so rows differ only in the policy. Perplexity
differences are relative to the ``dense`` row, which is added when missing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
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


def expand_sweep(specs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Each policy with a declared ``sweep`` grid becomes one spec per grid point (other params kept)."""
    from sparsebench.plugins import registry

    expanded: list[tuple[str, dict[str, Any]]] = []
    for name, params in specs:
        grid = registry().policy_class(name).sweep
        if not grid:
            expanded.append((name, params))
            continue
        (pname, values), *rest = grid.items()
        if rest:
            raise UsageError(f"policy {name!r} declares a multi-parameter sweep; only one parameter is supported")
        expanded += [(name, params | {pname: v}) for v in values]
    return dedupe_specs(expanded)


def dedupe_specs(specs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Drop repeated ``(policy, params)`` pairs, keeping the first occurrence's position."""
    unique: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[str, dict[str, Any]]] = {}
    for name, params in specs:
        unique.setdefault((name, tuple(sorted(params.items()))), (name, params))
    return list(unique.values())


def match_budget(base: RunConfig, name: str, params: dict[str, Any], target: float, *, docs: int,
                 iterations: int = 8, tolerance: float = 0.005,
                 log: Callable[[str], None] | None = None) -> tuple[dict[str, Any], float]:
    """Bisect the policy's ``budget_param`` so it reads the share ``1 - target`` on ``docs`` documents.

    Larger budgets read more, so the reduction falls as the parameter grows. Probe runs are not stored.
    Returns the parameters and the reduction reached.
    """
    from sparsebench.plugins import registry

    cls = registry().policy_class(name)
    pname = cls.budget_param
    if pname is None:
        raise UsageError(f"policy {name!r} declares no budget_param, so its budget cannot be matched; drop it "
                         "from --policies or give its budget explicitly")
    probe = dataclasses.replace(base, docs=docs, batch_size=min(base.batch_size, docs), out=None)
    lo, hi = 0.0, 1.0
    best: tuple[float, float] | None = None
    for _ in range(iterations):
        mid = round((lo + hi) / 2, 6)
        cfg = dataclasses.replace(probe, policy=name, policy_params=params | {pname: mid})
        reached = run_evaluation(cfg, progress=False, log=lambda m: None).aggregate()["kv_reduction_sparse"]
        (log or print)(f"sparsebench: match {name}: {pname}={mid} -> KV reduction {100 * reached:.2f}% "
                       f"(target {100 * target:.2f}%)")
        if best is None or abs(reached - target) < abs(best[1] - target):
            best = (mid, reached)
        if abs(reached - target) <= tolerance:
            break
        lo, hi = (mid, hi) if reached > target else (lo, mid)
    assert best is not None
    return params | {pname: best[0]}, best[1]


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


def bootstrap_ci(rows: list[dict[str, Any]], dense_rows: list[dict[str, Any]], *, resamples: int = 2000,
                 seed: int = 0) -> dict[str, tuple[float, float]] | None:
    """95% percentile-bootstrap intervals over documents, paired with dense on the same documents.

    Each resample draws documents with replacement and recomputes the token-weighted relative perplexity
    increase and the KV reduction, so the interval reflects document-to-document variation (the main
    source of spread in long-context perplexity). None when fewer than two documents are shared.
    """
    import numpy as np

    dense_by_id = {r["document"]["id"]: r["metrics"] for r in dense_rows}
    pairs = [(r["metrics"], dense_by_id[r["document"]["id"]]) for r in rows if r["document"]["id"] in dense_by_id]
    if len(pairs) < 2:
        return None
    nll = np.array([m["nll_sum"] for m, _ in pairs])
    nll_dense = np.array([d["nll_sum"] for _, d in pairs])
    tokens = np.array([m["tokens"] for m, _ in pairs], dtype=float)
    read = np.array([m["kv_read_sparse"] for m, _ in pairs], dtype=float)
    dense_kv = np.array([m["kv_dense_sparse"] for m, _ in pairs], dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    toks = tokens[idx].sum(1)
    rel = np.exp((nll[idx].sum(1) - nll_dense[idx].sum(1)) / toks) - 1
    denom = dense_kv[idx].sum(1)
    kv = 1 - read[idx].sum(1) / np.where(denom > 0, denom, 1)
    lo, hi = 2.5, 97.5
    return {"rel_increase": (float(np.percentile(rel, lo)), float(np.percentile(rel, hi))),
            "kv_reduction": (float(np.percentile(kv, lo)), float(np.percentile(kv, hi)))}


TABLE_ONE_HEADERS = ["Method", "Perplexity", "Perp. Diff.", "Rel. Increase", "95% CI", "KV Reduction (sparse layers)",
                     "95% CI", "KV Reduction (all layers)", "tokens/s"]


def table_one(results: list[RunResult], tablefmt: str = "github") -> str:
    """Table 1 as text (``tablefmt`` of tabulate, or ``csv``)."""
    rows = table_one_rows(results)
    if tablefmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([TABLE_ONE_HEADERS, *rows])
        return buffer.getvalue().rstrip("\n")
    return tabulate(rows, headers=TABLE_ONE_HEADERS, tablefmt=tablefmt, disable_numparse=True)


def paired_increase(result: RunResult, dense_run: RunResult) -> tuple[float, float, int] | None:
    """``(perplexity difference, relative increase, documents)`` of ``result`` against dense on the documents
    both runs scored, or None when they share none.

    Why paired: perplexity varies far more between books than between policies, so a run that scored other
    (or fewer) documents than dense (an interrupted run, a rerun on a subset) must not be compared with dense's
    aggregate: one book's +0% reads as +15% against another book's dense perplexity.
    """
    dense_by_id = {r["document"]["id"]: r for r in dense_run.rows}
    shared = [r for r in result.rows if r["document"]["id"] in dense_by_id]
    if not shared:
        return None
    mine = RunResult(shared).aggregate()["perplexity"]
    ref = RunResult([dense_by_id[r["document"]["id"]] for r in shared]).aggregate()["perplexity"]
    return mine - ref, mine / ref - 1, len(shared)


def table_one_rows(results: list[RunResult]) -> list[list[str]]:
    """Method | Perplexity | Perp. Diff. | Rel. Increase [95% CI] | KV Reduction [95% CI], relative to dense on the
    same documents (:func:`paired_increase`); a method scored on other documents than dense says on how many."""
    dense_run = next(r for r in results if r.rows[0]["policy"] == "dense")
    dense_ids = {r["document"]["id"] for r in dense_run.rows}
    rows = []
    for result in results:
        agg = result.aggregate()
        paired = paired_increase(result, dense_run)
        ci = bootstrap_ci(result.rows, dense_run.rows) if result is not dense_run else None
        rel_ci = f"[{100 * ci['rel_increase'][0]:+.2f}%, {100 * ci['rel_increase'][1]:+.2f}%]" if ci else "-"
        kv_ci = f"[{100 * ci['kv_reduction'][0]:.1f}%, {100 * ci['kv_reduction'][1]:.1f}%]" if ci else "-"
        label = method_label(result.rows[0])
        if {r["document"]["id"] for r in result.rows} != dense_ids:
            label += f" [{paired[2] if paired else 0} of dense's {len(dense_ids)} docs]"
        rows.append([
            label, f"{agg['perplexity']:.3f}", f"{paired[0]:+.3f}" if paired else "-",
            f"{100 * paired[1]:+.2f}%" if paired else "-", rel_ci, f"{100 * agg['kv_reduction_sparse']:.1f}%", kv_ci,
            f"{100 * agg['kv_reduction_all']:.1f}%", f"{agg['tokens_per_s']:.1f}",
        ])
    return rows


def write_plots(results: list[RunResult], out_dir: str | Path) -> list[Path]:
    """Fig. 5 (cumulative log perplexity per policy) and the Pareto plot, from stored rows."""
    from sparsebench.evals.plots import plot_cumulative_log_ppl, plot_pareto

    out_dir = Path(out_dir)
    first = results[0].rows[0]
    setting = f"{first['model']['name']}, {len(results[0].rows)} doc(s) x {first['config']['seq_len']} tokens"
    runs = [(method_label(r.rows[0]), [row["metrics"]["nll_trace"] for row in r.rows]) for r in results]
    paths = plot_cumulative_log_ppl(runs, title=f"Cumulative log perplexity ({setting})",
                                    out=out_dir / "cumulative_log_ppl.png")
    dense_run = next(r for r in results if r.rows[0]["policy"] == "dense")
    points: dict[str, list[tuple[float, float, str]]] = {}
    for r in results:
        paired = paired_increase(r, dense_run)
        if paired is None:
            continue
        points.setdefault(r.rows[0]["policy"], []).append(
            (r.aggregate()["kv_reduction_sparse"], paired[1], method_label(r.rows[0])))
    paths += plot_pareto(points, title=f"Perplexity vs KV reduction ({setting})", out=out_dir / "pareto.png")
    return paths
