"""Command line: every bad input gives one line on stderr and exit code 2; good runs write rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench.cli import main

TINY = ["--model", "tiny:llama", "--no-progress"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


BAD_INPUTS = {
    "unknown policy": (["run", "--policy", "qeust"], "did you mean 'quest'"),
    "p above 1": (["run", "--policy", "specattn", "--p", "1.5"], "--p=1.5 is out of range; it must be (0, 1]"),
    "p zero": (["run", "--policy", "specattn", "--p", "0"], "--p=0.0 is out of range"),
    "fraction above 1": (["run", "--policy", "quest", "--budget-frac", "1.5"], "must be (0, 1]"),
    "zero budget": (["run", "--policy", "quest", "--budget", "0"], "--budget=0 is out of range"),
    "negative budget": (["run", "--policy", "quest", "--budget=-16"], "--budget=-16 is out of range"),
    "zero window": (["run", "--policy", "streamingllm", "--window-tokens", "0"], "out of range"),
    "not a number": (["run", "--policy", "quest", "--budget-frac", "lots"], "expects float"),
    "unknown spec param": (["run", "--policy", "quest:budjet=3"], "no parameter budjet"),
    "block size": (["run", "--policy", "dense", "--block-size", "0", *TINY], "--block-size must be >= 1"),
    "prefill 0": (["run", "--policy", "dense", "--prefill-frac", "0", *TINY], "--prefill-frac must be in (0, 1)"),
    "prefill 1": (["run", "--policy", "dense", "--prefill-frac", "1", *TINY], "--prefill-frac must be in (0, 1)"),
    "seq-len too long": (["run", "--policy", "dense", "--seq-len", "100000", *TINY], "exceeds tiny:llama's maximum"),
    "missing dataset": (["run", "--policy", "dense", "--dataset", "/nope/b.jsonl", *TINY], "neither a named corpus"),
    "cuda without cuda": (["run", "--policy", "dense", "--device", "cuda", *TINY], "CUDA is not available"),
    "unknown command": (["rnu"], "did you mean 'run'"),
    "unknown flag": (["run", "--policy", "dense", "--frobnicate"], "unrecognized arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_exit_2(case: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = BAD_INPUTS[case]
    if case == "cuda without cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("sparsebench: error:") and expected in lines[0]


def test_empty_dataset_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    code, _, err = run_cli(capsys, "run", "--policy", "dense", "--dataset", str(empty), *TINY)
    assert code == 2 and "holds no text" in err and len(err.strip().splitlines()) == 1


def test_run_writes_rows_and_summary(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.jsonl"
    code, stdout, _ = run_cli(capsys, "run", "--policy", "quest", "--budget-frac", "0.5", "--dataset", str(text_file),
                              "--seq-len", "160", "--docs", "1", "--out", str(out), "--block-size", "8", *TINY)
    assert code == 0
    assert "quest:budget_frac=0.5" in stdout and "KV reduction" in stdout
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["policy_params"] == {"budget": None, "budget_frac": 0.5, "group_reduce": "max"}
    assert row["config"]["block_size"] == 8 and row["seed"] == 0
    assert {"torch", "transformers", "sparsebench"} <= set(row["environment"]["versions"])
    metrics = row["metrics"]
    assert metrics["tokens"] == 160 - 16 - 1 == len(metrics["nll_trace"])
    assert 0.2 < metrics["kv_reduction_sparse"] < 0.5
    assert metrics["kv_read_sparse"] < metrics["kv_dense_sparse"]


def test_policies_lists_builtins_and_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "policies")
    assert code == 0
    for name in ("dense", "streamingllm", "quest", "random_blocks", "sparsebench-random-blocks", "--budget-frac"):
        assert name in out


def test_console_script_plugin_run(tmp_path: Path, text_file: Path) -> None:
    """The installed console script runs the example plugin with its own parameter (exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-m", "sparsebench.cli", "run", "--policy", "random_blocks", "--keep-frac", "0.5",
         "--dataset", str(text_file), "--seq-len", "120", "--docs", "1", "--out", str(tmp_path / "x.jsonl"), *TINY],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "random_blocks:keep_frac=0.5" in proc.stdout
    row = json.loads((tmp_path / "x.jsonl").read_text())
    assert row["policy_source"] == "sparsebench-random-blocks"


def test_help_shows_policy_params(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["run", "--policy", "random_blocks", "--help"])
    assert exc.value.code == 0
    assert "--keep-frac" in capsys.readouterr().out


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message a machine without a GPU gets")
def test_bench_passes_on_a_benchmarks_own_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A benchmark that stops with its own message (here: no GPU) gets that message, not "bad arguments"."""
    code, _, err = run_cli(capsys, "bench", "topp", "--out", str(tmp_path))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "no CUDA device: run on a GPU machine, or pass --dry-run" in lines[0]
    code, _, err = run_cli(capsys, "bench", "topp", "--no-such-flag")
    assert code == 2 and "bad arguments (see --help)" in err
