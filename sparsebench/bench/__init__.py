"""Benchmarks reachable as ``sparsebench bench NAME``; each module has ``main(argv) -> int``."""

from __future__ import annotations

BENCHMARKS = {
    "topp": ("sparsebench.bench.topp", "sorting-free Triton top-p vs sort-based top-p vs one read (GPU)"),
}
