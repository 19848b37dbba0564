"""Running Triton kernels under the CPU interpreter in a child process (shared by the kernel tests).

Why a child: ``TRITON_INTERPRET`` is read when triton is imported, for the whole process; setting it in
the test process would leak into every other test. Each kernel test module builds its cases, writes a
small child script that runs them, and gets the outputs back through ``torch.save``/``torch.load``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None
#: Fresh random cases each run unless pinned (the seed is printed in every failure message).
SEED = int(os.environ.get("SPARSEBENCH_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


def run_interpreted(child: str, cases: list[dict], workdir: Path, *, timeout: float = 600) -> list[dict]:
    """Run ``child`` (reads ``sys.argv[1]``, writes its outputs to ``sys.argv[2]``) on ``cases`` with
    ``TRITON_INTERPRET=1``; return the outputs. Skips the calling test when triton is not installed."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed; the kernels run only with triton (pip install triton)")
    torch.save(cases, workdir / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-c", child, str(workdir / "cases.pt"), str(workdir / "out.pt")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"interpreter child failed (seed {SEED}):\n{proc.stderr[-4000:]}"
    return torch.load(workdir / "out.pt")
