"""Benchmark: sorting-free Triton top-p mask vs a sort-based torch top-p, against one read of the input.

Why: SpecAttn runs top-p over every head's block scores at every decode step, so the selection must
cost about as much as reading the scores once, not as much as sorting them. This script measures
that on a GPU (CUDA events around CUDA-graph replays so that Python launch overhead is not counted,
warm-up, median of many repeats, L2 flushed before every timed call so that a 16 MB input is not
served from the L2 of repeated runs) and checks every kernel result against the exact float64
reference while it is at it (column "rows ≠ ref", and the JSON's min_kept_mass).

    sparsebench bench topp --out DIR                 # GPU: 32 rows, N = 1K ... 128K, plus SpecAttn shapes
    sparsebench bench topp --out DIR --configs all   # GPU: also time kernel configurations, report the fastest
    sparsebench bench topp --out DIR --dry-run       # CPU, Triton interpreter, tiny sizes
    sparsebench bench topp --out DIR --eager         # GPU: eager calls, launch overhead included

Two suites: "main" (``--rows`` rows, N = 1K ... 128K; the issue's targets) and "specattn" (the shapes
SpecAttn calls it with: rows = batch * kv heads in {8, 64}, N = context / 16 in {512, 2K, 8K}).
With ``--configs all`` every shape is also run with each configuration of
:func:`sweep_configs` (within ``--max-seconds``), each checked against the reference, and the
fastest exact one is reported per shape ("best" columns, JSON ``best_*`` and ``sweep``). All kernel
variants are compiled first by ``--jobs`` processes (compile only: split kernels of several processes
must never run side by side), so the timing process only loads them.

On a GPU every shape the CUDA kernels take (32K entries, 256K where the GPU runs thread-block clusters) also
times them (``topp_mask(backend="cuda")``, what ``backend="auto"`` runs on a GPU with NVRTC: the short-row kernel up
to 4K entries, the radix kernel, the grid kernel beyond 8K; :mod:`sparsebench.kernels.cuda_topp`), checked against
the same reference ("CUDA kernel" table, JSON ``cuda_*``, the kernel's name in ``cuda_kernel``). The main columns stay
the Triton kernel's, the first sorting-free kernel the issue asked for.

"One read" is the fastest of several reading kernels timed the same way (torch's row and whole-tensor sums,
Triton chunked sums: :mod:`sparsebench.bench.read_floor` says why one is not enough); each one's time is reported.

Writes DIR/bench_topp.json and DIR/bench_topp.md, rewritten after every shape so that a run cut short
still leaves its results. Targets reported against (from the project brief): >= 10x faster
than sort for every N <= 32K, and <= 2x one read of the input; for the Triton and the CUDA kernel each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sparsebench.bench.common import fmt, run_and_publish
from sparsebench.kernels.capture import capture

SPEEDUP_TARGET = 10.0  # vs sort, for N <= SPEEDUP_TARGET_MAX_N
SPEEDUP_TARGET_MAX_N = 32 * 1024
READ_RATIO_TARGET = 2.0  # Triton time / time of one read of the input
#: SpecAttn's shapes: rows = batch * kv heads, N = KV blocks (context / 16: 8K, 32K, 128K tokens).
SPECATTN_ROWS = (8, 64)
SPECATTN_SIZES = (512, 2048, 8192)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for bench_topp.json and bench_topp.md")
    ap.add_argument("--dry-run", action="store_true",
                    help="run on CPU under the Triton interpreter at tiny sizes "
                         "(checks the script, times nothing real)")
    ap.add_argument("--rows", type=int, default=32, help="rows (heads) per call in the main suite")
    ap.add_argument("--sizes", type=str, default=None,
                    help="comma-separated N values of the main suite (default 1024..131072 in powers of two; "
                         "dry run: 64,256)")
    ap.add_argument("--suites", type=str, default="main,specattn",
                    help="comma-separated suites to run: main, specattn")
    ap.add_argument("--configs", choices=["default", "all"], default="default",
                    help="'all' also times every configuration of sweep_configs() per shape and reports the fastest")
    ap.add_argument("--sweep", action="store_true", help="same as --configs all")
    ap.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1),
                    help="processes that compile the kernel variants in parallel before the timing (GPU only)")
    ap.add_argument("--max-seconds", type=float, default=300.0,
                    help="stop trying configurations after this many seconds of timing (compiling is not counted; "
                         "results so far are kept)")
    ap.add_argument("--p", type=float, default=0.9, help="top-p mass")
    ap.add_argument("--temperature", type=float, default=2.0,
                    help="rows are softmax(randn * temperature); higher is more peaked")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--no-flush", action="store_true", help="do not flush L2 between timed calls")
    ap.add_argument("--calls-per-replay", type=int, default=1,
                    help="time this many back-to-back calls per graph replay and divide (steady state inside a "
                         "captured decode step; with the L2 flush only the first call of each replay is cold)")
    ap.add_argument("--eager", action="store_true",
                    help="time eager calls (Python launch overhead included) instead of CUDA-graph replays")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.sweep:
        args.configs = "all"
    if args.calls_per_replay < 1:
        ap.error(f"--calls-per-replay must be >= 1, got {args.calls_per_replay}")
    return args


def sort_topp(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The usual sort-based top-p (as in LLM samplers): sort, cumsum, keep the prefix, scatter back."""
    sorted_desc, idx = torch.sort(probs, dim=-1, descending=True)
    cum = sorted_desc.cumsum(-1)
    keep_sorted = (cum - sorted_desc) < p * cum[..., -1:]
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, keep_sorted)


