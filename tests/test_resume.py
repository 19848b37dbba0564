"""An interrupted run loses nothing and duplicates nothing when rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sparsebench.evals.results import append_row, read_rows


def _cmd(out: Path, docs: int, data: Path) -> list[str]:
    return [sys.executable, "-m", "sparsebench.cli", "run", "--policy", "quest", "--model", "tiny:llama",
            "--dataset", str(data), "--seq-len", "160", "--docs", str(docs), "--out", str(out), "--no-progress"]


def _corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(4):
        (folder / f"d{i}.txt").write_text(f"Document {i}. " + "The tide came in over the sand. " * 40)
    return folder


def test_killed_run_resumes_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    data = _corpus(tmp_path)
    proc = subprocess.Popen(_cmd(out, 4, data), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and (not out.exists() or len(read_rows(out)) < 1):
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: at least one row written, not all
    proc.wait()
    first = read_rows(out)
    assert 1 <= len(first) < 4
    with out.open("a") as handle:
        handle.write('{"torn": ')  # as if the kill had hit a write
    done = subprocess.run(_cmd(out, 4, data), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    rows = read_rows(out)
    ids = [r["document"]["id"] for r in rows]
    assert sorted(ids) == ["d0", "d1", "d2", "d3"] and len(set(ids)) == 4
    assert rows[: len(first)] == first  # stored rows untouched


def test_append_row_never_glues_onto_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{"half": ')
    append_row(path, {"b": 2})
    assert [json.loads(line) for line in path.read_text().splitlines()[::2]] == [{"a": 1}, {"b": 2}]
    assert read_rows(path) == [{"a": 1}, {"b": 2}]
