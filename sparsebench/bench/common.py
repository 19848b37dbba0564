"""Small pieces every benchmark report uses: number formatting, the GPU driver version, writing the report."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fmt(v: float | None, spec: str = ".1f") -> str:
    """A table cell: ``-`` for a missing (None or NaN) value."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def driver_version() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi``, or None where it is absent or fails."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def report_saver(out: Path, name: str,
                 render: Callable[[dict[str, Any]], str] | None = None) -> Callable[[dict[str, Any]], None]:
    """Writes ``bench_NAME.json`` (and ``bench_NAME.md`` from ``render``) under ``out``; a benchmark calls it
    after every row, so a run cut short by a time limit still leaves the rows it finished."""

    def save(report: dict[str, Any]) -> None:
        (out / f"bench_{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        if render is not None:
            (out / f"bench_{name}.md").write_text(render(report))

    return save


def save_probe(out: Path | None, filename: str, rows: list[dict[str, Any]], method: str, **extra: Any) -> None:
    """Write a device probe's rows as ``out/filename`` (JSON) with the GPU, driver and package versions and how it
    timed (``method``); nothing when ``out`` is None. Why one helper: every probe under ``benchmarks/device``
    records the same provenance, so a committed result says where and how it was measured."""
    if out is None:
        return
    import torch

    out.mkdir(parents=True, exist_ok=True)
    try:
        import triton
    except ImportError:  # the torch-only probes run without it
        triton = None
    env: dict[str, Any] = dict(torch=torch.__version__, triton=getattr(triton, "__version__", None),
                               driver=driver_version(),
                               gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    (out / filename).write_text(json.dumps(dict(**env, method=method, **extra, rows=rows), indent=1, default=str))


def table_then_notes(table: Callable[[dict[str, Any]], str],
                     notes: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    """The markdown of a benchmark whose report is a table followed by its explanatory notes."""
    return lambda report: table(report) + "\n\n" + notes(report) + "\n"


def run_and_publish(name: str, args: Any, run: Callable[[Any, Callable[[dict[str, Any]], None]], dict[str, Any]],
                    render: Callable[[dict[str, Any]], str], *, render_while_running: bool = False,
                    echo: bool = True) -> int:
    """A benchmark's ``main`` after parsing: ``run(args, save)`` saving as it goes (the markdown too with
    ``render_while_running``), then the final ``bench_NAME.json`` and ``.md``, the table on stdout with
    ``echo``, and where they went. Returns the exit status 0."""
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args, report_saver(args.out, name, render if render_while_running else None))
    report_saver(args.out, name, render)(report)
    if echo:
        print(render(report))
    print(f"wrote {args.out / f'bench_{name}.json'} and {args.out / f'bench_{name}.md'}")
    return 0