def time_gpu(fn: Callable[[], Any], *, warmup: int, repeats: int, flush: torch.Tensor | None,
             graph: bool = True, calls: int = 1, flush_by_reading: bool = False) -> list[float]:
    """Per-call GPU times in microseconds from CUDA events around each call.

    With ``graph`` the call is captured once in a CUDA graph and the replays are timed: a decode loop
    would run it that way, and it keeps Python's launch overhead (tens of microseconds for a Triton
    launch, more than the kernel itself at small N) out of a measurement of the GPU work.

    With ``calls`` > 1 each timed replay runs the call ``calls`` times back to back and the time is
    divided by ``calls``: the steady state of a call inside a captured decode step, where the graph
    launch and the event pair (about 8 µs on the H200, more than one read of a 128 KB input) are paid
    once per step rather than per call. ``flush`` then empties the L2 only before the first of them.

    ``flush`` is written (zeroed) before each timed replay, or read (summed) with ``flush_by_reading``.
    Why both: writing leaves the L2 full of dirty lines, whose write-back to memory then runs during the
    timed call (tens of MB, several µs on the H200, charged alike to every method but weighing most on the
    shortest); reading leaves clean lines, as a decode step's earlier kernels (weight reads) mostly do.
    """
    if calls > 1:
        single = fn

        def fn() -> None:
            for _ in range(calls):
                single()
    run = fn
    if graph:
        run = capture(fn, warmup=warmup)[0].replay
    for _ in range(warmup):
        run()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        if flush is not None:
            if flush_by_reading:
                flush.sum()
            else:
                flush.zero_()
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1e3 / calls for s, e in zip(starts, ends, strict=True)]


