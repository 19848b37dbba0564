"""Small pieces every benchmark report uses: number formatting and the GPU driver version."""

from __future__ import annotations

import math
import subprocess


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
