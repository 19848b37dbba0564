"""Does the block-sparse kernel's speed depend on where the kept blocks lie? (issue 5, the attention-step targets)

Why: at 128K the Triton kernel reads the kept 22% at about 2.5 TB/s (47 µs for 118 MB) whatever its tile, warps,
stages or split count (`results/h200_2026-11-28/bench_attention_sweep_run1.json`: 46.8-50.7 µs over 30
configurations), while dense FlashInfer streams the whole cache at about 3.75 TB/s. If the gap is the access pattern
(16-token blocks, 4 KB of K and 4 KB of V per block and head, scattered at random by the benchmark's top-k of random
scores), the same kernel on the same number of blocks laid out in longer runs should get faster, and the 3.5x target
is a property of the selection's layout, not of the kernel. This script measures exactly that, with the benchmark's
own problem, timer (CUDA-graph replays, L2 flushed, median) and backend:

- the kernel (Triton "indices" mode, default configuration) on selections with the same number of blocks per kv
  head (22%) laid out at random (as `bench attention`'s top-k), in random runs of 4, 16 and 64 consecutive blocks, and
  as one contiguous range;
- a plain gather-read kernel (no attention math: it sums the selected K and V tiles) on the random and contiguous
  layouts, to separate the memory system from the kernel;
- the fused top-k + block lists (`topk_select`) for one layer, and for the 30 sparse layers of a step in one launch
  (a SpecAttn step has every layer's selection input, the draft's attention, before the target's forward).

  PYTHONPATH=$PWD python3 benchmarks/device/sparse_layout.py --out $OUT/sparse_layout.json

Writes one JSON file and prints a table. Needs CUDA and triton.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

from sparsebench.bench.attention import Problem, Timer, copy_bandwidth, make_problem, parse_args
from sparsebench.kernels.topk import topk_select
from sparsebench.kernels.triton_backend import TritonBackend
from sparsebench.kernels.triton_support import tl, triton
from sparsebench.selection import Selection

#: Sparse layers of a step whose selections one launch can make when their inputs exist before the forward
#: (SpecAttn: the draft's attention of every mapped layer; an 8B-shaped target has 30 sparse layers).
LAYERS = 30


def runs_mask(n_blocks: int, heads: int, keep: int, run: int, gen: torch.Generator) -> torch.Tensor:
    """``[1, heads, n_blocks]`` bitmap with ``keep`` blocks per head in random, non-overlapping runs of ``run``
    consecutive blocks (``run == 1``: uniformly random blocks; ``run >= keep``: one contiguous range)."""
    mask = torch.zeros(heads, n_blocks, dtype=torch.bool)
    slots = n_blocks // run
    for h in range(heads):
        if run >= keep:
            start = int(torch.randint(0, n_blocks - keep + 1, (1,), generator=gen))
            mask[h, start : start + keep] = True
            continue
        chosen = torch.randperm(slots, generator=gen)[: -(-keep // run)]
        blocks = (chosen.view(-1, 1) * run + torch.arange(run)).flatten()[:keep]
        mask[h, blocks] = True
    return mask.unsqueeze(0)


@triton.jit
def _split_range(cnt_ptr):
    """(kv head, split, splits, first and end list position) of this program: kv head ``h``'s list split evenly
    over ``num_programs(1)`` programs, as the decode kernel's ``indices`` mode does."""
    h = tl.program_id(0)
    s = tl.program_id(1)
    n_s = tl.num_programs(1)
    count = tl.load(cnt_ptr + h)
    return h, s, n_s, count * s // n_s, count * (s + 1) // n_s


