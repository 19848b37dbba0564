"""The fused top-k + lists launch over many rows at once, as ``bench attention``'s ``topk-layers`` runs it (every
sparse layer's selection in one launch: 30 layers x 8 kv heads = 240 rows): its time by kernel version and launch
shape, what it adds to a graph that already holds another launch, and a target for Nsight Compute.

Why: at 128K context that launch is 1.0 µs of the 39 µs attention step per layer (30 µs / 30 layers), timed alone
in its own graph replay, so it also carries the replay's fixed cost (the event pair, the first launch).

    python3 benchmarks/device/topk_rows_probe.py --out DIR [--rows 240] [--sizes 512,2048,8192] \
        [--other old=old_kernel/cuda_topk_old.py] [--variants new:default,new:1024x8,old:default]
    ncu --kernel-name sb_topk_lists --launch-skip 2 --launch-count 1 python3 benchmarks/device/topk_rows_probe.py --ncu
``--other NAME=FILE`` (repeatable) loads another version of :mod:`sparsebench.kernels.cuda_topk` (e.g. ``git show
main:sparsebench/kernels/cuda_topk.py > FILE``) as version ``NAME``; ``new`` is the checkout's. Every variant's
mask, lists and counts are checked against the sort-based reference. Timing: one CUDA-graph replay a call, L2
flushed by reading 256 MB before each, median of the replays; "after a fill" is the time the launch adds behind a
one-element fill in the same replay.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import time_gpu
from sparsebench.kernels import cuda_topk
from sparsebench.kernels.topk import topk_mask_reference


def _timed(fn: Any, flush: torch.Tensor, repeats: int) -> float:
    return statistics.median(time_gpu(fn, warmup=3, repeats=repeats, flush=flush, flush_by_reading=True))


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"cuda_topk_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exact(mod: ModuleType, x: torch.Tensor, k: int, ref: torch.Tensor) -> bool:
    """The variant's mask, ascending lists and counts equal the reference's (newest block added)."""
    rows, n = x.shape
    out = torch.empty(rows, n, dtype=torch.uint8, device=x.device)
    idx = torch.full((rows, n), -1, dtype=torch.int32, device=x.device)
    cnt = torch.empty(rows, dtype=torch.int32, device=x.device)
    mod.launch_topk_lists(x, k, out, idx, cnt, keep_last=True, last_in_budget=False)
    if not torch.equal(out.bool().cpu(), ref):
        return False
    for r in range(rows):
        ids = torch.nonzero(ref[r]).flatten().to(torch.int32)
        if int(cnt[r]) != ids.numel() or not torch.equal(idx[r, : ids.numel()].cpu(), ids):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rows", type=int, default=240)
    ap.add_argument("--sizes", default="512,2048,8192")
    ap.add_argument("--other", action="append", default=[], help="NAME=FILE: another cuda_topk.py, version NAME")
    ap.add_argument("--variants", default="new:default,old:default",
                    help="VERSION:SHAPE, SHAPE 'default' (the module's launch_shape) or THREADSxITEMS")
    ap.add_argument("--keep", type=float, default=0.22)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--ncu", action="store_true", help="only launch the default shape at the last size a few times")
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    modules = {"new": cuda_topk}
    for spec in args.other:
        name, path = spec.split("=", 1)
        modules[name] = _load(name, Path(path))
    if args.ncu:
        n = sizes[-1]
        x = torch.randn(args.rows, n, generator=gen).cuda()
        for _ in range(4):
            _exact(cuda_topk, x, round(args.keep * n), topk_mask_reference(x.cpu(), round(args.keep * n)))
        torch.cuda.synchronize()
        return
    flush = torch.empty(64 * 2**20, dtype=torch.float32, device="cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tiny = torch.empty(1, device="cuda")
    fill = _timed(tiny.zero_, flush, args.repeats)
    print(f"one-element fill, one graph replay: {fill:.2f} us", flush=True)
    results: list[dict[str, Any]] = []
    for n in sizes:
        k = round(args.keep * n)
        x = torch.randn(args.rows, n, generator=gen).cuda()
        x[args.rows // 2] = torch.randint(0, 4, (n,), generator=gen).float().cuda()  # ties straddle the k-th
        ref = topk_mask_reference(x.cpu(), k)
        ref[..., -1] = True
        out = torch.empty(args.rows, n, dtype=torch.uint8, device="cuda")
        idx = torch.empty(args.rows, n, dtype=torch.int32, device="cuda")
        cnt = torch.empty(args.rows, dtype=torch.int32, device="cuda")
        for variant in args.variants.split(","):
            version, shape_name = variant.split(":")
            mod = modules[version]
            default_shape = mod.launch_shape
            shape = default_shape(n, args.rows, sms) if shape_name == "default" else \
                tuple(int(v) for v in shape_name.split("x"))
            if shape[0] * shape[1] < n:
                continue
            mod.launch_shape = lambda *_a, shape=shape: shape
            try:
                def call(mod: ModuleType = mod, x: torch.Tensor = x, k: int = k,
                         bufs: tuple[torch.Tensor, ...] = (out, idx, cnt)) -> None:
                    mod.launch_topk_lists(x, k, *bufs, keep_last=True, last_in_budget=False)

                ok = _exact(mod, x, k, ref)
                one = _timed(call, flush, args.repeats)
                after = _timed(lambda call=call: (tiny.zero_(), call()), flush, args.repeats) - fill
            finally:
                mod.launch_shape = default_shape
            results.append(dict(n=n, rows=args.rows, k=k, version=version, shape=shape_name, threads=shape[0],
                                items=shape[1], exact=ok, one_us=one, after_fill_us=after))
            print(f"{args.rows} x {n:>5} {version}:{shape_name:<8} ({shape[0]}x{shape[1]}): one replay {one:6.2f} us,"
                  f" after a fill +{after:5.2f}; exact {ok}", flush=True)
    save_probe(args.out, "topk_rows.json", results, "one CUDA-graph replay a call, L2 flushed by reading 256 MB before "
               "each, median", fill_us=fill)


if __name__ == "__main__":
    main()
