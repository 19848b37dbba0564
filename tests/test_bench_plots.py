"""`sparsebench report --bench`: the kernel speed-up figure (paper's Fig. 4) from stored benchmark JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsebench.cli import main

pytest.importorskip("matplotlib")


def _write(path: Path, data: dict) -> str:
    path.write_text(json.dumps(data))
    return str(path)


def test_report_plots_topp_and_attention_benchmarks(tmp_path: Path) -> None:
    topp = _write(tmp_path / "topp.json", {"meta": {"device": "GPU X"}, "results": [
        {"n": 1024, "rows": 32, "speedup_vs_sort": 4.0}, {"n": 8192, "rows": 32, "speedup_vs_sort": 6.5}]})
    attention = _write(tmp_path / "attention.json", {"meta": {"environment": {"device_name": "GPU X"}}, "rows": [
        {"context": 8192, "kind": "dense", "method": "dense flashinfer", "speedup_vs_flashinfer": None},
        {"context": 8192, "kind": "sparse", "method": "triton-indices", "selection": "topp",
         "speedup_vs_flashinfer": 0.9},
        {"context": 131072, "kind": "sparse", "method": "triton-indices", "selection": "topp",
         "speedup_vs_flashinfer": 2.0}]})
    assert main(["report", "--bench", topp, "--bench", attention, "--plots", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "kernel_speedups.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "kernel_speedups.svg").is_file()


def test_kernel_figure_has_a_read_panel_and_both_kernels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-p rows with CUDA and read fields give a speed-up panel with a curve per kernel and the 10x target, and a
    time / one read panel with the 2x target; rows without them (older JSON) give the speed-up panel only."""
    from sparsebench.evals import plots

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.append(fig) or [Path(out)])
    rows = [{"n": n, "rows": 32, "speedup_vs_sort": 4.0 + i, "triton_over_read": 6.0, "cuda_speedup_vs_sort": 10.0 + i,
             "cuda_over_read": 2.5 + i} for i, n in enumerate((1024, 8192))]
    plots.plot_kernel_speedups(rows, [], title="t", out=tmp_path / "f")
    sort_ax, read_ax = figures[-1].axes
    labels = {line.get_label() for line in sort_ax.get_lines()}
    assert {"Triton, 32 rows", "CUDA, 32 rows", "10x (asked up to 32K entries)"} <= labels
    cuda = next(line for line in read_ax.get_lines() if line.get_label() == "CUDA, 32 rows")
    assert list(cuda.get_ydata()) == [2.5, 3.5]
    target = next(line for line in read_ax.get_lines() if line.get_label() == "2x (asked)")
    assert list(target.get_ydata()) == [2.0, 2.0]
    plots.plot_kernel_speedups([{"n": 1024, "rows": 8, "speedup_vs_sort": 4.0}], [], title="t", out=tmp_path / "g")
    assert len(figures[-1].axes) == 1
    with pytest.raises(ValueError, match="no bench topp speed-up"):
        plots.plot_kernel_speedups([], [], title="t", out=tmp_path / "h")


def test_report_bench_rejects_unknown_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _write(tmp_path / "other.json", {"kl": [[0.0]]})
    assert main(["report", "--bench", other, "--plots", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a bench topp nor a bench attention result" in err[0]
    assert main(["report", "--bench", other]) == 2
    assert "--bench needs --plots DIR" in capsys.readouterr().err
