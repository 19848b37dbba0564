"""Benchmark: one block-sparse decode attention step (select + plan + kernel) against dense decode.

What a row measures. For each context length, the dense references are FlashInfer's paged decode over
every page (when ``flashinfer`` imports) and torch SDPA; each sparse method is timed as the whole
attention step a policy-driven decoder runs (selection from random block scores -> Selection bitmap,
the backend's ``plan()``, its ``run()``), and also stage by stage: selection alone, planning alone,
kernel alone (``run()`` on a plan made beforehand). Selections: ``topk`` (random block scores through
:func:`sparsebench.kernels.topk.topk_mask`, the function the top-k policies call: the sorting-free Triton
kernel on CUDA), ``topk-torch`` (the previous path: ``torch.topk`` scattered into the bitmap, as the
baseline) and ``topp`` (the sorting-free top-p kernel,
:func:`sparsebench.kernels.topp.topp_mask_nd`, over random block probabilities whose spread is
calibrated so that it keeps about the same fraction). The fused path (issue 5): ``topk-fused`` is
:func:`sparsebench.kernels.topk.topk_select`, one launch writing the top-k bitmap and the block lists the
Triton backend reads (its ``plan()`` then launches nothing); ``quest-torch`` and ``quest-fused`` rank the
blocks by Quest's bound over the problem's own block key min/max (the former torch matmul path vs the
scoring kernel :func:`sparsebench.kernels.quest_kernels.quest_scores` feeding ``topk_select``). Methods
``triton-bitmap``/``triton-indices`` merge the split-K partials in a second launch (the backend's
default); ``triton-fused`` merges them in the decode kernel's own launch (``KernelConfig(fused_merge=True)``).
Measured on the H200 at 8K (B=1, 32q/8kv heads, D=128, bf16, 22% kept): ``topk-fused`` cut select + plan
from 9.8 + 5.7 µs (``topk``) to 8.4 + 1.2 µs, so it is the top-k policies' path on CUDA; ``triton-fused``
*lost*, 20.5 µs of kernel against 13.5 µs for ``triton-indices``, so it stays only as an option and as this
recorded row. ``topk-layers`` is ``topk-fused`` run once for the 30 sparse layers of a step (scores
``[30, Hkv, N]`` in one launch), each layer's row charged a thirtieth of it: a policy whose selection inputs all
exist before the target's forward (SpecAttn: the draft's attention) can select that way.
``topk-fixed`` / ``topk-layers-fixed`` count the newest block in the top-k budget, so every row keeps the same,
host-known number of blocks: what ``flashinfer-fixed`` needs to plan once and run in a CUDA graph (measured on
the H200: 26.3 / 53.0 µs of kernel at 32K / 128K against 22.1 / 47.8 µs for ``triton-indices``, so it stays a
recorded loser; ``flashinfer-fixed`` rows run only with those selections). The fastest step is
therefore ``topk-fused`` (or ``quest-fused``) x ``triton-indices``:
score -> top-k + lists (one launch) -> decode -> merge. ``cuda-indices`` is the same step with the NVRTC-compiled
cp.async + tensor-core kernel (:mod:`sparsebench.kernels.cuda_decode`); measured on the H200 within 3% of
``triton-indices`` at 8K-128K (its copy ring alone is no faster), so it stays a recorded alternative. All
selections keep the newest block. With
``--check``, the ``topk`` and ``topk-fused`` selections are also compared with the exact reference
(:func:`sparsebench.kernels.topk.topk_mask_reference`); a difference is reported under "Errors".

Timing: CUDA events around CUDA-graph replays for graph-safe methods (``timing`` column "graph"), around
eager calls otherwise ("eager": host work and synchronisations included); median of ``--repeats``
after ``--warmup``; L2 flushed before every timed call unless ``--no-flush``: by writing 256 MB (``--flush
write``, the default and the earlier tables' method; the dirty lines are written back during the timed call,
~8 µs on the H200 for dense and sparse alike) or by reading them (``--flush read``: clean lines, as a decode
step's weight reads leave the L2). ``--layers N`` times N distinct layers back to back per replay and reports
per-layer rows (:func:`layered_rows`): the launch and flush are then paid once per N layers, as in a step. With
``--layers 30`` (the sparse layers of a Llama-3-8B-shaped step) these rows are how issue 5's targets are judged:
the single-layer rows also carry the replay's floor, about 3-4 µs on the H200 for dense and sparse alike, which a
decode step pays once, not once a layer (``benchmarks/RESULTS.md``, sixteenth session). The
memory-bandwidth bound of a row is the bytes it must move (K/V of its blocks, the selection's reads and
writes, index lists and partial results) over the device-to-device copy bandwidth measured at start.

    sparsebench bench attention --out DIR                # GPU: B=1, Hq=32, Hkv=8, D=128, 8K/32K/128K
    sparsebench bench attention --out DIR --check        # also compare every method with the torch backend
    sparsebench bench attention --out DIR --layers 30 --flush read --check   # inside a decode step (issue 5)
    sparsebench bench attention --out DIR --sweep        # also time Triton kernel configurations
    sparsebench bench attention --out DIR --dry-run      # CPU: Triton interpreter, tiny sizes (checks the script)

Sparse methods come from :data:`METHODS` (name -> factory); ``flashinfer`` is included when
``sparsebench.kernels.flashinfer_backend`` imports and its backend is available. Writes
DIR/bench_attention.json and DIR/bench_attention.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import itertools
import os
import platform
import statistics
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sparsebench.bench.common import driver_version, fmt, run_and_publish
from sparsebench.kernels.base import AttentionBackend
from sparsebench.selection import Selection

if TYPE_CHECKING:  # a runtime import would import triton before --dry-run selects its interpreter
    from sparsebench.kernels.topk import Backend as TopKBackend

#: Targets from the project brief: whole sparse step vs dense FlashInfer decode, per context length.
TARGETS = {32768: 2.0, 131072: 3.5}
#: Dense FlashInfer decode measured earlier on the H200 with the default shapes (B=1, Hq=32, Hkv=8,
#: D=128, bf16), in microseconds: the reference the targets refer to when flashinfer is absent here.
REFERENCE_DENSE_FI_US = {8192: 25.0, 32768: 59.0, 131072: 190.0}
FLUSH_BYTES = 256 * 1024 * 1024
#: Floor on timed calls per measurement on a GPU (``--repeats`` below it is raised to it): a median of
#: fewer is noise at microsecond scale.
MIN_GPU_REPEATS = 20


# ----------------------------------------------------------------------------------------------
# sparse methods: name -> factory returning a backend, or raising MethodUnavailable with the reason


class MethodUnavailable(Exception):
    """A method cannot run here (missing package, no device); the message says why."""


def _triton(mode: str, *, fused_merge: bool) -> Callable[[argparse.Namespace], AttentionBackend]:
    """A Triton backend factory; ``fused_merge`` False keeps the two-launch split-K merge (the backend's
    default, measured faster), True the one-launch merge, unless ``--triton-config`` sets it."""
    def make(args: argparse.Namespace) -> AttentionBackend:
        from sparsebench.kernels.triton_backend import TritonBackend
        from sparsebench.kernels.triton_decode import KernelConfig

        reason = TritonBackend.unavailable_reason()
        if reason and not args.dry_run:
            raise MethodUnavailable(reason)
        config = triton_config(args.triton_config) or KernelConfig()
        if config.fused_merge is None:
            config = dataclasses.replace(config, fused_merge=fused_merge)
        return TritonBackend(selection_mode=mode, config=config)

    return make


def _flashinfer(name: str, **options: Any) -> Callable[[argparse.Namespace], AttentionBackend]:
    """A factory for the project's FlashInfer backend called ``name`` (``flashinfer``, or ``flashinfer-fixed`` for
    fixed-capacity selections), through the generic plan/run interface; ``options`` go to its constructor."""
    def make(args: argparse.Namespace) -> AttentionBackend:
        try:
            module = importlib.import_module("sparsebench.kernels.flashinfer_backend")
        except ImportError as exc:
            raise MethodUnavailable(f"sparsebench.kernels.flashinfer_backend does not import ({exc})") from None
        classes = [c for c in vars(module).values()
                   if isinstance(c, type) and issubclass(c, AttentionBackend) and getattr(c, "name", None) == name]
        if not classes:
            raise MethodUnavailable(f"sparsebench.kernels.flashinfer_backend defines no backend named {name!r}")
        reason = classes[0].unavailable_reason()
        if reason:
            raise MethodUnavailable(reason)
        return classes[0](**options)

    return make


def _cuda(args: argparse.Namespace) -> AttentionBackend:
    """The NVRTC-compiled cp.async kernel (:mod:`sparsebench.kernels.cuda_decode`) behind the Triton planning."""
    from sparsebench.kernels.cuda_backend import CudaBackend

    reason = CudaBackend.unavailable_reason()
    if reason:
        raise MethodUnavailable(reason)
    return CudaBackend()


#: Sparse methods timed by default, in table order. Add a method by adding a factory here.
METHODS: dict[str, Callable[[argparse.Namespace], AttentionBackend]] = {
    "triton-bitmap": _triton("bitmap", fused_merge=False),
    "triton-indices": _triton("indices", fused_merge=False),
    "triton-fused": _triton("indices", fused_merge=True),
    "flashinfer": _flashinfer("flashinfer"),
    # Plans once (fixed-capacity selections: topk-fixed, topk-layers-fixed), so the step is a CUDA graph.
    "flashinfer-fixed": _flashinfer("flashinfer-fixed"),
    "flashinfer-fixed-cuda-cores": _flashinfer("flashinfer-fixed", use_tensor_cores=False),
    # Explicit multi-stage cp.async copies (NVRTC); measured as fast as triton-indices, not faster: kept as a row.
    "cuda-indices": _cuda,
}


def triton_config(spec: str | None) -> Any:
    """``"blocks_per_tile=4,num_warps=4,num_stages=3,splits=32"`` -> a KernelConfig (None: defaults)."""
    if not spec:
        return None
    from sparsebench.kernels.triton_decode import KernelConfig

    fields = {}
    for part in spec.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in KernelConfig.__dataclass_fields__ or not value.strip().isdigit():
            known = ", ".join(KernelConfig.__dataclass_fields__)
            raise SystemExit(f"--triton-config: bad entry {part!r}; give NAME=INT with NAME one of {known}")
        fields[name.strip()] = int(value)
    return KernelConfig(**fields)


# ----------------------------------------------------------------------------------------------
# arguments and inputs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sparsebench bench attention", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for bench_attention.json and .md")
    ap.add_argument("--contexts", default=None,
                    help="comma-separated context lengths in tokens (default 8192,32768,131072; dry run 64,200)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--keep", type=float, default=0.22, help="fraction of blocks each selection keeps")
    ap.add_argument("--p", type=float, default=0.9, help="top-p mass for the topp selection")
    ap.add_argument("--selections", default="topk,topk-fused,topp",
                    help="comma-separated: topk, topk-fused, topk-fixed, topk-layers, topk-layers-fixed, topk-torch, "
                         "quest-torch, quest-fused, topp")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated sparse methods ({', '.join(METHODS)})")
    ap.add_argument("--triton-config", default=None,
                    help="Triton kernel parameters for the main rows, e.g. blocks_per_tile=4,num_warps=4,num_stages=3")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=100,
                    help=f"timed calls per measurement (median; at least {MIN_GPU_REPEATS} on a GPU)")
    ap.add_argument("--no-flush", action="store_true", help="do not flush L2 before each timed call")
    ap.add_argument("--flush", choices=["write", "read"], default="write",
                    help="how L2 is flushed: write a 256 MB buffer (dirty lines, written back during the timed call; "
                         "the earlier sessions' method) or read it (clean lines, as a decode step's weight reads "
                         "leave the L2)")
    ap.add_argument("--layers", type=int, default=1,
                    help="time this many layers (each its own cache, query and scores) back to back per graph replay "
                         "and report the time per layer: the steady state inside a decode step (see layered_rows); "
                         "these rows always time the topk-fused and topk-layers selections, whatever --selections says")
    ap.add_argument("--check", action="store_true", help="compare each method's output with the torch backend first")
    ap.add_argument("--sweep", action="store_true",
                    help="also time Triton kernel configurations (tile, warps, stages, then splits) per context")
    ap.add_argument("--sweep-contexts", default=None, help="contexts for --sweep (default: --contexts)")
    ap.add_argument("--dry-run", action="store_true",
                    help="run on CPU under the Triton interpreter at tiny sizes (checks the script only)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.layers < 1:
        ap.error(f"--layers must be at least 1, got {args.layers}")
    if args.dry_run:
        if args.q_heads == 32 and args.kv_heads == 8:
            args.q_heads, args.kv_heads = 4, 2
        # Triton 3.9's interpreter multiplies bfloat16 operands of tl.dot wrongly; float16 takes the same path.
        args.dtype = "float16"
    return args


@dataclass
class Problem:
    """One context length's inputs: the cache, the query, and the random block scores selections use."""

    n_tokens: int
    n_blocks: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scores: torch.Tensor
    """``[B, Hkv, N]`` float32 block scores for top-k."""
    probs: torch.Tensor
    """``[B, Hkv, N]`` float32 block probabilities for top-p."""
    scaling: float
    key_min: torch.Tensor
    """``[B, Hkv, N, D]`` per-block key minima of ``k`` (Quest's summaries), in its dtype."""
    key_max: torch.Tensor