def time_cpu(fn: Callable[[], Any], *, warmup: int, repeats: int) -> list[float]:
    """Per-call wall times in microseconds (dry run only: interpreter timings mean nothing for a GPU)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def make_probs(rows: int, n: int, *, temperature: float, dtype: torch.dtype, device: str,
               gen: torch.Generator) -> torch.Tensor:
    """Fresh attention-like rows: softmax of Gaussian scores, peakedness set by the temperature."""
    scores = torch.randn(rows, n, generator=gen, device="cpu").to(device) * temperature
    return torch.softmax(scores, dim=-1).to(dtype)



def _pow2_at_least(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def sweep_configs(n: int, rows: int, sm_count: int, *, dry: bool = False) -> list[Any]:
    """Kernel configurations worth timing for ``rows`` rows of ``n`` entries, the default first.

    Why this set: programs per row (``chunks``) from 1 up to what the SMs hold (``rows * chunks <=
    sm_count``, chunks of at least 512 entries). A chunk of up to 16K entries is held in registers
    with 2-32 entries a thread (E) on 1-16 warps; candidates a pass c with 16 <= E * c <= 64 (fewer
    leave the pass reduction-bound, more make the sm_90 compiler spill; up to 256 on one or two warps,
    whose reductions are shuffles only), plus "candidates" tightening for unsplit
    rows. Chunks over 4K are also tried streamed in 4K-16K tiles with 2 or 4 candidates. The
    default comes first so that a sweep cut short by ``--max-seconds`` still has it.
    """
    from sparsebench.kernels.topp import RESIDENT_MAX, TopPConfig, default_config

    if dry:  # tiny interpreter shapes: resident, and split in streamed tiles (serial under the interpreter)
        return [default_config(n, rows, sm_count), TopPConfig(chunks=2, block_n=16, num_candidates=4)]
    out: list[TopPConfig] = [default_config(n, rows, sm_count)]
    max_chunks = max(1, sm_count // max(rows, 1))
    for chunks in (1, 2, 4, 8, 16, 32):
        if chunks > max_chunks or (chunks > 1 and n // chunks < 512):
            continue
        chunk_len = -(-n // chunks)
        if chunk_len <= RESIDENT_MAX:
            block = _pow2_at_least(max(chunk_len, 16))
            warp_opts = [w for w in (1, 2, 4, 8, 16) if 2 <= block // (32 * w) <= 32] or [4]
            if chunks > 1:
                warp_opts = warp_opts[-2:]
            for warps in warp_opts:
                per_thread = max(1, block // (32 * warps))
                keep = per_thread <= (16 if chunks == 1 else 8)
                # One or two warps reduce with shuffles only (no shared-memory barrier), so a pass may afford
                # more candidates there than the block-reduction rule below allows.
                most = 256 if warps <= 2 else 64
                cands = [c for c in (2, 4, 8, 16) if 16 <= per_thread * c <= most] or [8]
                for cand in cands:
                    out.append(TopPConfig(chunks=chunks, block_n=block, num_candidates=cand, num_warps=warps,
                                          tighten="bracket", keep_f64=keep))
                if chunks == 1:
                    out.append(TopPConfig(chunks=1, block_n=block, num_candidates=min(8, max(cands)),
                                          num_warps=warps, tighten="candidates", keep_f64=keep))
        if chunk_len > 4096:
            for block in (4096, 8192, 16384):
                if block < chunk_len:
                    for cand in (2, 4):
                        out.append(TopPConfig(chunks=chunks, block_n=block, num_candidates=cand,
                                              num_warps=8 if block == 4096 else 16, tighten="bracket",
                                              keep_f64=False))
    unique: list[TopPConfig] = []
    for cfg in out:
        if cfg not in unique:
            unique.append(cfg)
    return unique


def _compile_one(task: tuple[int, int, str, float, dict[str, Any] | None, bool]) -> str | None:
    """Worker: compile (never run: split kernels of several processes side by side could not all be
    resident) one kernel variant for an input of the same shape, into Triton's on-disk cache, where
    the timing process then finds it; the error text if it fails."""
    rows, n, dtype, p, cfg, with_passes = task
    try:
        from sparsebench.kernels.topp import TopPConfig, compile_topp_kernel

        probs = torch.empty(rows, n, device="cuda", dtype=getattr(torch, dtype))
        passes = torch.zeros(rows, dtype=torch.int32, device="cuda") if with_passes else None
        compile_topp_kernel(probs, p, config=TopPConfig(**cfg) if cfg else None, passes_out=passes)
        return None
    except Exception as exc:  # reported by the timing process when it meets the same variant
        return f"{type(exc).__name__}: {exc}"[:300]


def precompile(tasks: list[tuple[int, int, str, float, dict[str, Any] | None, bool]], jobs: int) -> float:
    """Compile every kernel variant of the run in ``jobs`` processes; return the seconds it took.

    Why: a Triton compile takes seconds and a sweep needs a few hundred variants, which one process
    would compile one after another; Triton's cache is shared through the file system.
    """
    if jobs <= 1 or not tasks:
        return 0.0
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        errors = [e for e in pool.map(_compile_one, tasks) if e]
    print(f"compiled {len(tasks)} kernel variants in {time.perf_counter() - t0:.0f} s with {jobs} processes"
          f"{f'; {len(errors)} failed' if errors else ''}", flush=True)
    return time.perf_counter() - t0


class Bench:
    """Shared state of one benchmark run: device, timer, flush buffer, report so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        from sparsebench.kernels import topp as topp_mod

        self.args = args
        self.topp = topp_mod
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        if not self.dry and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run to check the script on CPU")
        if self.dry and not topp_mod.interpreter_enabled():
            raise SystemExit("--dry-run needs Triton's interpreter; triton was imported before TRITON_INTERPRET=1")
        self.dtype = getattr(torch, args.dtype)
        self.repeats = min(args.repeats, 3) if self.dry else args.repeats
        self.warmup = min(args.warmup, 1) if self.dry else args.warmup
        self.gen = torch.Generator().manual_seed(args.seed)
        self.flush = None
        if not self.dry and not args.no_flush:
            self.flush = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.float32, device=self.device)
        self.sm_count = (torch.cuda.get_device_properties(0).multi_processor_count if not self.dry else 132)
        self.t_start = time.perf_counter()
        self.sweep_stopped_at: str | None = None

    def timer(self, fn: Callable[[], Any]) -> float:
        if self.dry:
            ts = time_cpu(fn, warmup=self.warmup, repeats=self.repeats)
        else:
            ts = time_gpu(fn, warmup=self.warmup, repeats=self.repeats, flush=self.flush, graph=not self.args.eager,
                          calls=self.args.calls_per_replay)
        return statistics.median(ts)

    def shape(self, suite: str, rows: int, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Time the default kernel, sort and one read on one shape (and the configurations if asked)."""
        args, topp = self.args, self.topp
        probs = make_probs(rows, n, temperature=args.temperature, dtype=self.dtype, device=self.device, gen=self.gen)
        cfg = topp.resolve_config(None, n, rows, probs.device)
        passes = torch.zeros(rows, dtype=torch.int32, device=self.device)
        timeouts_before = topp.split_timeouts(self.device)
        got = topp.topp_mask_triton(probs, args.p, passes_out=passes)
        ref = topp.topp_mask_torch(probs, args.p)
        bad_rows = int((got != ref).any(-1).sum())
        kept_mass = (probs.double() * got).sum(-1) / probs.double().sum(-1)
        nbytes = probs.numel() * probs.element_size()
        t_triton = self.timer(lambda: topp.topp_mask_triton(probs, args.p, check=False))
        t_sort = self.timer(lambda: sort_topp(probs, args.p))
        # Imported here: read_floor imports triton, which must not happen before main() has chosen the interpreter.
        from sparsebench.bench.read_floor import read_variants

        read_us = {name: self.timer(fn) for name, fn in read_variants(probs).items()}
        read_kernel = min(read_us, key=read_us.__getitem__)
        t_read = read_us[read_kernel]
        speedup = t_sort / t_triton
        read_ratio = t_triton / t_read
        result = dict(
            n=n, rows=rows, bytes=nbytes,
            triton_us=t_triton, sort_us=t_sort, read_us=t_read, read_kernel=read_kernel, read_variants_us=read_us,
            speedup_vs_sort=speedup, triton_over_read=read_ratio,
            triton_eff_GBps=nbytes / t_triton / 1e3, read_GBps=nbytes / t_read / 1e3,
            passes_mean=float(passes.float().mean()), passes_max=int(passes.max()),
            rows_differing_from_reference=bad_rows, min_kept_mass=float(kept_mass.min()),
            mean_kept_fraction=float(got.float().mean()),
            meets_speedup_target=(speedup >= SPEEDUP_TARGET) if n <= SPEEDUP_TARGET_MAX_N else None,
            meets_read_target=read_ratio <= READ_RATIO_TARGET,
            suite=suite, config=cfg.as_dict(), split_timeouts=topp.split_timeouts(self.device) - timeouts_before,
        )
        if not self.dry and topp.cuda_unusable_reason(probs) is None:
            result.update(self.cuda_kernel(probs, ref, t_sort, t_read, n))
        print(f"[{suite}] rows={rows:>3} N={n:>7}  triton {t_triton:8.1f} us  sort {t_sort:8.1f} us  "
              f"read {t_read:7.1f} us ({read_kernel})  x{speedup:5.1f} vs sort  {read_ratio:5.2f}x read  "
              f"passes {passes.float().mean():.1f}  bad rows {bad_rows}  {cfg.as_dict()}", flush=True)
        sweep = self.sweep(probs, ref, rows, n) if args.configs == "all" else []
        exact = [s for s in sweep if s["matches_reference"]]
        if exact:
            best = min(exact, key=lambda s: s["us"])
            result.update(best_us=best["us"], best_config=best["config"],
                          best_speedup_vs_sort=t_sort / best["us"], best_over_read=best["us"] / t_read,
                          configs_tried=len(sweep))
            print(f"    best of {len(sweep)}: {best['us']:.1f} us (x{t_sort / best['us']:.1f} vs sort, "
                  f"{best['us'] / t_read:.2f}x read) {best['config']}", flush=True)
        return result, sweep

    def cuda_kernel(self, probs: torch.Tensor, ref: torch.Tensor, t_sort: float, t_read: float,
                    n: int) -> dict[str, Any]:
        """The CUDA kernel ``topp_mask(backend="cuda")`` runs (:mod:`sparsebench.kernels.cuda_topp`: the short-row
        kernel, the radix kernel, or the grid kernel for long rows) on the same input: time, check, passes."""
        from sparsebench.kernels.cuda_topp import kernel_name
        from sparsebench.kernels.cuda_topp_grid import grid_timeouts

        topp, p = self.topp, self.args.p
        passes = torch.zeros(probs.shape[0], dtype=torch.int32, device=self.device)
        got = topp.topp_mask_cuda(probs, p, passes_out=passes)
        kept = (probs.double() * got).sum(-1) / probs.double().sum(-1)
        bad = int((got != ref).any(-1).sum())
        t = self.timer(lambda: topp.topp_mask_cuda(probs, p, check=False))
        kernel = kernel_name(n, probs.shape[0], probs.device)
        print(f"    cuda {kernel}: {t:8.1f} us  x{t_sort / t:5.1f} vs sort  {t / t_read:5.2f}x read  "
              f"passes {passes.float().mean():.1f}  bad rows {bad}", flush=True)
        return dict(cuda_us=t, cuda_kernel=kernel, cuda_grid_timeouts=grid_timeouts(probs.device),
                    cuda_speedup_vs_sort=t_sort / t, cuda_over_read=t / t_read,
                    cuda_rows_differing_from_reference=bad,
                    cuda_min_kept_mass=float(kept.min()), cuda_passes_mean=float(passes.float().mean()),
                    cuda_passes_max=int(passes.max()),
                    cuda_meets_speedup_target=(t_sort / t >= SPEEDUP_TARGET) if n <= SPEEDUP_TARGET_MAX_N else None,
                    cuda_meets_read_target=t / t_read <= READ_RATIO_TARGET)

    def sweep(self, probs: torch.Tensor, ref: torch.Tensor, rows: int, n: int) -> list[dict[str, Any]]:
        """Time every configuration of :func:`sweep_configs` on ``probs`` (timings include one int32
        store per row of the pass count, so that one compiled variant serves the check and the timing)."""
        topp, p = self.topp, self.args.p
        out = []
        for cfg in sweep_configs(n, rows, self.sm_count, dry=self.dry):
            if time.perf_counter() - self.t_start > self.args.max_seconds:
                self.sweep_stopped_at = self.sweep_stopped_at or f"rows={rows} N={n}"
                break
            passes = torch.zeros(rows, dtype=torch.int32, device=self.device)
            timeouts_before = topp.split_timeouts(self.device)
            try:
                got = topp.topp_mask_triton(probs, p, config=cfg, passes_out=passes)
            except Exception as exc:  # a configuration the compiler rejects is data, not a crash
                error = f"{type(exc).__name__}: {exc}"[:300]
                out.append(dict(n=n, rows=rows, config=cfg.as_dict(), us=None, error=error, matches_reference=False))
                continue
            bad = int((got != ref).any(-1).sum())
            t = self.timer(lambda cfg=cfg, passes=passes: topp.topp_mask_triton(
                probs, p, check=False, config=cfg, passes_out=passes))
            timeouts = topp.split_timeouts(self.device) - timeouts_before  # abandoned waits: wrong masks
            out.append(dict(n=n, rows=rows, config=cfg.as_dict(), us=t, passes_mean=float(passes.float().mean()),
                            rows_differing_from_reference=bad, matches_reference=bad == 0 and timeouts == 0,
                            split_timeouts=timeouts))
        return out


def run(args: argparse.Namespace, on_shape: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the suites; ``on_shape(report_so_far)`` is called after every shape (to save partial results)."""
    bench = Bench(args)
    dry = bench.dry
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = set(suites) - {"main", "specattn"}
    if unknown:
        raise SystemExit(f"unknown suite(s) {sorted(unknown)}; known: main, specattn")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        [64, 256] if dry else [1024 * 2**k for k in range(8)])
    rows_main = 4 if dry and args.rows == 32 else args.rows
    shapes = [("main", rows_main, n) for n in sizes] if "main" in suites else []
    if "specattn" in suites:
        shapes += [("specattn", r, n) for r in ((2, 4) if dry else SPECATTN_ROWS)
                   for n in ((64,) if dry else SPECATTN_SIZES)]

    compile_s = 0.0
    if not dry:
        tasks = []
        for _, rows, n in shapes:
            tasks += [(rows, n, args.dtype, args.p, None, False), (rows, n, args.dtype, args.p, None, True)]
            if args.configs == "all":
                tasks += [(rows, n, args.dtype, args.p, cfg.as_dict(), True)
                          for cfg in sweep_configs(n, rows, bench.sm_count)]
        compile_s = precompile(tasks, args.jobs)
        bench.t_start = time.perf_counter()  # --max-seconds counts the timing, not the compiling

    import triton

    meta = dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        device=("cpu (Triton interpreter, dry run)" if dry else torch.cuda.get_device_name()),
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        dtype=args.dtype, p=args.p, temperature=args.temperature, rows=rows_main,
        warmup=bench.warmup, repeats=bench.repeats, statistic="median", l2_flushed=bench.flush is not None,
        calls_per_replay=bench.args.calls_per_replay,
        timing=("wall clock, CPU interpreter" if dry else
                "CUDA events around eager calls" if args.eager else "CUDA events around CUDA-graph replays"),
        dry_run=dry, read_reference="the fastest of probs.sum(-1), probs.sum() and Triton chunked sums "
                                    "(sparsebench.bench.read_floor)", sort_reference="torch.sort + cumsum + scatter",
        targets=dict(speedup_vs_sort=f">= {SPEEDUP_TARGET}x for N <= {SPEEDUP_TARGET_MAX_N}",
                     triton_over_read=f"<= {READ_RATIO_TARGET}x"),
        configs=args.configs, sm_count=bench.sm_count, max_seconds=args.max_seconds,
        precompile_s=round(compile_s, 1),
        command=" ".join([os.path.basename(sys.executable), *sys.argv]),
    )
    report: dict[str, Any] = dict(meta=meta, results=[], sweep=[])
    for suite, rows, n in shapes:
        try:
            result, sweep = bench.shape(suite, rows, n)
        except Exception as exc:  # keep the other shapes' data; the error is reported with the shape
            print(f"[{suite}] rows={rows} N={n} FAILED: {type(exc).__name__}: {exc}", flush=True)
            report.setdefault("errors", []).append(dict(suite=suite, rows=rows, n=n,
                                                        error=f"{type(exc).__name__}: {exc}"[:500]))
            continue
        report["results"].append(result)
        report["sweep"] += sweep
        meta["sweep_stopped_at"] = bench.sweep_stopped_at
        meta["elapsed_s"] = round(time.perf_counter() - bench.t_start, 1)
        if on_shape is not None:
            on_shape(report)
    return report


