"""Results rows: one JSON object per (policy, parameters, model, document), appended atomically."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

import sparsebench

_PACKAGES = ("torch", "transformers", "triton", "flashinfer-python", "pluggy", "datasets")


def environment_info(device: torch.device | str) -> dict[str, Any]:
    """Versions and device: what a reader needs to reproduce or distrust a number."""
    versions = {"sparsebench": sparsebench.__version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        device_name = torch.cuda.get_device_name(index)
        versions["cuda"] = torch.version.cuda
    else:
        device_name = platform.processor() or platform.machine()
    return {"versions": versions, "device": dev.type, "device_name": device_name,
            "threads": torch.get_num_threads(), "platform": platform.platform()}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row as a single ``write`` of one line (O_APPEND), then fsync.

    A reader never sees half a row from a run that was killed between rows, and concurrent appenders
    do not interleave within a line.
    """
    line = (json.dumps(row, sort_keys=True, default=_json_default) + "\n").encode()
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # a run killed mid-write left a torn line: never glue a row onto it
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows of a results file (a torn last line, if any, is ignored)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (Path, torch.device)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
