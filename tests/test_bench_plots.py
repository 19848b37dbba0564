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


def test_report_bench_rejects_unknown_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = _write(tmp_path / "other.json", {"kl": [[0.0]]})
    assert main(["report", "--bench", other, "--plots", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a bench topp nor a bench attention result" in err[0]
    assert main(["report", "--bench", other]) == 2
    assert "--bench needs --plots DIR" in capsys.readouterr().err