def calibrate_spread(n: int, keep: float, p: float, gen: torch.Generator) -> float:
    """The spread ``s`` for which top-p (mass ``p``) of ``softmax(s * randn(n))`` keeps about ``keep`` of the
    entries, by bisection on a CPU sample row (more spread -> fewer entries hold the mass)."""
    row = torch.randn(n, generator=gen, dtype=torch.float64)
    lo, hi = 0.0, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        x = torch.softmax(row * mid, 0).sort(descending=True).values
        kept = int((x.cumsum(0) < p).sum()) + 1
        lo, hi = (mid, hi) if kept / n > keep else (lo, mid)
    return (lo + hi) / 2


def make_problem(n_tokens: int, args: argparse.Namespace, device: str, gen: torch.Generator) -> Problem:
    dtype = getattr(torch, args.dtype)
    b, hq, hkv, d, bs = args.batch, args.q_heads, args.kv_heads, args.head_dim, args.block_size
    n_blocks = -(-n_tokens // bs)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device, dtype)

    q, k, v = randn(b, hq, 1, d), randn(b, hkv, n_tokens, d), randn(b, hkv, n_tokens, d)
    scores = torch.randn(b, hkv, n_blocks, generator=gen).to(device)
    spread = calibrate_spread(n_blocks, args.keep, args.p, gen)
    probs = torch.softmax(torch.randn(b, hkv, n_blocks, generator=gen) * spread, -1).to(device)
    blocks = torch.nn.functional.pad(k, (0, 0, 0, n_blocks * bs - n_tokens), value=float("nan"))
    blocks = blocks.view(b, hkv, n_blocks, bs, d).float()
    key_min = blocks.nan_to_num(float("inf")).amin(3).to(dtype)  # padding never wins a min or a max
    key_max = blocks.nan_to_num(float("-inf")).amax(3).to(dtype)
    return Problem(n_tokens, n_blocks, q, k, v, scores, probs, d**-0.5, key_min, key_max)


#: Layers whose selections one ``topk-layers`` launch makes (an 8B-shaped target's 30 sparse layers).
LAYERS = 30
#: Selections made for several layers in one launch: name -> layers sharing the launch's time.
AMORTIZED = {"topk-layers": LAYERS, "topk-layers-fixed": LAYERS}
#: Selections with the newest block counted in the top-k budget: every row keeps exactly k blocks (a fixed
#: capacity, which ``flashinfer-fixed`` needs to plan once).
FIXED = ("topk-fixed", "topk-layers-fixed")


def first_layer(sel: Selection, layer: int = 0) -> Selection:
    """Layer ``layer``'s part of a selection made for several layers along the batch axis (lists kept)."""
    from sparsebench.kernels.compact import CompactSelection, compacted

    part = slice(layer, layer + 1)
    lists = compacted(sel)
    if lists is None:
        return Selection(sel.mask[part])
    return CompactSelection(sel.mask[part], indices=lists[0][part], counts=lists[1][part],
                            includes_newest=getattr(sel, "includes_newest", False),
                            capacity=getattr(sel, "capacity", None))


def topk_budget(pb: Problem, args: argparse.Namespace) -> int:
    """Blocks the top-k selections keep per (sequence, kv head): ``--keep`` of them, at least one."""
    return max(1, min(pb.n_blocks, round(args.keep * pb.n_blocks)))


def check_topk_selection(pb: Problem, args: argparse.Namespace, sel: Selection, errors: list[str],
                         name: str = "topk") -> None:
    """``--check``: the top-k selection ``name`` equals the exact reference (ties to the lowest index) plus the
    newest block (counted in the budget for :data:`FIXED` selections); a difference is recorded in ``errors``."""
    from sparsebench.kernels.topk import topk_mask_reference

    k = topk_budget(pb, args)
    if name in FIXED:  # the newest block is one of the k
        ref = torch.zeros_like(pb.scores, dtype=torch.bool)
        ref[..., :-1] = topk_mask_reference(pb.scores[..., :-1], k - 1)
    else:
        ref = topk_mask_reference(pb.scores, k)
    ref[..., -1] = True
    bad = int((sel.mask != ref).any(-1).sum())
    if bad:
        errors.append(f"{name} selection @ {pb.n_tokens}: {bad} of {ref.shape[0] * ref.shape[1]} rows differ from "
                      "topk_mask_reference")
    print(f"  {name} selection vs reference: {'ok' if not bad else f'{bad} rows DIFFER'}", flush=True)


def selection_fns(pb: Problem, args: argparse.Namespace) -> dict[str, Callable[[], Selection]]:
    """Selection builders as policies run them on the device (no host sync: graph-capturable)."""
    from sparsebench.kernels.quest_kernels import quest_scores
    from sparsebench.kernels.topk import topk_mask, topk_select
    from sparsebench.kernels.topp import topp_mask_nd
    from sparsebench.policies.quest import quest_upper_bound
    from sparsebench.policy import reduce_groups

    k = topk_budget(pb, args)
    b, hq, _, d = pb.q.shape
    hkv = pb.k.shape[1]

    def topk(backend: TopKBackend = "auto", scores: torch.Tensor = pb.scores) -> Selection:
        mask = topk_mask(scores, k, backend)
        mask[..., -1] = True
        return Selection(mask)

    def topp() -> Selection:
        mask = topp_mask_nd(pb.probs, args.p, check=False)
        mask[..., -1] = True
        return Selection(mask)

    def quest_torch() -> Selection:
        """Quest's former path: the bound by torch matmuls, the group max, then the top-k mask."""
        bound = quest_upper_bound(pb.q.reshape(b, hkv, hq // hkv, d).float(), pb.key_min, pb.key_max)
        return topk(scores=reduce_groups(bound, "max"))

    # SpecAttn's case: every sparse layer's selection input (the draft's attention) exists before the target's
    # forward, so one launch can select for all layers of a step; rows charge 1 / LAYERS of it per layer.
    wanted = args.selections.split(",")
    layered = set(wanted) & set(AMORTIZED)
    if layered and args.batch != 1:
        raise SystemExit(f"--selections {','.join(sorted(layered))} needs --batch 1 (the layers take the batch axis)")
    layer_scores = torch.cat([pb.scores, torch.randn(LAYERS - 1, *pb.scores.shape[1:], device=pb.scores.device,
                                                     dtype=pb.scores.dtype)]) if layered else None

    def topk_layers(fixed: bool = False) -> Selection:
        assert layer_scores is not None
        return topk_select(layer_scores, k, newest_in_budget=fixed)

    fns = {"topk": topk, "topk-torch": lambda: topk("torch"), "topp": topp, "topk-layers": topk_layers,
           "topk-layers-fixed": lambda: topk_layers(fixed=True),
           "topk-fixed": lambda: topk_select(pb.scores, k, newest_in_budget=True),
           # One launch for the top-k set, the newest block and the block lists the backend reads.
           "topk-fused": lambda: topk_select(pb.scores, k),
           "quest-torch": quest_torch,
           # Quest's fused path: the scoring kernel, then the fused top-k (two launches).
           "quest-fused": lambda: topk_select(quest_scores(pb.q, pb.key_min, pb.key_max, "max"), k)}
    unknown = set(wanted) - set(fns)
    if unknown:
        raise SystemExit(f"--selections: unknown {sorted(unknown)}; choose from {sorted(fns)}")
    return {name: fns[name] for name in wanted}


# ----------------------------------------------------------------------------------------------
# timing


class Timer:
    """Median per-call time in microseconds: CUDA events over graph replays or eager calls (GPU), wall clock
    (dry run). Reuses the top-p benchmark's timers so both benchmarks measure the same way."""

    def __init__(self, args: argparse.Namespace, device: str) -> None:
        self.dry = args.dry_run
        self.warmup = min(args.warmup, 1) if self.dry else args.warmup
        self.repeats = min(args.repeats, 2) if self.dry else max(args.repeats, MIN_GPU_REPEATS)
        self.flush = None
        self.flush_by_reading = args.flush == "read"
        if not self.dry and not args.no_flush:
            self.flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.float32, device=device)

    def __call__(self, fn: Callable[[], Any], *, graph: bool) -> float:
        from sparsebench.bench.topp import time_cpu, time_gpu

        if self.dry:
            return statistics.median(time_cpu(fn, warmup=self.warmup, repeats=self.repeats))
        return statistics.median(time_gpu(fn, warmup=self.warmup, repeats=self.repeats, flush=self.flush,
                                          flush_by_reading=self.flush_by_reading,
                                          graph=graph))


def timed(timer: Timer, fn: Callable[[], Any], graph: bool, what: str, errors: list[str]) -> tuple[float | None, str]:
    """``(median µs, timing label)``: graph replays when ``graph``, falling back to eager calls (and saying
    so) if the capture fails, so one uncapturable call still gets a number."""
    label = "wall" if timer.dry else "graph" if graph else "eager"
    us = attempt(what, lambda: timer(fn, graph=graph), errors)
    if us is None and graph:
        us = attempt(f"{what} (eager retry)", lambda: timer(fn, graph=False), errors)
        label = "eager (capture failed)"
    return us, label


def copy_bandwidth(timer: Timer, device: str) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written (1 GiB copy)."""
    n = (1 << 20) if timer.dry else (1 << 30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    us = timer(lambda: dst.copy_(src), graph=True)
    return 2 * n / (us * 1e-6)


def attempt(what: str, fn: Callable[[], Any], errors: list[str]) -> Any:
    """``fn()``, or None with the error recorded: one failing measurement must not end the whole run."""
    try:
        return fn()
    except MethodUnavailable:
        raise
    except Exception as exc:  # the report shows it; the remaining rows still run
        errors.append(f"{what}: {type(exc).__name__}: {exc}")
        print(f"  ! {what}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if os.environ.get("SPARSEBENCH_BENCH_TRACEBACK"):
            traceback.print_exc()
        return None


# ----------------------------------------------------------------------------------------------
# dense references


def dense_methods(pb: Problem, args: argparse.Namespace,
                  errors: list[str]) -> dict[str, tuple[Callable[[], torch.Tensor], bool]]:
    """Dense decode callables (name -> (fn, graph-safe)): SDPA always, FlashInfer when it imports."""
    q, k, v = pb.q, pb.k, pb.v
    methods: dict[str, tuple[Callable[[], torch.Tensor], bool]] = {
        "dense sdpa": (lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, scale=pb.scaling, enable_gqa=True), True),
    }
    if args.dry_run:
        return methods
    try:
        import flashinfer
    except ImportError:
        return methods
    b, hq, _, d = q.shape
    hkv, bs, n = k.shape[1], args.block_size, pb.n_blocks
    pad = n * bs - pb.n_tokens

    def pages(x: torch.Tensor) -> torch.Tensor:  # [B, Hkv, T, D] -> NHD pages [B * N, bs, Hkv, D] (a copy)
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(b, hkv, n, bs, d).permute(0, 2, 3, 1, 4).reshape(b * n, bs, hkv, d).contiguous()

    kp, vp = pages(k), pages(v)
    dev = q.device
    indptr = torch.arange(0, b * n + 1, n, dtype=torch.int32, device=dev)
    indices = torch.arange(b * n, dtype=torch.int32, device=dev)
    last = torch.full((b,), bs - pad, dtype=torch.int32, device=dev)
    q3 = q.reshape(b, hq, d)
    for tc in (False, True):
        name = f"dense flashinfer{' (tensor cores)' if tc else ''}"

        def make(tc: bool = tc) -> Callable[[], torch.Tensor]:
            workspace = torch.zeros(128 * 1024 * 1024, dtype=torch.uint8, device=dev)
            wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                workspace, "NHD", use_cuda_graph=True, use_tensor_cores=tc, paged_kv_indptr_buffer=indptr.clone(),
                paged_kv_indices_buffer=indices.clone(), paged_kv_last_page_len_buffer=last.clone())
            wrapper.plan(indptr, indices, last, hq, hkv, d, bs, q_data_type=q.dtype, kv_data_type=k.dtype,
                         sm_scale=pb.scaling)
            return lambda: wrapper.run(q3, (kp, vp)).reshape(b, hq, 1, d)

        fn = attempt(f"{name} @ {pb.n_tokens} setup", make, errors)
        if fn is not None:
            methods[name] = (fn, True)
    return methods


# ----------------------------------------------------------------------------------------------
# the benchmark


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def sparse_bytes(pb: Problem, sel: Selection, backend: AttentionBackend, plan: Any, args: argparse.Namespace,
                 selection_name: str) -> int:
    """Bytes a sparse step must move: selected K/V, the selection's reads and writes, plan data, partials."""
    elem = pb.k.element_size()
    blocks = int(sel.mask.sum())
    kv = 2 * blocks * args.block_size * pb.k.shape[3] * elem
    score_bytes = pb.scores.numel() * 4 * (2 if selection_name == "topp" else 1)  # top-p reads its row twice+
    if selection_name.startswith("quest"):  # the bound reads every block's key min and max
        score_bytes += 2 * pb.key_min.numel() * elem
    mask_bytes = 2 * sel.mask.numel()  # written by the selection, read by the plan or the kernel
    plan_bytes = 0
    indices = getattr(plan, "indices", None)
    if indices is not None:
        plan_bytes = 2 * 4 * blocks  # list entries written, then read
    partial = 0
    cfg = getattr(backend, "config", None)
    if getattr(backend, "name", "") == "triton":
        from sparsebench.kernels.triton_decode import resolve_config

        b, hq, _, d = pb.q.shape
        hkv = pb.k.shape[1]
        c = resolve_config(cfg, head_dim=d, dtype=pb.q.dtype, block_size=args.block_size, n_blocks=pb.n_blocks,
                           heads=b * hkv, device=pb.q.device)
        partial = 2 * b * hq * c.splits * (d + 2) * 4
    return kv + score_bytes + mask_bytes + plan_bytes + partial


def bench_context(n_tokens: int, args: argparse.Namespace, device: str, gen: torch.Generator, timer: Timer,
                  bandwidth: float, methods: dict[str, AttentionBackend], errors: list[str]) -> list[dict[str, Any]]:
    """All rows of one context length: dense references, then each selection x method. Failures are
    appended to ``errors`` (and to the rows they concern) instead of stopping the run."""
    pb = make_problem(n_tokens, args, device, gen)
    dense_bytes = 2 * pb.k.numel() * pb.k.element_size()
    rows: list[dict[str, Any]] = []
    first_error = len(errors)
    print(f"context {n_tokens}: {pb.n_blocks} blocks per head", flush=True)
    for name, (fn, graph_ok) in dense_methods(pb, args, errors).items():
        us, label = timed(timer, fn, graph_ok, f"{name} @ {n_tokens}", errors)
        rows.append(dict(context=n_tokens, batch=args.batch, kind="dense", method=name, selection="-", timing=label,
                         kernel_us=us, step_us=us, kept_fraction=1.0, bytes=dense_bytes,
                         bound_us=dense_bytes / bandwidth * 1e6))
        print(f"  {name:<34} {fmt(us)} us", flush=True)
    fi = [r["step_us"] for r in rows if r["method"].startswith("dense flashinfer") and r["step_us"]]
    dense = dict(
        flashinfer=min(fi) if fi else None,
        sdpa=next((r["step_us"] for r in rows if r["method"] == "dense sdpa"), None),
        reference_flashinfer=REFERENCE_DENSE_FI_US.get(n_tokens) if (
            args.batch, args.q_heads, args.kv_heads, args.head_dim, args.block_size) == (1, 32, 8, 128, 16) else None,
    )
    for sel_name, select in selection_fns(pb, args).items():
        sel = select()
        if sel_name in AMORTIZED:
            sel = first_layer(sel)
        if args.check and sel_name in ("topk", "topk-fused", "topk-layers", *FIXED):
            check_topk_selection(pb, args, sel, errors, sel_name)
        for m_name, backend in methods.items():
            if backend.name == "flashinfer-fixed" and getattr(sel, "capacity", None) is None:
                continue  # it serves fixed-capacity selections only (FIXED); its plan() would refuse this one
            rows.append(bench_sparse(pb, args, timer, bandwidth, dense, sel_name, select, sel, m_name, backend,
                                     errors))
    for r in rows:
        r["errors"] = [e for e in errors[first_error:] if e.startswith((f"{r['method']}/{r['selection']} @",
                                                                        f"{r['method']} @"))]
    return rows


def layered_rows(n_tokens: int, args: argparse.Namespace, device: str, gen: torch.Generator, timer: Timer,
                 bandwidth: float, methods: dict[str, AttentionBackend], errors: list[str]) -> list[dict[str, Any]]:
    """``--layers L``: dense and sparse attention of L distinct layers back to back in one graph replay, per layer.

    Why: a decode step runs every layer's attention inside one captured graph, so the graph launch, the event
    pair and the L2 flush (together ~8-10 µs on the H200, the same for dense and sparse) are paid once per step,
    not per layer, and each layer reads its own cache, which the layer before did not leave in L2. The
    single-call rows pay that floor in full; these rows show what a layer costs inside a step. The selection
    is timed too: ``topk-fused`` selects per layer (one launch each), ``topk-layers`` once for the L layers.
    """
    from sparsebench.kernels.topk import topk_select
    from sparsebench.kernels.torch_backend import TorchBackend

    n_layers = args.layers
    pbs = [make_problem(n_tokens, args, device, gen) for _ in range(n_layers)]
    label = f"graph, {n_layers} layers per replay"
    dense_bytes = 2 * pbs[0].k.numel() * pbs[0].k.element_size()
    print(f"context {n_tokens}: {pbs[0].n_blocks} blocks per head, {n_layers} layers per replay", flush=True)
    rows: list[dict[str, Any]] = []
    per_layer = [dense_methods(pb, args, errors) for pb in pbs]
    for name in per_layer[0]:
        fns = [m[name][0] for m in per_layer if name in m]
        us = attempt(f"{name} @ {n_tokens} x{n_layers}", lambda fns=fns: timer(lambda: [f() for f in fns], graph=True),
                     errors)
        us = us / n_layers if us else None
        rows.append(dict(context=n_tokens, batch=args.batch, kind="dense", method=name, selection="-", timing=label,
                         kernel_us=us, step_us=us, kept_fraction=1.0, bytes=dense_bytes,
                         bound_us=dense_bytes / bandwidth * 1e6, layers=n_layers))
        print(f"  {name:<34} {fmt(us)} us per layer", flush=True)
    fi = [r["step_us"] for r in rows if r["method"].startswith("dense flashinfer") and r["step_us"]]
    dense_fi = min(fi) if fi else None
    k = topk_budget(pbs[0], args)
    selections: dict[str, Callable[[], list[Selection]]] = {
        "topk-fused": lambda: [topk_select(pb.scores, k) for pb in pbs]}
    if args.batch == 1:
        stacked = torch.cat([pb.scores for pb in pbs])  # the layers along the batch axis: one launch for all

        def all_layers() -> list[Selection]:
            sel = topk_select(stacked, k)
            return [first_layer(sel, i) for i in range(n_layers)]

        selections["topk-layers"] = all_layers
    for sel_name, select in selections.items():
        for m_name, backend in methods.items():
            if backend.name == "flashinfer-fixed":
                continue  # plans once per fixed capacity; not these selections

            def step(select: Callable[[], list[Selection]] = select, backend: AttentionBackend = backend) -> list[Any]:
                return [backend.run(backend.plan(s, block_size=args.block_size, n_tokens=n_tokens), pb.q, pb.k, pb.v,
                                    scaling=pb.scaling) for s, pb in zip(select(), pbs, strict=True)]

            where = f"{m_name}/{sel_name} @ {n_tokens} x{n_layers}"
            sels = select()
            row: dict[str, Any] = dict(context=n_tokens, batch=args.batch, kind="sparse", method=m_name,
                                       selection=sel_name, timing=label, layers=n_layers,
                                       kept_fraction=float(torch.stack([s.mask.float().mean() for s in sels]).mean()))
            if args.check:
                res = attempt(f"{where} check", lambda backend=backend, sels=sels: backend.attend(
                    pbs[-1].q, pbs[-1].k, pbs[-1].v, sels[-1], block_size=args.block_size, scaling=pbs[-1].scaling),
                    errors)
                if res is not None:
                    ref = TorchBackend().attend(pbs[-1].q, pbs[-1].k, pbs[-1].v, sels[-1], block_size=args.block_size,
                                                scaling=pbs[-1].scaling)
                    row["rel_err_vs_torch"] = rel_err(res.out, ref.out)
                    row["tokens_read_match"] = bool(torch.equal(res.tokens_read.cpu(), ref.tokens_read.cpu()))
            us = attempt(where, lambda step=step: timer(step, graph=True), errors)
            row["step_us"] = us / n_layers if us else None
            row["bytes"] = sparse_bytes(pbs[0], sels[0], backend, None, args, sel_name)
            row["bound_us"] = row["bytes"] / bandwidth * 1e6
            if row["step_us"]:
                row["speedup_vs_flashinfer"] = dense_fi / row["step_us"] if dense_fi else None
                target = TARGETS.get(n_tokens)
                row["target"] = target
                row["meets_target"] = (dense_fi / row["step_us"] >= target) if (target and dense_fi) else None
            rows.append(row)
            print(f"  {m_name:<20} {sel_name:<12} step {fmt(row['step_us'])} us per layer{check_text(row)}",
                  flush=True)
    return rows


def bench_sparse(pb: Problem, args: argparse.Namespace, timer: Timer, bandwidth: float,
                 dense: dict[str, float | None], sel_name: str, select: Callable[[], Selection], sel: Selection,
                 m_name: str, backend: AttentionBackend, errors: list[str]) -> dict[str, Any]:
    """One sparse row: optional check against the torch backend, then select / plan / kernel / whole step."""
    from sparsebench.kernels.torch_backend import TorchBackend

    graph_ok = backend.capabilities.cuda_graph_safe and not args.dry_run
    row: dict[str, Any] = dict(context=pb.n_tokens, batch=args.batch, kind="sparse", method=m_name,
                               selection=sel_name, timing="wall" if args.dry_run else "graph" if graph_ok else "eager",
                               kept_fraction=float(sel.mask.float().mean()))
    where = f"{m_name}/{sel_name} @ {pb.n_tokens}"

    def plan_of(s: Selection) -> Any:
        return backend.plan(s, block_size=args.block_size, n_tokens=pb.n_tokens)

    def run_of(plan: Any) -> Any:
        return backend.run(plan, pb.q, pb.k, pb.v, scaling=pb.scaling)

    plan = attempt(f"{where} plan", lambda: plan_of(sel), errors)
    if plan is None:
        return row
    if args.check:
        res = attempt(f"{where} check", lambda: run_of(plan), errors)
        if res is not None:
            ref = TorchBackend().attend(pb.q, pb.k, pb.v, sel, block_size=args.block_size, scaling=pb.scaling)
            row["rel_err_vs_torch"] = rel_err(res.out, ref.out)
            row["tokens_read_match"] = bool(torch.equal(res.tokens_read.cpu(), ref.tokens_read.cpu()))
    layers = AMORTIZED.get(sel_name, 1)
    stages = dict(select=select, plan=lambda: plan_of(sel), kernel=lambda: run_of(plan),
                  step=lambda: run_of(plan_of(select())) if layers == 1 else run_of(plan_of(sel)))
    for stage, fn in stages.items():
        row[f"{stage}_us"], label = timed(timer, fn, graph_ok, f"{where} {stage}", errors)
        if label != row["timing"]:
            row[f"{stage}_timing"] = label
    if layers > 1 and row["select_us"] is not None and row["step_us"] is not None:
        # The step is this layer's plan + kernel plus its share of the one selection launch for all layers.
        row["select_layers"], row["select_launch_us"] = layers, row["select_us"]
        row["select_us"] = row["select_us"] / layers
        row["step_us"] = row["step_us"] + row["select_us"]
    row["bytes"] = sparse_bytes(pb, sel, backend, plan, args, sel_name)
    row["bound_us"] = row["bytes"] / bandwidth * 1e6
    step = row["step_us"]
    if step:
        for name, us in dense.items():
            row[f"speedup_vs_{name}"] = us / step if us else None
        target = TARGETS.get(pb.n_tokens)
        versus = dense["flashinfer"] or dense["reference_flashinfer"]
        row["target"] = target
        row["meets_target"] = (versus / step >= target) if (target and versus) else None
    print(f"  {m_name:<20} {sel_name:<10} kept {row['kept_fraction']:5.3f}  select {fmt(row['select_us'])}  plan "
          f"{fmt(row['plan_us'])}  kernel {fmt(row['kernel_us'])}  step {fmt(step)} us  "
          f"(bound {row['bound_us']:.1f} us){check_text(row)}", flush=True)
    return row


def check_text(row: dict[str, Any]) -> str:
    if "rel_err_vs_torch" not in row:
        return ""
    return f"  rel err {row['rel_err_vs_torch']:.1e} tokens {'ok' if row['tokens_read_match'] else 'DIFFER'}"


def sweep_context(n_tokens: int, args: argparse.Namespace, device: str, gen: torch.Generator,
                  timer: Timer, errors: list[str]) -> list[dict[str, Any]]:
    """Kernel-alone times of Triton configurations (top-k selection): tile x warps x stages at the default
    splits, then splits multiples around the default for the best of those, per selection mode."""
    from sparsebench.kernels.triton_backend import TritonBackend
    from sparsebench.kernels.triton_decode import MAX_SPLITS, KernelConfig, resolve_config

    pb = make_problem(n_tokens, args, device, gen)
    sel = selection_fns(pb, argparse.Namespace(**{**vars(args), "selections": "topk"}))["topk"]()
    b, _, _, d = pb.q.shape
    heads = b * pb.k.shape[1]
    row_bytes = d * pb.k.element_size()
    tiles, warps, stages = ((1, 2), (4,), (2,)) if args.dry_run else ((1, 2, 4, 8), (4, 8), (2, 3, 4, 5))
    out: list[dict[str, Any]] = []
    for mode in ("bitmap", "indices"):
        results = []
        for bpt, w, st in itertools.product(tiles, warps, stages):
            if (st - 1) * 2 * bpt * args.block_size * row_bytes > 160 * 1024:  # would not fit shared memory
                continue
            cfg = KernelConfig(blocks_per_tile=bpt, num_warps=w, num_stages=st)
            results.append((cfg, sweep_one(pb, sel, TritonBackend(mode, cfg), args, timer, errors)))
        measured = [(c, us) for c, us in results if us is not None]
        if not measured:
            continue
        best_cfg, _ = min(measured, key=lambda x: x[1])
        default_splits = resolve_config(best_cfg, head_dim=d, dtype=pb.q.dtype, block_size=args.block_size,
                                        n_blocks=pb.n_blocks, heads=heads, device=pb.q.device).splits
        others = sorted({max(1, min(MAX_SPLITS, round(default_splits * m))) for m in (0.25, 0.5, 2, 4)}
                        - {default_splits})
        for splits in others:
            cfg = KernelConfig(best_cfg.blocks_per_tile, best_cfg.num_warps, best_cfg.num_stages, splits)
            results.append((cfg, sweep_one(pb, sel, TritonBackend(mode, cfg), args, timer, errors)))
        for cfg, us in results:
            full = resolve_config(cfg, head_dim=d, dtype=pb.q.dtype, block_size=args.block_size,
                                  n_blocks=pb.n_blocks, heads=heads, device=pb.q.device)
            out.append(dict(context=n_tokens, mode=mode, blocks_per_tile=full.blocks_per_tile,
                            num_warps=full.num_warps, num_stages=full.num_stages, splits=full.splits,
                            default_splits=cfg.splits is None, kernel_us=us))
        best = min((r for r in out if r["mode"] == mode and r["context"] == n_tokens and r["kernel_us"]),
                   key=lambda r: r["kernel_us"])
        print(f"sweep {n_tokens} {mode}: best {best}", flush=True)
    return out


def sweep_one(pb: Problem, sel: Selection, backend: AttentionBackend, args: argparse.Namespace, timer: Timer,
              errors: list[str]) -> float | None:
    """Kernel-alone time of one configuration, or None (error recorded)."""
    def measure() -> float:
        plan = backend.plan(sel, block_size=args.block_size, n_tokens=pb.n_tokens)
        return timer(lambda: backend.run(plan, pb.q, pb.k, pb.v, scaling=pb.scaling), graph=not args.dry_run)

    return attempt(f"sweep {backend.selection_mode} {backend.config} @ {pb.n_tokens}", measure, errors)


def environment(args: argparse.Namespace, bandwidth: float) -> dict[str, Any]:
    """Versions, device and settings for the report."""
    meta: dict[str, Any] = dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
        device="cpu (Triton interpreter, dry run)" if args.dry_run else torch.cuda.get_device_name(),
        command=" ".join([os.path.basename(sys.executable), *sys.argv]),
        batch=args.batch, q_heads=args.q_heads, kv_heads=args.kv_heads, head_dim=args.head_dim, dtype=args.dtype,
        block_size=args.block_size, keep=args.keep, p=args.p, seed=args.seed,
        timing=("wall clock, CPU interpreter" if args.dry_run else
                "CUDA events around CUDA-graph replays (graph rows) or eager calls (eager rows)"),
        statistic="median", l2_flushed=not args.no_flush and not args.dry_run, layers_per_replay=args.layers,
        l2_flush=None if args.no_flush or args.dry_run else f"{args.flush} 256 MB",
        copy_bandwidth_GBps=bandwidth / 1e9, dry_run=args.dry_run, targets=TARGETS,
        reference_dense_flashinfer_us=REFERENCE_DENSE_FI_US,
    )
    for pkg in ("triton", "flashinfer"):
        try:
            meta[pkg] = importlib.import_module(pkg).__version__
        except Exception:  # absent or broken: say so
            meta[pkg] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        meta.update(sm_count=props.multi_processor_count, capability=f"{props.major}.{props.minor}")
        meta["driver"] = driver_version()
    return meta


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every context's rows, then the sweep; ``save`` gets the report after each step, so a run cut short
    (a time limit) still leaves what it measured."""
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run to check the script on CPU")
    if dry:
        from sparsebench.kernels.topp import interpreter_enabled

        if not interpreter_enabled():
            raise SystemExit("--dry-run needs Triton's interpreter; triton was imported before TRITON_INTERPRET=1")
    device = "cpu" if dry else "cuda"
    contexts = [int(c) for c in args.contexts.split(",")] if args.contexts else (
        [64, 200] if dry else [8192, 32768, 131072])
    gen = torch.Generator().manual_seed(args.seed)
    timer = Timer(args, device)
    bandwidth = copy_bandwidth(timer, device)
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)", flush=True)

    methods: dict[str, AttentionBackend] = {}
    skipped: dict[str, str] = {}
    for name in args.methods.split(","):
        if name not in METHODS:
            raise SystemExit(f"--methods: unknown {name!r}; known: {', '.join(METHODS)}")
        try:
            methods[name] = METHODS[name](args)
        except MethodUnavailable as exc:
            skipped[name] = str(exc)
            print(f"skipping {name}: {exc}", flush=True)
    if dry:  # the interpreter serves CPU tensors; other backends' device checks would refuse them
        methods = {n: m for n, m in methods.items() if n.startswith("triton")}

    meta = environment(args, bandwidth)
    report: dict[str, Any] = dict(meta=meta, skipped_methods=skipped, rows=[], sweep=[], fastest=[], errors=[],
                                  complete=False)
    for n_tokens in contexts:
        rows_of = layered_rows if args.layers > 1 else bench_context
        report["rows"] += rows_of(n_tokens, args, device, gen, timer, bandwidth, methods, report["errors"])
        report["fastest"] = fastest(report["rows"])
        save(report)
        if not dry:
            torch.cuda.empty_cache()
    if args.sweep:
        sweep_contexts = [int(c) for c in args.sweep_contexts.split(",")] if args.sweep_contexts else contexts
        for n_tokens in sweep_contexts:
            report["sweep"] += sweep_context(n_tokens, args, device, gen, timer, report["errors"])
            save(report)
    report["complete"] = True
    save(report)
    return report


def fastest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per context and selection, the fastest whole sparse step: what the default mode should be."""
    best = []
    for (ctx, sel), group in itertools.groupby(sorted((r for r in rows if r["kind"] == "sparse" and r.get("step_us")),
                                                      key=lambda r: (r["context"], r["selection"])),
                                               key=lambda r: (r["context"], r["selection"])):
        r = min(group, key=lambda r: r["step_us"])
        best.append(dict(context=ctx, selection=sel, method=r["method"], step_us=r["step_us"]))
    return best


# ----------------------------------------------------------------------------------------------
# output



def to_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        "# Block-sparse decode attention step vs dense decode",
        "",
        f"- date: {m['date']}; device: {m['device']} (driver {m.get('driver')}, {m.get('sm_count')} SMs)",
        f"- torch {m['torch']} (CUDA {m['cuda']}), triton {m['triton']}, flashinfer {m['flashinfer']}, "
        f"python {m['python']}",
        f"- B={m['batch']}, Hq={m['q_heads']}, Hkv={m['kv_heads']}, D={m['head_dim']}, {m['dtype']}, block "
        f"{m['block_size']}, keep {m['keep']} (top-k) / p={m['p']} (top-p, spread calibrated to about the same)",
        f"- {m['timing']}; median; L2 flushed before each timed call: {m['l2_flushed']}"
        f"{' (' + m['l2_flush'] + ')' if m.get('l2_flush') else ''}",
        f"- bound = bytes moved / measured copy bandwidth ({m['copy_bandwidth_GBps']:.0f} GB/s, read + write)",
        f"- targets: whole sparse step vs dense FlashInfer {m['targets']} (x faster, by context); where "
        f"flashinfer is absent, against the earlier H200 measurement {m['reference_dense_flashinfer_us']} us",
        "",
        "| context | method | selection | timing | kept | select µs | plan µs | kernel µs | step µs | × dense FI "
        "| × ref FI | × SDPA | bound µs | target | rel err |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|",
    ]
    for r in report["rows"]:
        target = {True: "met", False: "MISSED", None: "-"}[r.get("meets_target")]
        err = r.get("rel_err_vs_torch")
        err_txt = "-" if err is None else f"{err:.1e}{'' if r.get('tokens_read_match') else ' (tokens differ)'}"
        lines.append(
            f"| {r['context']} | {r['method']} | {r['selection']} | {r['timing']} | {r['kept_fraction']:.3f} "
            f"| {fmt(r.get('select_us'))} | {fmt(r.get('plan_us'))} | {fmt(r.get('kernel_us'))} "
            f"| {fmt(r.get('step_us'))} | {fmt(r.get('speedup_vs_flashinfer'), '.2f')} "
            f"| {fmt(r.get('speedup_vs_reference_flashinfer'), '.2f')} | {fmt(r.get('speedup_vs_sdpa'), '.2f')} "
            f"| {fmt(r.get('bound_us'))} | {target} | {err_txt} |")
    if m.get("layers_per_replay", 1) > 1:
        lines += ["", f"Layered mode (`--layers {m['layers_per_replay']}`): each replay runs that many layers "
                  "(each its own cache, query and scores) back to back; µs are per layer, selection included "
                  "(topk-fused: a launch per layer; topk-layers: one launch for all of them). The L2 is flushed once "
                  "per replay, as a decode step's graph pays its launch once, not per layer."]
    if any(r.get("select_layers") for r in report["rows"]):
        lines += ["", f"topk-layers rows: one top-k + lists launch selects for {LAYERS} layers (SpecAttn has every "
                  f"layer's draft attention before the target's forward); select µs is 1/{LAYERS} of that launch "
                  "(select_launch_us in the JSON), step µs = plan + kernel (one graph) + that share."]
    if report["skipped_methods"]:
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in report["skipped_methods"].items())]
    if report["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in report["errors"]]
    if report["fastest"]:
        lines += ["", "## Fastest sparse step", "", "| context | selection | method | step µs |", "|---:|---|---|---:|"]
        lines += [f"| {f['context']} | {f['selection']} | {f['method']} | {fmt(f['step_us'])} |"
                  for f in report["fastest"]]
    if report["sweep"]:
        lines += ["", "## Triton kernel configurations (kernel alone, top-k selection)", "",
                  "| context | mode | blocks/tile | warps | stages | splits | µs |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for s in sorted(report["sweep"],
                        key=lambda s: (s["context"], s["mode"], s["kernel_us"] or float("inf"))):
            lines.append(f"| {s['context']} | {s['mode']} | {s['blocks_per_tile']} | {s['num_warps']} "
                         f"| {s['num_stages']} | {s['splits']}{'' if not s['default_splits'] else ' (default)'} "
                         f"| {fmt(s['kernel_us'])} |")
    if not report.get("complete", True):
        lines += ["", "**Incomplete: the run stopped (or is still running) before every context and sweep was done.**"]
    if m["dry_run"]:
        lines += ["", "Dry run: CPU interpreter timings, meaningless for a GPU; this only checks the script."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        # Must precede the first import of triton: the interpreter mode is fixed at import time.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return run_and_publish("attention", args, run, to_markdown, render_while_running=True)


if __name__ == "__main__":
    sys.exit(main())