def _table(results: list[dict[str, Any]]) -> list[str]:
    """The original table's columns in their original order, then rows and the configuration used."""
    lines = [
        "| N | Triton µs | sort µs | read µs | speedup vs sort | Triton / read | Triton eff. GB/s | read GB/s "
        "| passes (mean/max) | rows ≠ ref | speedup target | read target | rows | configuration |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|---:|:---|",
    ]
    for r in results:
        sp = {True: "met", False: "MISSED", None: "n/a"}[r["meets_speedup_target"]]
        rd = "met" if r["meets_read_target"] else "MISSED"
        lines.append(
            f"| {r['n']} | {fmt(r['triton_us'])} | {fmt(r['sort_us'])} | {fmt(r['read_us'])} "
            f"| {fmt(r['speedup_vs_sort'])}x | {fmt(r['triton_over_read'], '.2f')}x | {fmt(r['triton_eff_GBps'])} "
            f"| {fmt(r['read_GBps'])} | {r['passes_mean']:.1f}/{r['passes_max']} "
            f"| {r['rows_differing_from_reference']} | {sp} | {rd} | {r['rows']} | {_cfg_text(r['config'])} |"
        )
    return lines


def _read_table(results: list[dict[str, Any]]) -> list[str]:
    """Each reading kernel's time per shape: which one set "one read", and by how much it beat the others."""
    timed = [r for r in results if r.get("read_variants_us")]
    if not timed:
        return []
    names = list(timed[0]["read_variants_us"])
    lines = ["## One read: every reading kernel (µs; the fastest is the shape's \"read\")", "",
             "| suite | rows | N | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|:---|---:|---:|" + "---:|" * len(names)]
    for r in timed:
        us = r["read_variants_us"]
        cells = [f"**{fmt(us[n], '.2f')}**" if n == r["read_kernel"] else fmt(us.get(n), ".2f") for n in names]
        lines.append(f"| {r['suite']} | {r['rows']} | {r['n']} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _cfg_text(cfg: dict[str, Any]) -> str:
    return (f"chunks={cfg['chunks']} block={cfg['block_n']} cand={cfg['num_candidates']} warps={cfg['num_warps']} "
            f"{cfg['tighten']}{' f64' if cfg['keep_f64'] else ''}")


def to_markdown(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        "# Top-p mask: Triton (sorting-free) vs torch sort",
        "",
        f"- date: {m['date']}",
        f"- device: {m['device']} ({m['sm_count']} SMs)",
        f"- torch {m['torch']}, triton {m['triton']}, python {m['python']}",
        f"- dtype {m['dtype']}, p {m['p']}, rows = softmax(randn * {m['temperature']})",
        f"- {m['timing']}; median of {m['repeats']} after {m['warmup']} warm-up calls",
        f"- L2 flushed before each timed call: {m['l2_flushed']}",
        f"- one read = {m['read_reference']}; sort = {m['sort_reference']}",
        f"- targets: speedup {m['targets']['speedup_vs_sort']}; Triton/read {m['targets']['triton_over_read']}",
        "",
    ]
    for suite, title in (("main", "Main suite (issue 4 targets)"), ("specattn", "SpecAttn shapes")):
        rows = [r for r in report["results"] if r.get("suite", "main") == suite]
        if rows:
            lines += [f"## {title}: default configuration", "", *_table(rows), ""]
    radix = [r for r in report["results"] if "cuda_us" in r]
    if radix:
        lines += ["## CUDA kernel (`topp_mask(backend=\"cuda\")`: short rows up to 4K, radix (rows over 16K in "
                  "thread-block clusters), grid over 8K where it fits)",
                  "", "| suite | rows | N | kernel | CUDA µs | Triton µs | sort µs | read µs | speedup vs sort "
                  "| CUDA / read | passes (mean/max) | rows ≠ ref | min kept mass | speedup target | read target |",
                  "|:---|---:|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|:---:|"]
        for r in radix:
            sp = {True: "met", False: "MISSED", None: "n/a"}[r["cuda_meets_speedup_target"]]
            lines.append(f"| {r['suite']} | {r['rows']} | {r['n']} | {r.get('cuda_kernel', 'radix')} "
                         f"| {fmt(r['cuda_us'])} | {fmt(r['triton_us'])} "
                         f"| {fmt(r['sort_us'])} | {fmt(r['read_us'])} | {fmt(r['cuda_speedup_vs_sort'])}x "
                         f"| {fmt(r['cuda_over_read'], '.2f')}x | {r['cuda_passes_mean']:.1f}/{r['cuda_passes_max']} "
                         f"| {r['cuda_rows_differing_from_reference']} | {r['cuda_min_kept_mass']:.6f} | {sp} "
                         f"| {'met' if r['cuda_meets_read_target'] else 'MISSED'} |")
        lines.append("")
    lines += _read_table(report["results"])
    best = [r for r in report["results"] if "best_us" in r]
    if best:
        lines += ["## Fastest exact configuration per shape (`--configs all`)", "",
                  "| suite | rows | N | default µs | best µs | best speedup vs sort | best / read | tried "
                  "| best configuration |",
                  "|:---|---:|---:|---:|---:|---:|---:|---:|:---|"]
        for r in best:
            lines.append(f"| {r['suite']} | {r['rows']} | {r['n']} | {fmt(r['triton_us'])} | {fmt(r['best_us'])} "
                         f"| {fmt(r['best_speedup_vs_sort'])}x | {fmt(r['best_over_read'], '.2f')}x "
                         f"| {r['configs_tried']} | {_cfg_text(r['best_config'])} |")
        if m.get("sweep_stopped_at"):
            lines += ["", f"Sweep stopped by --max-seconds at {m['sweep_stopped_at']}; later shapes tried fewer "
                          "configurations."]
        wrong = [s for s in report["sweep"] if s["us"] is not None and not s["matches_reference"]]
        failed = [s for s in report["sweep"] if s["us"] is None]
        lines += ["", f"Configurations timed: {len(report['sweep'])}; differing from the reference: {len(wrong)}; "
                      f"failed to run: {len(failed)} (details in bench_topp.json, key `sweep`)."]
    for e in report.get("errors", []):
        lines += ["", f"FAILED: {e['suite']} rows={e['rows']} N={e['n']}: {e['error']}"]
    if report["meta"]["dry_run"]:
        lines += ["", "Dry run: CPU interpreter timings, meaningless for a GPU; this only checks the script."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        # Must precede the first import of triton: the interpreter mode is fixed at import time.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return run_and_publish("topp", args, lambda a, save: run(a, on_shape=save), to_markdown,
                           render_while_running=True, echo=False)


if __name__ == "__main__":
    sys.exit(main())
