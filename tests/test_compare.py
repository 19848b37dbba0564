from __future__ import annotations

import json
import math
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


def test_sweep_expands_declared_grids() -> None:
    from sparsebench.compare import expand_sweep

    specs = expand_sweep([("dense", {}), ("quest", {"group_reduce": "sum"}),
                          ("quest", {"budget_frac": 0.2, "group_reduce": "sum"})])
    assert specs[0] == ("dense", {})
    fracs = [p["budget_frac"] for n, p in specs if n == "quest"]
    assert fracs == [0.1, 0.2, 0.3, 0.4, 0.6]  # the duplicate 0.2 collapses
    assert all(p.get("group_reduce") == "sum" for n, p in specs if n == "quest")


def test_match_kv_reduction_bisects_budgets(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", "--policies", "dense,streamingllm", "--match-kv-reduction", "quest:budget_frac=0.3",
            "--model", "tiny:llama", "--dataset", str(text_file), "--seq-len", "200", "--docs", "1",
            "--match-docs", "1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    table = {line.split("|")[1].strip(): line.split("|") for line in out.splitlines() if line.startswith("| ")}
    quest = float(table["quest:budget_frac=0.3"][6].strip(" %"))
    stream_label = next(k for k in table if k.startswith("streamingllm"))
    assert "window_frac=" in stream_label
    assert abs(float(table[stream_label][6].strip(" %")) - quest) < 3.0  # within the bisection's reach


def test_govreport_command_scores_each_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.jsonl"
    argv = ["govreport", "--policies", "dense,quest:budget_frac=0.25", "--model", "tiny:llama", "--docs", "2",
            "--max-prompt-tokens", "200", "--max-new-tokens", "6", "--data-source", "offline", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "ROUGE-L" in text and "quest:budget_frac=0.25" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and {r["task"] for r in rows} == {"govreport"}
    assert all(0.0 <= r["rouge_l"] <= 1.0 and r["reference"] for r in rows)
    assert any(r["kv_reduction_sparse"] > 0.5 for r in rows if r["policy"] == "quest")


def _row(policy: str, doc: str, nll_per_token: float, read: int = 100) -> dict:
    """A stored result row with just what Table 1 reads (1000 tokens, 400 dense KV reads)."""
    return {"policy": policy, "config": {"policy_params": {}}, "document": {"id": doc},
            "metrics": {"tokens": 1000, "nll_sum": 1000 * nll_per_token, "kv_read_sparse": read,
                        "kv_dense_sparse": 400, "kv_read_all": read, "kv_dense_all": 400, "decode_seconds": 1.0}}


def test_table_one_compares_a_partial_run_with_dense_on_its_own_documents() -> None:
    """A run that scored one of dense's two books is compared with dense on that book (not with the
    two-book aggregate, which would read a per-book difference as the policy's), and says so."""
    from sparsebench.compare import table_one_rows
    from sparsebench.runner import RunResult

    dense = RunResult([_row("dense", "easy", 2.0, 400), _row("dense", "hard", 3.0, 400)])
    partial = RunResult([_row("quest", "hard", 3.0)])  # equal to dense on its book
    full = RunResult([_row("streamingllm", "easy", 2.1), _row("streamingllm", "hard", 3.0)])
    rows = {r[0]: r for r in table_one_rows([dense, partial, full])}
    assert rows["quest [1 of dense's 2 docs]"][2:4] == ["+0.000", "+0.00%"]
    assert rows["quest [1 of dense's 2 docs]"][1] == f"{math.exp(3.0):.3f}"
    want = math.exp(2.55) / math.exp(2.5) - 1  # token-weighted over both books
    assert rows["streamingllm"][3] == f"{100 * want:+.2f}%"
    alone = RunResult([_row("quest", "other", 3.0)])
    assert table_one_rows([dense, alone])[1][2:4] == ["-", "-"]
