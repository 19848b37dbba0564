"""The instruments of benchmarks/device/topp_skeleton_probe.py (issue 4's floor for an exact top-p) are what the
RESULTS section says they are, checked without a GPU.

- Every skeleton variant the RESULTS table rests on compiles for sm_90 with no register spills at the probe's largest
  entries a thread, since a spill would make the floor slower than the design it stands for. The exception, named in
  RESULTS: the no-exchange kernels with a packed mask spill at 64 and 32 entries a thread (512 and 1024 threads).
- The packed-mask reader undoes the warp ballots' layout.
- The table and the figure take the fastest byte-mask shape per length and round count.
"""

from __future__ import annotations

import itertools
import sys

import pytest
import torch
from interpreted import REPO

from sparsebench.kernels.compile_check import nvrtc_compile, nvrtc_library

sys.path.insert(0, str(REPO / "benchmarks" / "device"))
import topp_skeleton_probe as probe


@pytest.mark.skipif(nvrtc_library() is None, reason="needs NVRTC: pip install nvidia-cuda-nvrtc-cu12")
def test_skeleton_sources_compile_without_spills() -> None:
    for (threads, items), (exchange, ctas), rounds, bits in itertools.product(
            probe.MAX_ITEMS.items(), (("global", 1), ("global", 4), ("cluster", 2), ("cluster", 8)), (0, 1, 2),
            (False, True)):
        if bits and rounds == 0 and threads > 256:
            continue  # the known exception (module docstring)
        log = nvrtc_compile(probe.skeleton_source(threads, ctas, items, rounds, exchange, bits))
        assert "0 bytes spill stores" in log, (threads, items, exchange, ctas, rounds, bits, log)


def test_unpack_bits_reads_the_ballot_layout() -> None:
    gen = torch.Generator().manual_seed(0)
    rows, n = 3, 96
    mask = torch.rand(rows, n, generator=gen) > 0.6
    # a warp's ballot: bit l of word w is entry 32 w + l; the words stored little-endian, as the kernel's u32 stores
    weights = 2 ** torch.arange(32, dtype=torch.int64)
    words = (mask.view(rows, n // 32, 32).long() * weights).sum(-1)
    stored = torch.stack([(words >> (8 * b)) & 0xFF for b in range(4)], dim=-1).to(torch.uint8).view(rows, n // 8)
    assert torch.equal(probe.unpack_bits(stored, n), mask)


def _row(n: int, rounds: int, us: float, mask: str = "bytes", threads: int = 256) -> dict[str, object]:
    return dict(n=n, rounds=rounds, us=us, mask=mask, read_us=2.0, topp_us=9.0, ctas=1, threads=threads)


def test_fastest_takes_the_quickest_byte_mask_shape() -> None:
    rows = [_row(1024, 1, 3.0, threads=512), _row(1024, 1, 2.5, threads=256), _row(1024, 1, 1.0, mask="bits"),
            _row(1024, 2, 4.0), _row(2048, 0, 1.5)]
    best = probe.fastest(rows)
    assert set(best) == {(1024, 1), (1024, 2), (2048, 0)}
    assert best[(1024, 1)]["us"] == 2.5 and best[(1024, 1)]["threads"] == 256  # bits rows are not the format used


def test_plot_writes_the_figure(tmp_path: object) -> None:
    pytest.importorskip("matplotlib")
    rows = [_row(n, r, 2.0 + r + n / 4096) for n in (1024, 2048, 4096) for r in (0, 1, 2)]
    paths = probe.plot(rows, tmp_path / "skeleton.png")  # type: ignore[operator]
    assert [p.suffix for p in paths] == [".png", ".svg"] and all(p.stat().st_size > 1000 for p in paths)


def test_expected_threshold_follows_the_kernel_rounds() -> None:
    x = torch.tensor([[0.5, 0.25, 0.125, 0.125], [1.0, 0.0, 0.0, 3.0]])
    assert torch.allclose(probe.expected_threshold(x, 0), torch.full((2, 1), 0.25, dtype=torch.float64))
    assert torch.allclose(probe.expected_threshold(x, 1), torch.tensor([[0.25], [1.0]], dtype=torch.float64))
    # round 2: the mass at or above the mean, over n
    assert torch.allclose(probe.expected_threshold(x, 2), torch.tensor([[0.1875], [1.0]], dtype=torch.float64))


def test_shapes_keep_only_launchable_skeletons() -> None:
    import argparse

    args = argparse.Namespace(ctas="1,2,4,8", writes="bytes,bits", threads="256,512,1024",
                              exchanges="global,cluster", rows=32)
    got = probe.shapes(131072, args, sms=132)
    assert got and all(items <= probe.MAX_ITEMS[threads] for _, threads, items, _, _, _ in got)
    # a grid whose row barriers need more CTAs running than there are multiprocessors is never launched
    assert not [s for s in got if s[4] == "global" and 32 * s[0] > 132]
    assert (8, 1024, 16, False, "cluster", 2) in got and (4, 512, 64, False, "global", 1) in got
    short = probe.shapes(1024, args, sms=132)
    assert not [s for s in short if s[0] == 1 and s[4] == "cluster"]  # one CTA a row has no cluster to meet in
    assert not [s for s in short if s[2] == 1 and s[1] > 256]  # no idle threads
