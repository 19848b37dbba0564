from __future__ import annotations

from pathlib import Path

import pytest

from sparsebench.cli import main
from sparsebench.compare import split_policy_specs
from sparsebench.errors import UsageError


def test_split_policy_specs() -> None:
    assert split_policy_specs("dense,quest:budget_frac=0.3,group_reduce=sum,specattn:p=0.95,sink_blocks=1") == [
        "dense", "quest:budget_frac=0.3,group_reduce=sum", "specattn:p=0.95,sink_blocks=1"]
    with pytest.raises(UsageError):
        split_policy_specs("p=0.3,dense")


def test_compare_prints_table_one_and_reuses_stored_rows(tmp_path: Path, text_file: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp.jsonl"
    argv = ["compare", "--policies", "quest:budget_frac=0.5,streamingllm:window_tokens=32", "--model", "tiny:llama",
            "--dataset", str(text_file), "--seq-len", "120", "--block-size", "8", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Perp. Diff." in text and "Rel. Increase" in text
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == [
        "dense", "quest:budget_frac=0.5", "streamingllm:window_tokens=32"]
    assert "+0.000" in lines[1]  # dense against itself
    n_rows = len(out.read_text().splitlines())
    assert n_rows == 3
    assert main(argv) == 0  # everything stored: nothing is rerun
    captured = capsys.readouterr()
    assert len(out.read_text().splitlines()) == n_rows
    assert "reusing" in captured.out + captured.err


def test_report_regenerates_table_and_plots(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        (data / f"doc{i}.txt").write_text(text_file.read_text()[i * 50 :])
    out = tmp_path / "r.jsonl"
    assert main(["compare", "--policies", "quest:budget_frac=0.5", "--model", "tiny:qwen2", "--dataset", str(data),
                 "--seq-len", "100", "--docs", "2", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["report", str(out), "--plots", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "quest:budget_frac=0.5" in text and "95% CI" in text and "%, " in text  # an interval was computed
    for name in ("cumulative_log_ppl", "pareto"):
        for ext in (".png", ".svg"):
            assert (tmp_path / "plots" / f"{name}{ext}").stat().st_size > 1000
    assert main(["report", str(tmp_path / "missing.jsonl")]) == 2