@triton.jit
def _gather_sum(k_ptr, v_ptr, idx_ptr, cnt_ptr, out_ptr, n_blocks, stride_kh, stride_kt,
                BS: tl.constexpr, D: tl.constexpr, BPT: tl.constexpr):
    """Sum the K and V rows of the listed blocks of kv head ``program_id(0)``, split ``program_id(1)``: the
    kernel's memory traffic (index lists, 16-token blocks) without its arithmetic."""
    h, s, n_s, lo, hi = _split_range(cnt_ptr)
    t = tl.arange(0, BPT * BS)
    d = tl.arange(0, D)
    acc = tl.zeros([BPT * BS, D], dtype=tl.float32)
    for start in range(lo, hi, BPT):
        slot = start + t // BS
        ok = slot < hi
        blk = tl.load(idx_ptr + h * n_blocks + slot, mask=ok, other=0)
        tok = (blk * BS + t % BS).to(tl.int64)
        off = h.to(tl.int64) * stride_kh + tok[:, None] * stride_kt + d[None, :]
        acc += tl.load(k_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
        acc += tl.load(v_ptr + off, mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(out_ptr + (h * n_s + s) * D + d, tl.sum(acc, axis=0))


@triton.jit
def _gather_sum_tma(k_desc, v_desc, idx_ptr, cnt_ptr, out_ptr, n_blocks, n_tokens, BS: tl.constexpr,
                    D: tl.constexpr):
    """:func:`_gather_sum` with each block's K and V fetched by a TMA copy (a host tensor descriptor over the
    cache as ``[Hkv * T, D]``, one ``[BS, D]`` box per block): does Hopper's bulk copy engine read scattered
    4 KB blocks faster than pointer loads?"""
    h, s, n_s, lo, hi = _split_range(cnt_ptr)
    acc = tl.zeros([BS, D], dtype=tl.float32)
    for j in range(lo, hi):
        row = h * n_tokens + tl.load(idx_ptr + h * n_blocks + j) * BS
        acc += k_desc.load([row, 0]).to(tl.float32)
        acc += v_desc.load([row, 0]).to(tl.float32)
    tl.store(out_ptr + (h * n_s + s) * D + tl.arange(0, D), tl.sum(acc, axis=0))


def time_gather_tma(timer: Timer, plan: object, pb: Problem, splits: int, block_size: int, *, warps: int = 4,
                    stages: int = 3) -> float:
    """The TMA gather-read kernel's median µs on ``plan``'s lists."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    idx, cnt = plan.indices[0].contiguous(), plan.counts[0].contiguous()
    heads, n_tokens, d = pb.k.shape[1], pb.k.shape[2], pb.k.shape[-1]
    kd = TensorDescriptor.from_tensor(pb.k.reshape(-1, d), [block_size, d])
    vd = TensorDescriptor.from_tensor(pb.v.reshape(-1, d), [block_size, d])
    out = torch.empty(heads * splits * d, dtype=torch.float32, device=pb.k.device)

    def gather() -> None:
        _gather_sum_tma[(heads, splits)](kd, vd, idx, cnt, out, idx.shape[-1], n_tokens, BS=block_size, D=d,
                                         num_warps=warps, num_stages=stages)

    return timer(gather, graph=True)


def time_attention(timer: Timer, backend: TritonBackend, plan: object, pb: Problem) -> float:
    """The kernel's median µs on ``plan``'s lists."""
    return timer(lambda: backend.run(plan, pb.q, pb.k, pb.v, scaling=pb.scaling), graph=True)


def time_gather(timer: Timer, plan: object, pb: Problem, splits: int, block_size: int, *, bpt: int = 4,
                warps: int = 4, stages: int = 3) -> float:
    """The gather-read kernel's median µs on ``plan``'s lists."""
    idx, cnt = plan.indices[0].contiguous(), plan.counts[0].contiguous()
    heads, d = pb.k.shape[1], pb.k.shape[-1]
    out = torch.empty(heads * splits * d, dtype=torch.float32, device=pb.k.device)

    def gather() -> None:
        _gather_sum[(heads, splits)](pb.k, pb.v, idx, cnt, out, idx.shape[-1], pb.k.stride(1), pb.k.stride(2),
                                     BS=block_size, D=d, BPT=bpt, num_warps=warps, num_stages=stages)

    return timer(gather, graph=True)


def gather_sweep(timer: Timer, plan: object, pb: Problem, block_size: int, nbytes: int) -> list[dict]:
    """The gather-read kernel over tiles, warps, stages and splits: how fast can a Triton kernel read these
    lists at all (the attention kernel cannot beat its own loads)."""
    out = []
    for bpt, warps, stages, splits in itertools.product((4, 8), (4, 8), (1, 2, 3, 4), (33, 66, 132)):
        if (stages - 1) * 2 * bpt * block_size * pb.k.shape[-1] * pb.k.element_size() > 160 * 1024:
            continue
        try:
            us = time_gather(timer, plan, pb, splits, block_size, bpt=bpt, warps=warps, stages=stages)
        except Exception as exc:
            out.append(dict(kind="pointer", bpt=bpt, warps=warps, stages=stages, splits=splits, error=str(exc)[:200]))
            continue
        out.append(dict(kind="pointer", bpt=bpt, warps=warps, stages=stages, splits=splits, us=us,
                        TBps=nbytes / us / 1e6))
    for warps, stages, splits in itertools.product((4,), (2, 3, 4, 6), (33, 66, 132)):
        try:
            us = time_gather_tma(timer, plan, pb, splits, block_size, warps=warps, stages=stages)
        except Exception as exc:
            out.append(dict(kind="tma", warps=warps, stages=stages, splits=splits, error=str(exc)[:300]))
            continue
        out.append(dict(kind="tma", bpt=1, warps=warps, stages=stages, splits=splits, us=us, TBps=nbytes / us / 1e6))
    best = sorted((r for r in out if "us" in r), key=lambda r: r["us"])[:8]
    for r in best:
        print(f"  gather sweep best: {r}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--contexts", default="32768,131072")
    ap.add_argument("--splits", type=int, default=66, help="programs per kv head of the gather-read kernel")
    ap.add_argument("--gather-sweep", action="store_true", help="also sweep the gather-read kernel's launch at the "
                    "largest context, random layout")
    own = ap.parse_args()
    args = parse_args(["--out", str(own.out.parent), "--repeats", "30"])
    device = "cuda"
    gen = torch.Generator().manual_seed(0)
    timer = Timer(args, device)
    bandwidth = copy_bandwidth(timer, device)
    backend = TritonBackend("indices")
    rows = []
    contexts = [int(c) for c in own.contexts.split(",")]
    sweep: list[dict] = []
    for n_tokens in contexts:
        pb = make_problem(n_tokens, args, device, gen)
        heads = pb.k.shape[1]
        keep = round(args.keep * pb.n_blocks)
        per_block = 2 * args.block_size * pb.k.shape[-1] * pb.k.element_size()  # K + V bytes of one block
        for layers in (1, LAYERS):  # the selection for one layer, and for every layer of a step in one launch
            scores = torch.randn(layers, heads, pb.n_blocks, generator=gen).to(device)
            sel_us = timer(lambda scores=scores, keep=keep: topk_select(scores, keep), graph=True)
            rows.append(dict(context=n_tokens, kernel=f"topk_select x{layers}", us=sel_us,
                             us_per_layer=sel_us / layers))
            print(f"{n_tokens:>7} top-k + lists for {layers:>2} layer(s) in one launch: {sel_us:6.1f} us "
                  f"({sel_us / layers:.1f} us per layer)", flush=True)
        for run in (1, 4, 16, 64, keep):
            sel = Selection(runs_mask(pb.n_blocks, heads, keep, run, gen).to(device))
            plan = backend.plan(sel, block_size=args.block_size, n_tokens=pb.n_tokens)
            us = time_attention(timer, backend, plan, pb)
            nbytes = per_block * keep * heads
            row = dict(context=n_tokens, layout="contiguous" if run >= keep else f"runs of {run}", kernel="attention",
                       kept_blocks_per_head=keep, us=us, bytes=nbytes, TBps=nbytes / us / 1e6,
                       bound_us=nbytes / bandwidth * 1e6)
            note = ""
            if run == 1 and own.gather_sweep and n_tokens == max(contexts):
                sweep = gather_sweep(timer, plan, pb, args.block_size, nbytes)
            if run in (1, keep):
                g_us = time_gather(timer, plan, pb, own.splits, args.block_size)
                rows.append(dict(row, kernel="gather-read", us=g_us, TBps=nbytes / g_us / 1e6))
                note = f", gather-read {g_us:6.1f} us ({nbytes / g_us / 1e6:.2f} TB/s)"
            rows.append(row)
            print(f"{n_tokens:>7} {row['layout']:>12}: attention {us:6.1f} us ({row['TBps']:.2f} TB/s){note}; "
                  f"bound {row['bound_us']:.1f} us", flush=True)
    own.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                copy_bandwidth_GBps=bandwidth / 1e9, batch=args.batch, q_heads=args.q_heads, kv_heads=args.kv_heads,
                head_dim=args.head_dim, dtype=args.dtype, block_size=args.block_size, keep=args.keep,
                timing="CUDA events around CUDA-graph replays, L2 flushed, median of 30", command=" ".join(sys.argv))
    own.out.write_text(json.dumps(dict(meta=meta, rows=rows, gather_sweep=sweep), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
