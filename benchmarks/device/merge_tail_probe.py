"""How much of the 128K step is the merge? The split kernel timed alone (the merge launch replaced by nothing, so the
output is not finished: a timing experiment only) against split + merge, same problem, selection and timer.

    python3 benchmarks/device/merge_tail_probe.py --out DIR
"""

from __future__ import annotations

import functools

from probe_inputs import decode_problem, flushed_us, probe_args

from sparsebench.bench.common import save_probe
from sparsebench.kernels import triton_decode
from sparsebench.kernels.triton_decode import sparse_decode


def main() -> None:
    args = probe_args(__doc__)
    dev, bs = "cuda", 16
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
                us = flushed_us(step, args.repeats)
            finally:
                triton_decode.merge_partials = merge
            rows.append(dict(context=t, what=label, us=us))
            print(f"{t:>7} {label:<20} {us:6.1f} us", flush=True)
    save_probe(args.out, "merge_tail.json", rows,
               "CUDA-graph replays, L2 flushed by reading 256 MB, median; 22% of 16-token blocks, 32 q / 8 kv heads "
               "x 128, bf16, default kernel configuration")


if __name__ == "__main__":
    main()
