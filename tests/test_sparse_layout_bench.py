"""The instruments of benchmarks/device/sparse_layout.py (issue 5's layout experiment) measure what they claim: the
run-length selections keep the asked number of blocks in runs of the asked length, and both gather-read kernels
(pointer loads and TMA tensor descriptors) sum exactly the K and V rows of the listed blocks (Triton's interpreter).
So does gather_bandwidth_probe.py's reduced split loop (scores, online softmax, ``P V``): it gives exact attention
over the listed blocks with and without its block-id prefetch. The probes' shared inputs keep 22% of the blocks as
ascending lists, and a probe's saved JSON carries its provenance."""

from __future__ import annotations

import sys
import textwrap

import torch
from interpreted import REPO, SEED, run_interpreted

sys.path.insert(0, str(REPO / "benchmarks" / "device"))
from sparse_layout import runs_mask

CHILD = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, "benchmarks/device")
    import sparse_layout as sl
    import gather_bandwidth_probe as gb
    from triton.tools.tensor_descriptor import TensorDescriptor
    from sparsebench.kernels.triton_backend import TritonBackend
    from sparsebench.selection import Selection
    out = []
    for c in torch.load(sys.argv[1]):
        k, v, mask, splits = c["k"], c["v"], c["mask"], c["splits"]
        heads, n_tokens, d = k.shape[1], k.shape[2], k.shape[3]
        plan = TritonBackend("indices").plan(Selection(mask), block_size=16, n_tokens=n_tokens)
        idx, cnt = plan.indices[0].contiguous(), plan.counts[0].contiguous()
        res = torch.empty(heads * splits * d)
        sl._gather_sum[(heads, splits)](k, v, idx, cnt, res, idx.shape[-1], k.stride(1), k.stride(2), BS=16, D=d, BPT=2)
        tma = torch.empty(heads * splits * d)
        kd = TensorDescriptor.from_tensor(k.reshape(-1, d), [16, d])
        vd = TensorDescriptor.from_tensor(v.reshape(-1, d), [16, d])
        sl._gather_sum_tma[(heads, splits)](kd, vd, idx, cnt, tma, idx.shape[-1], n_tokens, BS=16, D=d)
        entry = dict(pointer=res.view(heads, splits, d).sum(1), tma=tma.view(heads, splits, d).sum(1))
        if d >= 16:  # gather_bandwidth_probe's reduced split loop: one split, so its rows are the whole answer
            q = c["q"]
            for prefetch in (False, True):
                o = torch.empty(heads * 16, d)
                gb._attend[(heads, 1)](q, k, v, idx, cnt, o, n_tokens, idx.shape[-1], d**-0.5 * 1.4426950408889634,
                                       BS=16, D=d, BPT=2, GROUP=4, PREFETCH=prefetch, MATH=True)
                entry[f"attend_prefetch{int(prefetch)}"] = o.view(heads, 16, d)[:, :4]
        out.append(entry)
    import probe_inputs
    pb, sel, idx, cnt = probe_inputs.decode_problem(300, device="cpu")  # 19 blocks, 4 kept a kv head
    out.append(dict(problem=(tuple(pb.k.shape), sel, idx, cnt)))
    torch.save(out, sys.argv[2])
    """
)


def test_runs_mask_keeps_runs_of_the_asked_length() -> None:
    """``keep`` blocks per head: aligned runs of ``run`` blocks (all but at most one whole), or one range."""
    gen = torch.Generator().manual_seed(SEED)
    for run, keep in ((1, 9), (4, 12), (4, 10)):
        mask = runs_mask(40, 3, keep, run, gen)[0]
        assert (mask.sum(-1) == keep).all(), (run, keep, SEED)
        whole = mask.view(3, 40 // run, run).all(-1).sum(-1)  # aligned runs kept entirely, per head
        assert (whole == keep // run).all(), (run, keep, SEED)
    mask = runs_mask(40, 2, 30, 30, gen)[0]
    for row in mask:
        kept = row.nonzero().flatten()
        assert len(kept) == 30 and int(kept[-1] - kept[0]) == 29, SEED


def test_gather_read_kernels_sum_the_listed_blocks_interpreted(tmp_path) -> None:
    gen = torch.Generator().manual_seed(SEED)
    cases = []
    for heads, n_blocks, keep, run, splits in ((2, 10, 3, 1, 2), (1, 12, 8, 4, 3)):
        cases.append(dict(k=torch.randn(1, heads, 16 * n_blocks, 16, generator=gen),
                          v=torch.randn(1, heads, 16 * n_blocks, 16, generator=gen),
                          mask=runs_mask(n_blocks, heads, keep, run, gen), splits=splits,
                          q=torch.randn(heads * 4, 16, generator=gen)))
    outs = run_interpreted(CHILD, cases, tmp_path)
    shape, sel, idx, cnt = outs.pop()["problem"]  # probe_inputs.decode_problem: bench attention's shapes, 22% kept
    assert shape == (1, 8, 300, 128) and sel.shape == (1, 8, 19) and (sel.sum(-1) == 4).all() and (cnt == 4).all()
    for h in range(8):
        assert torch.equal(idx[0, h, :4].long(), sel[0, h].nonzero().flatten()), h
    for case, got in zip(cases, outs, strict=True):
        k, v, mask = case["k"][0], case["v"][0], case["mask"][0]
        rows = mask.repeat_interleave(16, dim=-1)  # [heads, tokens]
        want = torch.stack([(k[h][rows[h]] + v[h][rows[h]]).sum(0) for h in range(k.shape[0])])
        torch.testing.assert_close(got["pointer"], want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got["tma"], want, rtol=1e-4, atol=1e-4)
        for h in range(k.shape[0]):  # four query rows a kv head, attending over the listed blocks only
            keys, vals = k[h][rows[h]], v[h][rows[h]]
            ref = torch.softmax(case["q"][4 * h: 4 * h + 4] @ keys.T * 16**-0.5, -1) @ vals
            for prefetch in (0, 1):
                torch.testing.assert_close(got[f"attend_prefetch{prefetch}"][h], ref, rtol=1e-4, atol=1e-4)


def test_save_probe_records_provenance(tmp_path) -> None:
    """``save_probe`` writes the rows with the versions and the timing method, and nothing without a folder."""
    import json

    from sparsebench.bench.common import save_probe

    save_probe(None, "x.json", [dict(a=1)], "nothing")
    assert not list(tmp_path.iterdir())
    save_probe(tmp_path / "sub", "x.json", [dict(a=1)], "CUDA-graph replays", contexts=[8])
    got = json.loads((tmp_path / "sub" / "x.json").read_text())
    assert got["rows"] == [dict(a=1)] and got["method"] == "CUDA-graph replays" and got["contexts"] == [8]
    assert got["torch"] == torch.__version__ and "gpu" in got and "driver" in got
