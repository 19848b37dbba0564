"""Does the block-sparse kernel read faster when a block's K and V sit next to each other (one 8 KB run per
block and kv head) instead of in two separate caches (two 4 KB runs)?

Why: at 128K and 22% kept the split kernel reads 118 MB at about 3.1 TB/s, while dense FlashInfer reads its
contiguous pages at about 4 TB/s; scattered 4 KB runs may pay DRAM row activations that longer runs halve.
The probe needs no kernel change: the interleaved cache ``[B, Hkv, N, 2, bs, D]`` is viewed as ``2N``
virtual blocks; keys are read from virtual block ``2b`` and values from a view shifted by one block, so the
same list (``2b``) finds ``V`` of block ``b`` at ``2b + 1``. Same selection, same kernel, same launch.

    python3 benchmarks/device/kv_layout_probe.py --out DIR
"""

from __future__ import annotations

import functools

import torch
from probe_inputs import decode_problem, flushed_us, probe_args

from sparsebench.bench.common import save_probe
from sparsebench.kernels.triton_decode import compact_selection, sparse_decode


def main() -> None:
    args = probe_args(__doc__)
    dev, bs = "cuda", 16
    rows = []
    for t in (int(c) for c in args.contexts.split(",")):
        pb, sel, idx, cnt = decode_problem(t, device=dev)
        q, k, v = pb.q, pb.k, pb.v
        _, hkv, _, d = k.shape
        n, dt, k_keep = pb.n_blocks, k.dtype, int(cnt[0, 0])
        # interleaved: [1, Hkv, N, 2, bs, D] plus one spare block, viewed as 2N + 1 virtual blocks
        kv = torch.empty(1, hkv, 2 * n + 1, bs, d, device=dev, dtype=dt)
        kv[:, :, 0:2 * n:2] = k.view(1, hkv, n, bs, d)
        kv[:, :, 1:2 * n:2] = v.view(1, hkv, n, bs, d)
        flat = kv.view(1, hkv, (2 * n + 1) * bs, d)
        k2, v2 = flat[:, :, : 2 * n * bs], flat[:, :, bs: (2 * n + 1) * bs]
        sel2 = torch.zeros(1, hkv, 2 * n, dtype=torch.bool, device=dev)
        sel2[:, :, 0::2] = sel
        idx2, cnt2 = compact_selection(sel2)
        ref, _ = sparse_decode(q, k, v, sel, block_size=bs, scaling=d**-0.5, indices=idx, counts=cnt)
        got, _ = sparse_decode(q, k2, v2, sel2, block_size=bs, scaling=d**-0.5, indices=idx2, counts=cnt2)
        err = float((got.float() - ref.float()).abs().max())
        for name, fn in (
            ("separate K and V caches", functools.partial(sparse_decode, q, k, v, sel, block_size=bs,
                                                          scaling=d**-0.5, indices=idx, counts=cnt)),
            ("K and V of a block adjacent", functools.partial(sparse_decode, q, k2, v2, sel2, block_size=bs,
                                                              scaling=d**-0.5, indices=idx2, counts=cnt2)),
        ):
            us = flushed_us(fn, args.repeats)
            mb = 2 * hkv * k_keep * bs * d * 2 / 1e6
            rows.append(dict(context=t, layout=name, kernel_us=us, mb_read=mb, tb_per_s=mb / us,
                             max_abs_diff_vs_separate=err))
            print(f"{t:>7} {name:<30} {us:6.1f} us  {mb:6.1f} MB  {mb / us:5.2f} TB/s  (max |diff| {err:.1e})",
                  flush=True)
    save_probe(args.out, "kv_layout.json", rows,
               "split + merge kernels, CUDA-graph replays, L2 flushed by reading 256 MB, median")


if __name__ == "__main__":
    main()
