"""How fast can a kernel gather the kept 16-token blocks at 128K, with pointer loads or with TMA, on scattered or on
consecutive blocks?

Why: the split kernel reads the kept blocks at about 3.1 TB/s, dense FlashInfer its contiguous pages at about 4 TB/s.
If a copy-only gather of *consecutive* blocks also stalls near 3.1 TB/s, the load path (how the kernel issues its
copies) is the limit and TMA bulk copies may lift it; if consecutive blocks reach ~4 TB/s and scattered ones do not,
the DRAM access pattern is the limit and no load path will fix it. Each kernel sums K + V of its blocks (no
attention math) over the split kernel's grid: (B * Hkv, splits) programs, each a contiguous share of a list.

    python3 benchmarks/device/gather_bandwidth_probe.py --out DIR

The copy-only kernels are the fourth session's (``sparse_layout.py``: ``_gather_sum``, ``_gather_sum_tma``), which
found the layout did not matter (write flush). The ninth session's raw files (``results/h200_2026-11-29_s9/gather_*``)
were taken at commit eb2329f with equivalent local copies of them; this probe's own part is ``_attend``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from sparsebench.bench.common import save_probe
from sparsebench.bench.topp import time_gpu

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_layout import _gather_sum, _gather_sum_tma, _split_range


@triton.jit
def _clock(like):
    """The GPU's global nanosecond timer (%globaltimer), and this program's multiprocessor (%smid); ``like`` (a
    scalar) only gives the results their shape."""
    now = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [like], dtype=tl.int64, is_pure=False,
                                    pack=1)
    sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r,r", [like], dtype=tl.int32, is_pure=False, pack=1)
    return now, sm


@triton.jit
def _l2_prefetch(ptr, on, NBYTES: tl.constexpr):
    """Ask the copy engine to bring ``NBYTES`` from ``ptr`` into L2 (``cp.async.bulk.prefetch``, sm_90), where
    ``on``: the request costs the program one instruction and no registers or shared memory while it is in flight."""
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.ne.u32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr, on.to(tl.int32) * NBYTES], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _attend(q_ptr, k_ptr, v_ptr, idx_ptr, cnt_ptr, out_ptr, n_tokens, n_blocks, scale, BS: tl.constexpr,
            D: tl.constexpr, BPT: tl.constexpr, GROUP: tl.constexpr, PREFETCH: tl.constexpr, MATH: tl.constexpr,
            times_ptr=None, TIMES: tl.constexpr = False, L2_AHEAD: tl.constexpr = 0):
    """The split kernel's loop reduced to its parts: ``PREFETCH`` loads the next tile's block ids one iteration
    ahead (as the split kernel does); ``MATH`` adds the scores, online softmax and ``P V`` (else K + V summed).
    ``TIMES``: write (start ns, end ns, multiprocessor) of each program to ``times_ptr`` (int64 ``[programs, 3]``).
    ``L2_AHEAD``: also ask for the K and V blocks of the tile that many tiles ahead to be brought into L2 (bulk
    prefetch), their ids loaded one iteration earlier still, so that more of the share is in flight than the
    pipeline's shared-memory stages hold."""
    bh, split, n_splits, lo, hi = _split_range(cnt_ptr)
    if TIMES:
        t_start, sm = _clock(bh)
    t = tl.arange(0, BPT * BS)
    t_slot = t // BS
    dims = tl.arange(0, D)
    rows = tl.arange(0, 16)
    q = tl.load(q_ptr + (bh * GROUP + rows)[:, None] * D + dims[None, :], mask=rows[:, None] < GROUP, other=0.0)
    k_base = k_ptr + bh.to(tl.int64) * n_tokens * D
    v_base = v_ptr + bh.to(tl.int64) * n_tokens * D
    m_i = tl.full([16], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([16], dtype=tl.float32)
    acc = tl.zeros([16, D], dtype=tl.float32)
    nxt = tl.load(idx_ptr + bh * n_blocks + lo + t_slot, mask=lo + t_slot < hi, other=0)
    first = (t % BS) == 0  # one request a block
    far = lo + L2_AHEAD * BPT + t_slot
    far_blk = tl.load(idx_ptr + bh * n_blocks + far, mask=first & (far < hi) & (L2_AHEAD > 0), other=0)
    for start in range(lo, hi, BPT):
        slot = start + t_slot
        ok = slot < hi
        if L2_AHEAD > 0:
            far = slot + L2_AHEAD * BPT
            far_ok = first & (far < hi)
            far_tok = (far_blk * BS).to(tl.int64)
            _l2_prefetch(k_base + far_tok * D, far_ok, NBYTES=BS * D * 2)
            _l2_prefetch(v_base + far_tok * D, far_ok, NBYTES=BS * D * 2)
            far_blk = tl.load(idx_ptr + bh * n_blocks + far + BPT, mask=first & (far + BPT < hi), other=0)
        if PREFETCH:
            blk = nxt
            nxt = tl.load(idx_ptr + bh * n_blocks + slot + BPT, mask=slot + BPT < hi, other=0)
        else:
            blk = tl.load(idx_ptr + bh * n_blocks + slot, mask=ok, other=0)
        tok = (blk * BS + t % BS).to(tl.int64)
        k = tl.load(k_base + tok[:, None] * D + dims[None, :], mask=ok[:, None], other=0.0)
        if MATH:
            sc = tl.dot(q, tl.trans(k)) * scale
            sc = tl.where(ok[None, :], sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(sc - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + tok[:, None] * D + dims[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        else:
            v = tl.load(v_base + tok[:, None] * D + dims[None, :], mask=ok[:, None], other=0.0)
            acc += tl.sum(k.to(tl.float32) + v.to(tl.float32), axis=0)[None, :]
    res = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + ((bh * n_splits + split) * 16 + rows)[:, None] * D + dims[None, :], res)
    if TIMES:
        t_end, _ = _clock(bh)
        slot = times_ptr + (bh * n_splits + split) * 3
        tl.store(slot, t_start)
        tl.store(slot + 1, t_end)
        tl.store(slot + 2, sm.to(tl.int64))


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--context", type=int, default=131072)
    ap.add_argument("--splits", default="33")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--l2-ahead", default="",
                    help="comma-separated L2 prefetch distances in tiles: time only the split kernel's loop (copy and "
                         "math, block ids prefetched, 3 stages, 4 warps) at each, instead of the default variants")
    args = ap.parse_args()
    from triton.tools.tensor_descriptor import TensorDescriptor

    dev, dt, bs, hkv, d, keep = "cuda", torch.bfloat16, 16, 8, 128, 0.22
    n = args.context // bs
    k_keep = round(keep * n)
    gen = torch.Generator(device=dev).manual_seed(0)
    k = torch.randn(1, hkv, args.context, d, device=dev, dtype=dt, generator=gen)
    v = torch.randn(1, hkv, args.context, d, device=dev, dtype=dt, generator=gen)
    flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=dev)
    scattered = torch.rand(hkv, n, device=dev, generator=gen).topk(k_keep, -1).indices.sort(-1).values
    consecutive = torch.arange(k_keep, device=dev).expand(hkv, k_keep)
    cnt = torch.full((hkv,), k_keep, dtype=torch.int32, device=dev)
    k2, v2 = k.view(-1, d), v.view(-1, d)
    k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [bs, d])
    v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [bs, d])
    mb = 2 * hkv * k_keep * bs * d * 2 / 1e6
    rows = []
    for pattern, blocks in (("scattered", scattered), ("consecutive", consecutive)):
        idx = torch.zeros(hkv, n, dtype=torch.int32, device=dev)
        idx[:, :k_keep] = blocks.to(torch.int32)
        for splits in _ints(args.splits):
            out = torch.empty(hkv * splits, d, device=dev)
            variants = [(f"pointer bpt{bpt} st{st}", functools.partial(
                _gather_sum[(hkv, splits)], k, v, idx, cnt, out, n, k.stride(1), k.stride(2), BS=bs, D=d, BPT=bpt,
                num_warps=4, num_stages=st)) for bpt, st in itertools.product((1, 4), (3, 4))]
            variants += [(f"tma st{st}", functools.partial(
                _gather_sum_tma[(hkv, splits)], k_desc, v_desc, idx, cnt, out, n, args.context, BS=bs, D=d,
                num_warps=4, num_stages=st)) for st in (3, 5, 8)]
            # The split kernel's loop rebuilt (_attend): with --l2-ahead only it, at each prefetch distance; otherwise
            # its reduced forms, at the first split count.
            if args.l2_ahead:
                variants = []
                loops = [(f"loop {'math' if math else 'copy'} l2 ahead {ahead}",
                          dict(PREFETCH=True, MATH=math, L2_AHEAD=ahead, num_warps=4, num_stages=3))
                         for math, ahead in itertools.product((False, True), _ints(args.l2_ahead))]
            elif splits == _ints(args.splits)[0]:
                loops = [(f"loop {'math' if math else 'copy'} {'prefetch' if prefetch else 'in-loop ids'} st{st} "
                          f"w{warps}", dict(PREFETCH=prefetch, MATH=math, num_warps=warps, num_stages=st))
                         for (prefetch, math), st, warps in itertools.product(
                             ((False, False), (True, False), (False, True), (True, True)), (3, 4), (4, 8))]
            else:
                loops = []
            if loops:
                q = torch.randn(hkv * 4, d, device=dev, dtype=dt, generator=gen)
                out16 = torch.empty(hkv * splits * 16, d, device=dev)
            for name, opts in loops:
                fn = functools.partial(_attend[(hkv, splits)], q, k, v, idx, cnt, out16, args.context, n,
                                       d**-0.5 * 1.4426950408889634, BS=bs, D=d, BPT=4, GROUP=4, **opts)
                us = statistics.median(time_gpu(fn, warmup=5, repeats=args.repeats, flush=flush,
                                                flush_by_reading=True))
                rows.append(dict(pattern=pattern, splits=splits, variant=name, us=us, mb=mb, tb_per_s=mb / us))
                print(f"{pattern:<11} splits {splits:>3} {name:<34} {us:6.1f} us  {mb / us:5.2f} TB/s", flush=True)
            ref = None
            for name, fn in variants:
                try:
                    fn()
                    torch.cuda.synchronize()
                    got = out.clone()
                    ok = ref is None or torch.allclose(got, ref, rtol=1e-3, atol=1e-2)
                    ref = got if ref is None else ref
                    us = statistics.median(time_gpu(fn, warmup=5, repeats=args.repeats, flush=flush,
                                                    flush_by_reading=True))
                except Exception as exc:
                    print(f"{pattern:<11} splits {splits:>3} {name:<18} FAILED {type(exc).__name__}: {exc}"[:300])
                    rows.append(dict(pattern=pattern, splits=splits, variant=name, error=str(exc)[:500]))
                    continue
                rows.append(dict(pattern=pattern, splits=splits, variant=name, us=us, mb=mb, tb_per_s=mb / us,
                                 matches_first=ok))
                print(f"{pattern:<11} splits {splits:>3} {name:<18} {us:6.1f} us  {mb / us:5.2f} TB/s  "
                      f"{'ok' if ok else 'DIFFERS'}", flush=True)
    save_probe(args.out, "gather_bandwidth.json", rows,
               "CUDA-graph replays, L2 flushed by reading 256 MB, median; K + V of 22% of 16-token blocks, 8 kv heads "
               "x 128, bf16")


if __name__ == "__main__":
    main()
