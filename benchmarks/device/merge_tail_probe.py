"""How much of the 128K step is the merge? The split kernel timed alone (the merge launch replaced by nothing, so the
output is not finished: a timing experiment only) against split + merge, same problem, selection and timer.

    python3 benchmarks/device/merge_tail_probe.py --out DIR
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

import torch
from probe_inputs import decode_problem

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import time_gpu
from sparsebench.kernels import triton_decode
from sparsebench.kernels.triton_decode import sparse_decode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    dev, bs = "cuda", 16
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=dev)
    merge = triton_decode.merge_partials
    rows = []
    for t in (int(c) for c in args.contexts.split(",")):
        pb, sel, idx, cnt = decode_problem(t, device=dev)
        q, k, v, d = pb.q, pb.k, pb.v, pb.q.shape[-1]
        step = functools.partial(sparse_decode, q, k, v, sel, block_size=bs, scaling=d**-0.5, indices=idx,
                                 counts=cnt)

        for label, merge_fn in (("split + merge", merge), ("split kernel alone", lambda *a, **kw: None)):
            triton_decode.merge_partials = merge_fn
            try:
                us = statistics.median(time_gpu(step, warmup=5, repeats=args.repeats, flush=flush,
                                                flush_by_reading=True))
            finally:
                triton_decode.merge_partials = merge
            rows.append(dict(context=t, what=label, us=us))
            print(f"{t:>7} {label:<20} {us:6.1f} us", flush=True)
    save_probe(args.out, "merge_tail.json", rows,
               "CUDA-graph replays, L2 flushed by reading 256 MB, median; 22% of 16-token blocks, 32 q / 8 kv heads "
               "x 128, bf16, default kernel configuration")


if __name__ == "__main__":
    main()
