"""Figures (matplotlib, PNG and SVG). Imported lazily: plotting is optional (``sparsebench[plots]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsebench.errors import DependencyError


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display), or a DependencyError saying what to install;
    public so that the device probes draw their figures the same way."""
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

    plt = pyplot()
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

    plt = pyplot()
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for policy, pts in sorted(points.items()):
        pts = sorted(pts)
        ax.plot([100 * kv for kv, _, _ in pts], [100 * rel for _, rel, _ in pts], marker="o", label=policy)
    return _finish(plt, fig, ax, "KV reduction over the sparse layers (%)", "perplexity increase over dense (%)",
                   title, out)


def _speedup_panel(ax: Any, curves: dict[str, list[tuple[int, float]]], xlabel: str, ylabel: str,
                   title: str, targets: tuple[tuple[float, str], ...] = ()) -> None:
    """One speed-up panel: a line per curve over a log2 x axis, with the break-even line at 1x and a dashed line
    for each ``(value, label)`` of ``targets``."""
    for label, pts in curves.items():
        pts = sorted(pts)
        ax.plot([x for x, _ in pts], [v for _, v in pts], marker="o", label=label)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    for value, label in targets:
        ax.axhline(value, color="black", linestyle="--", linewidth=0.9, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_kernel_speedups(topp_rows: list[dict[str, Any]], attention_rows: list[dict[str, Any]], *,
                         title: str, out: str | Path) -> list[Path]:
    """The SpecAttn paper's Fig. 4 from benchmark JSON: top-p kernels vs sort-based top-p, the top-p kernels' time
    over one read of their input, and the sparse attention step vs dense decode; log-scaled lengths.

    ``topp_rows`` are ``bench topp`` results (``n``, ``rows``, ``speedup_vs_sort`` and ``triton_over_read`` for the
    Triton kernel, ``cuda_speedup_vs_sort`` and ``cuda_over_read`` where the CUDA kernel ran); ``attention_rows``
    are ``bench attention`` sparse rows (``context``, ``method``, ``selection``, ``speedup_vs_flashinfer``). Why the
    read panel: a speed-up over sort says nothing about how far a kernel is from the memory bound; issue 4 asks
    both (10x over sort up to 32K entries, 2x of one read), drawn as dashed lines.
    """
    plt = pyplot()
    sort_curves: dict[str, list[tuple[int, float]]] = {}
    read_curves: dict[str, list[tuple[int, float]]] = {}
    for r in topp_rows:
        n, rows = int(r["n"]), int(r.get("rows", 0))
        for kernel, speedup, over_read in (("Triton", "speedup_vs_sort", "triton_over_read"),
                                           ("CUDA", "cuda_speedup_vs_sort", "cuda_over_read")):
            if r.get(speedup) is not None:
                sort_curves.setdefault(f"{kernel}, {rows} rows", []).append((n, float(r[speedup])))
            if r.get(over_read) is not None:
                read_curves.setdefault(f"{kernel}, {rows} rows", []).append((n, float(r[over_read])))
    attention_curves: dict[str, list[tuple[int, float]]] = {}
    for r in attention_rows:
        if r.get("kind", "sparse") != "sparse" or r.get("speedup_vs_flashinfer") is None:
            continue
        label = f"{r['method']} ({r.get('selection', '')})"
        attention_curves.setdefault(label, []).append((int(r["context"]), float(r["speedup_vs_flashinfer"])))
    # (curves, x label, y label, title, target lines, log y: the read ratios span about 1x to 50x)
    panels = [
        (sort_curves, "entries per row (N)", "speed-up over sort-based top-p (x)", "sorting-free top-p vs sort",
         ((10.0, "10x (asked up to 32K entries)"),), False),
        (read_curves, "entries per row (N)", "time / one read of the input (x)", "sorting-free top-p vs one read",
         ((2.0, "2x (asked)"),), True),
        (dict(sorted(attention_curves.items())), "context (tokens)", "speed-up over dense FlashInfer decode (x)",
         "block-sparse attention step (select + plan + kernel)", (), False),
    ]
    panels = [panel for panel in panels if panel[0]]
    if not panels:
        raise ValueError("no bench topp speed-up or bench attention sparse row to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
    for ax, (curves, xlabel, ylabel, panel_title, targets, log_y) in zip(axes[0], panels, strict=True):
        _speedup_panel(ax, curves, xlabel, ylabel, panel_title, targets)
        if log_y:
            ax.set_yscale("log")
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
