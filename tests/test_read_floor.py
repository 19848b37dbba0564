"""`bench topp`'s read floor: every reading kernel reads the whole input, in every dtype the benchmark takes, and one
that skips part of it is refused (its time would be no floor)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from interpreted import SEED, run_interpreted

CHILD = textwrap.dedent("""
    import sys
    import torch
    from sparsebench.bench import read_floor

    out = []
    for case in torch.load(sys.argv[1]):
        x = case["x"]
        if case.get("skip_half"):  # a chunked read that reads only the first half of the input
            real = read_floor.chunk_sum
            read_floor.chunk_sum = lambda x, block, warps, out: real(x.view(-1)[: x.numel() // 2], block, warps, out)
        try:
            variants = read_floor.read_variants(x)
            out.append(dict(names=list(variants), chunk=read_floor.chunk_sum(x, 256, 2, torch.empty(
                -(-x.numel() // 256), dtype=torch.float32))))
        except (RuntimeError, ValueError) as exc:
            out.append(dict(error=f"{type(exc).__name__}: {exc}"))
        finally:
            if case.get("skip_half"):
                read_floor.chunk_sum = real
    torch.save(out, sys.argv[2])
""")


def test_read_variants_read_everything_and_refuse_a_partial_read(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(SEED)
    # 2,100 entries (a partial last chunk); row sums near 350, which bfloat16 holds only to a step of 2
    probs = torch.rand(3, 700, generator=gen)
    cases = [dict(x=probs), dict(x=probs.to(torch.bfloat16)), dict(x=probs.to(torch.float16)),
             dict(x=probs, skip_half=True), dict(x=probs.t())]
    full, bf16, fp16, skipping, strided = run_interpreted(CHILD, cases, tmp_path, timeout=300)
    for got, x in ((full, probs), (bf16, probs.to(torch.bfloat16)), (fp16, probs.to(torch.float16))):
        assert "error" not in got, got
        assert {"probs.sum(-1)", "probs.sum()", "chunk_sum(block=256, warps=2)"} <= set(got["names"])
        expected = torch.stack([c.float().sum() for c in x.reshape(-1).split(256)])
        torch.testing.assert_close(got["chunk"], expected, rtol=1e-5, atol=1e-6, msg=f"seed {SEED}")
    assert "read kernel chunk_sum(block=256, warps=2) summed" in skipping["error"], skipping
    assert "does not read the whole input" in skipping["error"]
    assert "needs a contiguous tensor" in strided["error"], strided
