"""Figures (matplotlib, PNG and SVG). Imported lazily: plotting is optional (``sparsebench[plots]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsebench.errors import DependencyError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise DependencyError("plots need matplotlib: pip install 'sparsebench[plots]'") from exc
    return plt


def save_figure(fig: Any, out: str | Path) -> list[Path]:
    """Save as the given path's format and as its PNG/SVG sibling; returns the written paths."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return paths


def plot_layer_map(kl: list[list[float]], path: list[tuple[int, int]], target_to_draft: list[int], *,
                   target_name: str, draft_name: str, out: str | Path) -> list[Path]:
    """KL-divergence heatmap (target layers x draft layers, log colour scale) with the chosen alignment."""
    import numpy as np

    plt = _pyplot()
    from matplotlib.colors import LogNorm

    matrix = np.asarray(kl, dtype=float)
    floor = max(matrix[matrix > 0].min() if (matrix > 0).any() else 1e-6, 1e-6)
    fig, ax = plt.subplots(figsize=(1.2 + 0.28 * matrix.shape[1], 1.0 + 0.24 * matrix.shape[0]))
    im = ax.imshow(np.maximum(matrix, floor), cmap="viridis_r", norm=LogNorm(), aspect="auto", origin="upper")
    fig.colorbar(im, ax=ax, label="KL(target || draft), mean over tokens")
    ys, xs = zip(*path, strict=True)
    ax.plot(xs, ys, color="white", linewidth=1.0, alpha=0.7, label="DP path")
    ax.scatter(target_to_draft, range(len(target_to_draft)), color="red", s=14, zorder=3, label="chosen draft layer")
    ax.set_xlabel(f"draft layer ({draft_name})")
    ax.set_ylabel(f"target layer ({target_name})")
    ax.set_title("SpecAttn layer map: attention KL divergence and monotone alignment")
    ax.legend(loc="lower left", fontsize=7)
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths


def plot_cumulative_log_ppl(runs: list[tuple[str, list[list[float]]]], *, title: str, out: str | Path) -> list[Path]:
    """Step-wise cumulative log perplexity (mean NLL of steps 0..t), averaged over documents, per policy.

    ``runs`` is ``[(label, [nll trace of each document])]``. Where the curves separate shows when in the
    decode a policy starts to lose information (the SpecAttn paper's Fig. 5).
    """
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, traces in runs:
        length = min(len(t) for t in traces)
        nll = np.array([t[:length] for t in traces], dtype=float)
        cumulative = np.cumsum(nll, axis=1) / np.arange(1, length + 1)
        ax.plot(np.arange(1, length + 1), cumulative.mean(0), label=label, linewidth=1.3)
    return _finish(plt, fig, ax, "decode step (tokens after the dense prefill)",
                   "cumulative log perplexity (mean NLL so far)", title, out)


def plot_pareto(points: dict[str, list[tuple[float, float, str]]], *, title: str, out: str | Path) -> list[Path]:
    """Perplexity increase vs KV reduction, one curve per policy; ``points[policy] = [(kv, rel, label)]``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for policy, pts in sorted(points.items()):
        pts = sorted(pts)
        ax.plot([100 * kv for kv, _, _ in pts], [100 * rel for _, rel, _ in pts], marker="o", label=policy)
    return _finish(plt, fig, ax, "KV reduction over the sparse layers (%)", "perplexity increase over dense (%)",
                   title, out)


def _speedup_panel(ax: Any, curves: dict[str, list[tuple[int, float]]], xlabel: str, ylabel: str,
                   title: str) -> None:
    """One speed-up panel: a line per curve over a log2 x axis, with the break-even line at 1x."""
    for label, pts in curves.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_kernel_speedups(topp_rows: list[dict[str, Any]], attention_rows: list[dict[str, Any]], *,
                         title: str, out: str | Path) -> list[Path]:
    """The SpecAttn paper's Fig. 4 from benchmark JSON: top-p kernel vs sort-based top-p (left) and the sparse
    attention step vs dense decode (right), speed-up against length, log-scaled lengths.

    ``topp_rows`` are ``bench topp`` results (``n``, ``speedup_vs_sort``, ``rows``); ``attention_rows`` are
    ``bench attention`` sparse rows (``context``, ``method``, ``selection``, ``speedup_vs_flashinfer``).
    """
    plt = _pyplot()
    panels = [p for p in (topp_rows, attention_rows) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    col = 0
    if topp_rows:
        ax = axes[0][col]
        by_rows: dict[int, list[tuple[int, float]]] = {}
        for r in topp_rows:
            by_rows.setdefault(int(r.get("rows", 0)), []).append((int(r["n"]), float(r["speedup_vs_sort"])))
        _speedup_panel(ax, {f"{rows} rows": pts for rows, pts in sorted(by_rows.items())},
                       "entries per row (N)", "speed-up over sort-based top-p (x)", "sorting-free Triton top-p")
        col += 1
    if attention_rows:
        ax = axes[0][col]
        curves: dict[str, list[tuple[int, float]]] = {}
        for r in attention_rows:
            if r.get("kind", "sparse") != "sparse" or r.get("speedup_vs_flashinfer") is None:
                continue
            label = f"{r['method']} ({r.get('selection', '')})"
            curves.setdefault(label, []).append((int(r["context"]), float(r["speedup_vs_flashinfer"])))
        _speedup_panel(ax, dict(sorted(curves.items())), "context (tokens)",
                       "speed-up over dense FlashInfer decode (x)",
                       "block-sparse attention step (select + plan + kernel)")
    fig.suptitle(title)
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths


def _finish(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, out: str | Path) -> list[Path]:
    """Labels, grid, legend, save as PNG and SVG, close."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = save_figure(fig, out)
    plt.close(fig)
    return paths
