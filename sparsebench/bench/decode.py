"""Benchmark: decode tokens/s of each policy on the fast engine, against the memory-bandwidth bound.

    sparsebench bench decode --out DIR                                  # llama-3-8b shape, random weights
    sparsebench bench decode --out DIR --model qwen2.5-coder-0.5b --contexts 16384 --batch 1
    sparsebench bench decode --out DIR --random-weights tiny --device cpu --contexts 256 --steps 4  # smoke

Per (context, batch, policy) row: tokens/s and ms/step (median of ``--repeats`` timed passes, CUDA graphs
when the backend and policy allow), a per-step breakdown from an instrumented pass (draft, summaries,
select, plan, attention, other), the KV reduction the backend reported, and the bound a decode step
cannot beat on this GPU: (weight bytes + KV bytes read + summary/draft bytes the policy reads) divided by
the copy bandwidth measured in the same run. "achieved / bound" is bound time / measured time.

The same policies (``--policies`` as for ``compare``) run through the same backend contract as the
teacher-forced evaluation (:mod:`sparsebench.fastdecode`). Writes DIR/bench_decode.json and DIR/bench_decode.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from sparsebench.bench.common import driver_version, run_and_publish, table_then_notes
from sparsebench.cli import _typed_spec
from sparsebench.compare import split_policy_specs
from sparsebench.config import DTYPES
from sparsebench.engine import EngineConfig
from sparsebench.errors import UsageError
from sparsebench.evals.results import environment_info, now_iso
from sparsebench.fastdecode import FastDecoder, FastModel, SelfDraft
from sparsebench.fastdecode.cache import StaticKVCache
from sparsebench.fastdecode.draft import nearest_layer_map, parse_layer_map
from sparsebench.fastdecode.measure import Measurement, measure
from sparsebench.fastdecode.model import PRESETS, ModelSpec, preset
from sparsebench.kernels import resolve_backend
from sparsebench.plugins import make_policy
from sparsebench.policy import Policy
from sparsebench.selection import n_blocks_for

GIB = 1024**3
COLUMNS = ("context", "batch", "policy", "mode", "tok/s", "ms/step", "draft", "summ", "select", "plan", "attn",
           "other", "KV red.", "bound ms", "dense bound ms", "bound ratio", "measured ratio", "achieved/bound")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sparsebench bench decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for bench_decode.json and bench_decode.md")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a llama/qwen2 model alias or path (real weights)")
    src.add_argument("--random-weights", default=None, choices=sorted(PRESETS),
                     help="random weights in a preset's shape, built on the device (default llama-3-8b)")
    ap.add_argument("--contexts", default="32768,131072", help="comma-separated context lengths (tokens)")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--policies", default="dense,quest:budget_frac=0.22,streamingllm:window_frac=0.22",
                    help="policy specs as for compare, e.g. dense,quest:budget_frac=0.22")
    ap.add_argument("--backend", default="auto", help="attention backend (auto, triton, flashinfer, torch, ...)")
    ap.add_argument("--steps", type=int, default=32, help="decode steps per pass (default 32)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the headline is their median")
    ap.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly")
    ap.add_argument("--no-compile", action="store_true",
                    help="do not torch.compile the layers' norm/RoPE/MLP halves (compiled by default on CUDA)")
    ap.add_argument("--prefill", choices=["random", "real"], default="random",
                    help="random: fill the KV cache with random keys/values (no prefill cost; default); "
                         "real: a dense prefill of random token ids")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dense-layers", type=int, default=2)
    ap.add_argument("--draft", default=None, help="self-draft for draft-guided policies, e.g. self:first-half")
    ap.add_argument("--layer-map", default=None,
                    help="draft layer per target layer, comma-separated (default: calibrated for --model, "
                         "nearest draft layer for random weights)")
    ap.add_argument("--copy-gib", type=float, default=2.0, help="buffer size of the bandwidth measurement")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} needs positive integers, got {text!r}")
    return values


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s a large device-to-device copy moves, counting what it reads plus what it writes."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    reps = 10
    for _ in range(3):
        dst.copy_(src)
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        begin.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        end.synchronize()
        seconds = begin.elapsed_time(end) / 1e3
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            dst.copy_(src)
        seconds = time.perf_counter() - t0
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()  # give the buffers back before the KV caches are sized against free memory
    return 2 * nbytes * reps / seconds


def step_bytes(spec: ModelSpec, dtype: torch.dtype, policy: Policy, m: Measurement, *, context: int,
               block_size: int, dense_layers: int, draft: SelfDraft | None) -> dict[str, float]:
    """Bytes one decode step must read (all sequences of the batch): the numerator of the bound.

    ``kv`` is what the backend reported reading (K and V); ``summaries`` the block summaries the policy
    reads (Quest's min/max of every live block), or the keys it rereads for exact scores; ``draft`` the
    self-draft's layer weights, its dense KV reads and the keys its attention mass rereads.
    """
    item = torch.empty((), dtype=dtype).element_size()
    b, hkv, d = m.batch, spec.num_kv_heads, spec.head_dim
    tokens = context + (m.steps + 1) / 2  # mean KV length over the pass
    blocks = n_blocks_for(round(tokens), block_size)
    sparse_layers = spec.num_layers - dense_layers
    per_token = b * hkv * d * item  # one of K or V, one token, every sequence
    kv = sum(s.read_all for s in m.kv) * 2 * d * item / m.steps
    summaries = 0.0
    kinds = policy.requires.summaries
    if "minmax" in kinds:
        summaries += sparse_layers * 2 * blocks * per_token
    if "mean" in kinds:
        summaries += sparse_layers * blocks * b * hkv * d * 4
    if policy.requires.exact_scores:
        summaries += sparse_layers * tokens * per_token
    draft_bytes = 0.0
    if draft is not None and policy.requires.draft_attention:
        run, needed = draft.run_layers(dense_layers), draft.needed(dense_layers)
        draft_bytes = len(run) * (spec.layer_weight_bytes(dtype) + 2 * tokens * per_token)
        draft_bytes += len(needed) * tokens * per_token
    dense_kv = spec.num_layers * 2 * tokens * per_token
    return {"weights": float(spec.weight_bytes(dtype)), "kv": kv, "summaries": summaries, "draft": draft_bytes,
            "dense_kv": dense_kv}


def _row(args: argparse.Namespace, spec: ModelSpec, dtype: torch.dtype, policy: Policy, m: Measurement, *,
         context: int, draft: SelfDraft | None, bandwidth: float) -> dict[str, Any]:
    nbytes = step_bytes(spec, dtype, policy, m, context=context, block_size=args.block_size,
                        dense_layers=args.dense_layers, draft=draft)
    total = nbytes["weights"] + nbytes["kv"] + nbytes["summaries"] + nbytes["draft"]
    dense_total = nbytes["weights"] + nbytes["dense_kv"]
    bound_ms, dense_bound_ms = total / bandwidth * 1e3, dense_total / bandwidth * 1e3
    read = sum(s.read_sparse for s in m.kv)
    dense = sum(s.dense_sparse for s in m.kv)
    return {
        "context": context, "batch": m.batch, "policy": policy.label(), "params": policy.params(), "mode": m.mode,
        "tokens_per_s": m.tokens_per_second, "ms_per_step": m.ms_per_step, "pass_ms": m.pass_ms,
        "breakdown_ms_per_step": m.breakdown_ms, "breakdown_source": m.breakdown_source,
        "instrumented_ms_per_step": m.instrumented_ms_per_step,
        "kv_reduction_sparse": 1 - read / dense if dense else 0.0,
        "kv_reduction_all": 1 - sum(s.read_all for s in m.kv) / max(1, sum(s.dense_all for s in m.kv)),
        "bytes_per_step": nbytes, "bound_ms": bound_ms, "dense_bound_ms": dense_bound_ms,
        "bound_ratio": dense_bound_ms / bound_ms, "achieved_over_bound": bound_ms / m.ms_per_step,
        "tokens_head": m.tokens[:, :8].tolist(), "notes": m.notes,
    }


def self_draft_for(args: argparse.Namespace, n_layers: int, loaded: Any, device: torch.device,
               dtype: torch.dtype, log: Any) -> tuple[SelfDraft, str]:
    from sparsebench.specattn.drafts import default_draft_spec, resolve_draft

    spec = args.draft or (default_draft_spec(args.model) if args.model else "self:first-half")
    if not spec.startswith("self:"):
        raise UsageError(f"--draft {spec!r}: the fast engine runs self-drafts only (self:SPEC, e.g. self:first-half)")
    draft = SelfDraft.build(spec.removeprefix("self:"), n_layers)
    if args.layer_map:
        return SelfDraft(draft.layers, parse_layer_map(args.layer_map, n_layers, len(draft.layers)), spec), "given"
    if loaded is None:
        return SelfDraft(draft.layers, nearest_layer_map(draft.layers, n_layers), spec), (
            "nearest draft layer at or before each target layer (random weights: no calibration)")
    resolved, _ = resolve_draft(spec, loaded, dtype=dtype, device=device, block_size=args.block_size, log=log)
    return SelfDraft(draft.layers, list(resolved.layer_map), spec), "calibrated (cached layer map)"


def _fits(args: argparse.Namespace, spec: ModelSpec, dtype: torch.dtype, policy: Policy, context: int, batch: int,
          draft: SelfDraft | None, backend: str) -> str | None:
    """Why this row cannot fit in device memory, or None (CPU: never checked)."""
    device = torch.device(args.device)
    if device.type != "cuda":
        return None
    shape = dict(batch=batch, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim, capacity=context + args.steps,
                 block_size=args.block_size, dtype=dtype)
    need = StaticKVCache.bytes_needed(layers=spec.num_layers, summaries=policy.requires.summaries,
                                      summary_layers=spec.num_layers - args.dense_layers, **shape)
    if draft is not None and policy.requires.draft_attention:
        need += StaticKVCache.bytes_needed(layers=len(draft.run_layers(args.dense_layers)), summaries=frozenset(),
                                           summary_layers=0, **shape)
    if backend == "torch":  # the reference backend gathers the selected K and V in fp32
        need += 2 * batch * spec.num_kv_heads * (context + args.steps) * spec.head_dim * 4
    need += 2 * GIB  # activations, logits, graph pools
    free = torch.cuda.mem_get_info(device)[0]
    if need > free:
        return f"needs ~{need / GIB:.0f} GiB (KV cache and workspace) but {free / GIB:.0f} GiB are free"
    return None


def _measure_row(args: argparse.Namespace, model: FastModel, policy: Policy, backend: Any, config: EngineConfig,
                 context: int, batch: int, draft: SelfDraft | None, log: Any) -> Measurement:
    """Build a decoder for one row, fill or prefill its cache, measure (the decoder is freed on return)."""
    decoder = FastDecoder(model, policy, backend, config, batch=batch, max_tokens=context + args.steps, draft=draft)
    if args.prefill == "random":
        decoder.fill_random(context, seed=args.seed)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        decoder.prefill(torch.randint(0, model.spec.vocab_size, (batch, context), generator=gen))
    return measure(decoder, args.steps, cuda_graphs=not args.no_cuda_graphs, repeats=args.repeats, log=log)


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but this torch sees no CUDA device; use --device cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    contexts, batches = int_list(args.contexts, "--contexts"), int_list(args.batch, "--batch")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    policies = [make_policy(*_typed_spec(text)) for text in split_policy_specs(args.policies)]
    config = EngineConfig(block_size=args.block_size, dense_layers=args.dense_layers)
    loaded = None
    if args.model:
        from sparsebench.models import load_model

        loaded = load_model(args.model, dtype=dtype, device=str(device), progress=False)
        model = FastModel.from_hf(loaded.model)
        weights = f"real weights of {args.model}"
    else:
        name = args.random_weights or "llama-3-8b"
        model = FastModel.random(preset(name), device=device, dtype=dtype, seed=args.seed)
        weights = f"random weights in the shape of {name} (decode speed does not depend on the weight values)"
    spec = model.spec
    compiled = device.type == "cuda" and not args.no_compile
    if compiled:
        model.compile_layers()
    draft, map_source = None, None
    if any(p.requires.draft_attention for p in policies):
        draft, map_source = self_draft_for(args, spec.num_layers, loaded, device, dtype, log)
    if loaded is not None:
        del loaded
        gc.collect()
    backend = resolve_backend(args.backend, device=device, dtype=dtype, head_dim=spec.head_dim)
    bandwidth = copy_bandwidth(device, int(args.copy_gib * GIB) if device.type == "cuda" else 64 * 2**20)
    prefill = ("random keys/values in the KV cache (no prefill computed; speed does not depend on the cache "
               "contents, the policies' selections do)" if args.prefill == "random"
               else "dense chunked prefill of random token ids")
    log(f"sparsebench: {weights}; backend {backend.name}; KV cache: {prefill}; copy bandwidth "
        f"{bandwidth / 1e9:.0f} GB/s (read + write)")
    meta = {
        "date": now_iso(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": environment_info(device), "driver": driver_version() if device.type == "cuda" else None,
        "weights": weights, "model_shape": dataclasses.asdict(spec), "dtype": str(dtype),
        "layers_compiled": compiled,
        "backend": backend.name, "kv_cache": prefill, "block_size": args.block_size,
        "dense_layers": args.dense_layers, "steps": args.steps, "repeats": args.repeats,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "draft": None if draft is None else {"spec": draft.spec, "layers": draft.layers,
                                             "layer_map": draft.layer_map, "layer_map_source": map_source},
        "timing": "headline: median of the timed passes, CUDA events around the whole pass (CUDA-graph replays "
                  "when mode is cuda-graphs); breakdown: one instrumented pass (see each row's breakdown_source)",
        "graphs_note": "a CUDA graph is captured per block count with the host values (n_tokens) of its first "
                       "step, so a budget given as a fraction of the context can differ from eager decoding by "
                       "at most one block",
        "bound": "bytes a step must read (weights + KV read + summaries/draft) / copy bandwidth",
        "dense_path": f"the first {args.dense_layers} layers and the dense policy run through the same backend with "
                      "a full selection, so every row uses the same attention kernel",
    }
    report: dict[str, Any] = {"meta": meta, "rows": [], "skipped": []}
    rows, skipped = report["rows"], report["skipped"]
    for context in contexts:
        for batch in batches:
            for policy in policies:
                where = f"context {context}, batch {batch}, {policy.label()}"
                why = _fits(args, spec, dtype, policy, context, batch, draft, backend.name)
                if why:
                    skipped.append({"context": context, "batch": batch, "policy": policy.label(), "why": why})
                    log(f"sparsebench: skipping {where}: {why}")
                    continue
                try:
                    m = _measure_row(args, model, policy, backend, config, context, batch, draft, log)
                except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # report it, keep the other rows
                    why = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                    skipped.append({"context": context, "batch": batch, "policy": policy.label(), "why": why})
                    log(f"sparsebench: {where}: {why}")
                else:
                    rows.append(_row(args, spec, dtype, policy, m, context=context, draft=draft, bandwidth=bandwidth))
                    log(f"sparsebench: {where}: {rows[-1]['tokens_per_s']:.1f} tok/s ({m.mode})")
                _add_measured_ratios(rows)
                if save is not None:
                    save(report)  # after every row: a run cut short still leaves its rows
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return report


def _add_measured_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's speed relative to the dense row of the same context and batch (when there is one)."""
    dense = {(r["context"], r["batch"]): r["ms_per_step"] for r in rows if r["policy"] == "dense"}
    for r in rows:
        ref = dense.get((r["context"], r["batch"]))
        r["measured_ratio"] = ref / r["ms_per_step"] if ref else None


def table(report: dict[str, Any], fmt: str = "github") -> str:
    def f(v: float | None, spec: str = ".2f") -> str:
        return "-" if v is None else format(v, spec)

    lines = []
    for r in report["rows"]:
        b = r["breakdown_ms_per_step"]
        lines.append([r["context"], r["batch"], r["policy"], r["mode"], f(r["tokens_per_s"], ".1f"),
                      f(r["ms_per_step"]), *(f(b.get(k, 0.0)) for k in ("draft", "summaries", "select", "plan",
                                                                      "attention", "other")),
                      f"{100 * r['kv_reduction_sparse']:.1f}%", f(r["bound_ms"]), f(r["dense_bound_ms"]),
                      f(r["bound_ratio"]), f(r["measured_ratio"]), f(r["achieved_over_bound"])])
    return tabulate(lines, headers=list(COLUMNS), tablefmt=fmt)


def explanation(report: dict[str, Any]) -> str:
    meta = report["meta"]
    sources = sorted({r["breakdown_source"] for r in report["rows"]})
    notes = sorted({n for r in report["rows"] for n in r["notes"]})
    text = [
        f"Device: {meta['environment']['device_name']} (driver {meta['driver']}); {meta['weights']}; "
        f"{meta['dtype']}; layers {'compiled (torch.compile)' if meta.get('layers_compiled') else 'eager'}; "
        f"backend {meta['backend']}; block {meta['block_size']}, first {meta['dense_layers']} "
        f"layers dense; KV cache: {meta['kv_cache']}.",
        f"tok/s and ms/step: {meta['timing']}. Breakdown columns (ms/step): {'; '.join(sources)}.",
        f"Bound: {meta['bound']} ({meta['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s measured). bound ratio = dense "
        "bound / this row's bound (the speed-up reading fewer bytes allows); measured ratio = dense ms / this "
        "row's ms; achieved/bound = bound ms / measured ms.",
        f"Dense attention: {meta['dense_path']}. CUDA graphs: {meta['graphs_note']}.",
    ]
    text += [f"Note: {n}" for n in notes]
    text += [f"Skipped context {s['context']}, batch {s['batch']}, {s['policy']}: {s['why']}"
             for s in report["skipped"]]
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    return run_and_publish("decode", parse_args(argv), run, table_then_notes(table, explanation))


if __name__ == "__main__":
    sys.exit(main())
