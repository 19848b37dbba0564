"""Benchmarks reachable as ``sparsebench bench NAME``; each module has ``main(argv) -> int``."""

from __future__ import annotations

BENCHMARKS = {
    "topp": ("sparsebench.bench.topp", "sorting-free Triton top-p vs sort-based top-p vs one read (GPU)"),
    "attention": ("sparsebench.bench.attention", "block-sparse decode step (select + plan + kernel) vs dense (GPU)"),
    "decode": ("sparsebench.bench.decode", "decode tokens/s per policy on the fast engine vs the bandwidth bound"),
    "specdec": ("sparsebench.bench.specdec", "speculative decoding with SpecAttn verification vs the bound (GPU)"),
}
