"""Benchmark: speculative decoding with SpecAttn verification on the fast engine (the SpecAttn paper's Table 2).

    sparsebench bench specdec --out DIR                        # llama-3-8b target + llama-3.2-1b draft, random
    sparsebench bench specdec --out DIR --model smollm2-135m --contexts 2048,7680   # real weights, self-draft
    sparsebench bench specdec --out DIR --dry-run              # CPU plumbing check (tiny model, torch backend)

Rows per context (batch 1): no speculation (plain dense decoding, :mod:`sparsebench.fastdecode.measure`),
speculation with dense verification, speculation with SpecAttn verification at ``--p``, and with
``--draft-window W`` the same with a StreamingLLM draft (block 0 plus its last W tokens), which lifts the
bound because the draft's own KV reads stop growing with the context.

Random weights accept nothing, so with ``--random-weights`` the accepted counts follow ``--accept-pattern``
(cycled, printed with the table); greedy verification still runs and its own count is reported. Random keys
also give an almost uniform draft attention, which top-p cannot sparsify; so the draft's cache gets synthetic
heavy hitters (``--heavy-frac`` of its blocks with keys scaled by ``--heavy-scale``): the KV reduction of a
random-weights row is a property of that synthetic cache, stated in the output, not a measurement of Llama 3.
With ``--model`` the prompt is the start of the longest ``--dataset`` document (repeated when it is shorter
than the context, and the output says so), acceptance is greedy and real.

Per row: tokens/s (median of ``--repeats`` timed passes of ``--rounds`` rounds; CUDA graphs where the backend
allows), acceptance rate, mean accepted length (tokens per round), the target's KV reduction, a per-round
breakdown (draft, selection, target attention, rest) and the memory-bandwidth bound: the bytes the rounds
must read (draft weights and draft KV for every draft step, target weights and the target KV the
verifications read: the union of the rows' blocks) over the copy bandwidth measured in the same run,
converted to tokens/s with the tokens the rounds committed. ``--last-row reuse`` (default) lets SpecAttn's last
verified row (the gamma-th proposal, which the draft never fed) reuse the previous row's draft attention
instead of running one more draft step per round (``extra-step``); the output states which. "speed-up" columns
compare each row with the
no-speculation row; "x dense spec" compares with dense speculation. Writes DIR/bench_specdec.json and .md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

from sparsebench.bench.common import driver_version, fmt, run_and_publish, table_then_notes
from sparsebench.bench.decode import GIB, copy_bandwidth, int_list, self_draft_for, step_bytes
from sparsebench.config import DTYPES
from sparsebench.engine import EngineConfig
from sparsebench.errors import UsageError
from sparsebench.evals.results import environment_info, now_iso
from sparsebench.fastdecode import FastDecoder, FastModel
from sparsebench.fastdecode.cache import StaticKVCache
from sparsebench.fastdecode.measure import Measurement, measure
from sparsebench.fastdecode.model import PRESETS, preset
from sparsebench.fastdecode.speculate import (
    LAST_ROW_MODES,
    FastSpeculator,
    SpecDraft,
    SpecMeasurement,
    measure_speculation,
    parse_accept_pattern,
)
from sparsebench.kernels import resolve_backend
from sparsebench.policies import Dense, SpecAttn
from sparsebench.policy import Policy

NO_SPEC, DENSE_SPEC = "no speculation (dense)", "speculation, dense"
COLUMNS = ("context", "row", "mode", "tok/s", "accept", "tok/round", "KV red.", "draft", "select", "attn", "rest",
           "bound tok/s", "achieved/bound", "speed-up", "bound speed-up", "speed-up/bound", "x dense spec",
           "bound x dense spec")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="sparsebench bench specdec", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for bench_specdec.json and bench_specdec.md")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a llama/qwen2 model alias or path (real weights, self-draft)")
    src.add_argument("--random-weights", default=None, choices=sorted(PRESETS),
                     help="random target weights in a preset's shape (default llama-3-8b)")
    ap.add_argument("--draft-random", default=None, choices=sorted(PRESETS),
                    help="random-weights draft preset (default llama-3.2-1b; tiny with --dry-run)")
    ap.add_argument("--draft", default=None,
                    help="with --model: its self-draft (self:SPEC; default the alias's own) or a separate draft with "
                         "its tokenizer (distilled:NAME, a path); with random weights a self:SPEC self-draft instead "
                         "of --draft-random")
    ap.add_argument("--layer-map", default=None, help="draft layer per target layer, comma-separated")
    ap.add_argument("--contexts", default="2048,32768,131072", help="comma-separated context lengths (tokens)")
    ap.add_argument("--gamma", type=int, default=4, help="tokens the draft proposes per round")
    ap.add_argument("--p", type=float, default=0.97, help="SpecAttn's top-p over the draft's attention")
    ap.add_argument("--accept-pattern", default=None,
                    help="accepted drafted tokens per round, cycled (default 3,4,2,4 with random weights; greedy "
                         "acceptance with --model unless given)")
    ap.add_argument("--last-row", default="reuse", choices=LAST_ROW_MODES,
                    help="SpecAttn's last verified row: reuse the previous row's draft attention (approximation, "
                         "gamma draft steps) or run an extra draft step for it (gamma + 1 steps)")
    ap.add_argument("--draft-window", type=int, default=0,
                    help="add a row whose draft attends StreamingLLM-style (block 0 + its last N tokens); 0: no row")
    ap.add_argument("--heavy-frac", type=float, default=0.3,
                    help="random weights: fraction of the draft cache's blocks given heavy-hitter keys")
    ap.add_argument("--heavy-scale", type=float, default=4.0, help="random weights: scale of those keys")
    ap.add_argument("--dataset", default="pg19", help="document source with --model (pg19, govreport, a path)")
    ap.add_argument("--data-source", default="offline", choices=["auto", "hub", "offline"])
    ap.add_argument("--rounds", type=int, default=12, help="speculation rounds per timed pass")
    ap.add_argument("--steps", type=int, default=32, help="decode steps per pass of the no-speculation row")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes; the headline is their median")
    ap.add_argument("--backend", default="auto", help="attention backend (auto, triton, torch, ...)")
    ap.add_argument("--no-cuda-graphs", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="do not torch.compile the layers (CUDA default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dense-layers", type=int, default=2)
    ap.add_argument("--copy-gib", type=float, default=2.0, help="buffer size of the bandwidth measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU plumbing check: tiny random target and draft, torch backend, short contexts")
    args = ap.parse_args(argv)
    if args.dry_run:
        if args.model:
            raise UsageError("--dry-run uses tiny random weights; drop --model")
        args.device, args.backend, args.random_weights = "cpu", "torch", args.random_weights or "tiny"
        args.draft_random = args.draft_random or "tiny"
        if args.contexts == ap.get_default("contexts"):
            args.contexts = "64,96"
        args.rounds, args.steps, args.repeats = min(args.rounds, 3), min(args.steps, 4), 1
        args.draft_window = args.draft_window or 32
        args.block_size = 8 if args.block_size == ap.get_default("block_size") else args.block_size
        args.dense_layers = min(args.dense_layers, 1)
    if args.gamma < 1:
        raise UsageError(f"--gamma must be >= 1 (tokens the draft proposes per round), got {args.gamma}")
    if not 0.0 < args.p <= 1.0:
        raise UsageError(f"--p must be in (0, 1], got {args.p}")
    if args.draft_window < 0:
        raise UsageError(f"--draft-window must be >= 0, got {args.draft_window}")
    return args


# ---- models and prompts ---------------------------------------------------------------------------------


def _build_models(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
                  log: Any) -> tuple[FastModel, SpecDraft, Any, dict[str, Any]]:
    """The target, its draft, the tokenizer (real weights) and what to say about them."""
    info: dict[str, Any] = {}
    if args.model:
        from sparsebench.models import load_model

        loaded = load_model(args.model, dtype=dtype, device=str(device), progress=False)
        target = FastModel.from_hf(loaded.model)
        if args.draft and not args.draft.startswith("self:"):
            draft, source = _separate_draft(args, target, loaded, device, dtype, log)
        else:
            self_draft, source = self_draft_for(args, target.spec.num_layers, loaded, device, dtype, log)
            draft = SpecDraft.self_draft(target, self_draft)
        info.update(weights=f"real weights of {args.model}", draft=draft.name, layer_map_source=source,
                    max_positions=loaded.max_positions or target.spec.max_positions)
        tokenizer = loaded.tokenizer
        del loaded
        gc.collect()
        return target, draft, tokenizer, info
    name = args.random_weights or "llama-3-8b"
    target = FastModel.random(preset(name), device=device, dtype=dtype, seed=args.seed)
    info["weights"] = f"random weights in the shape of {name} (speed does not depend on the weight values)"
    if args.draft:
        if not args.draft.startswith("self:"):
            raise UsageError(f"--draft {args.draft!r}: give self:SPEC, or a preset with --draft-random")
        self_draft, source = self_draft_for(args, target.spec.num_layers, None, device, dtype, log)
        draft = SpecDraft.self_draft(target, self_draft)
    else:
        dname = args.draft_random or "llama-3.2-1b"
        dmodel = FastModel.random(preset(dname), device=device, dtype=dtype, seed=args.seed + 1)
        layer_map = None
        if args.layer_map:
            from sparsebench.fastdecode.draft import parse_layer_map

            layer_map = parse_layer_map(args.layer_map, target.spec.num_layers, dmodel.spec.num_layers)
        draft = SpecDraft.separate(dmodel, target, f"random {dname}", layer_map)
        source = "given" if args.layer_map else "proportional depth (random weights: no calibration)"
    info.update(draft=draft.name, layer_map_source=source, max_positions=0)
    return target, draft, None, info


def _separate_draft(args: argparse.Namespace, target: FastModel, loaded: Any, device: torch.device,
                    dtype: torch.dtype, log: Any) -> tuple[SpecDraft, str]:
    """A separate real draft of ``--model`` (``distilled:NAME``, a path, an alias with the target's tokenizer) with
    its calibrated (cached) KL layer map, as the fast engine's draft. A draft with another tokenizer is refused by
    :meth:`SpecDraft.separate` (the fast engine verifies token ids, so the vocabularies must be the same)."""
    from sparsebench.specattn.drafts import resolve_draft

    resolved, _ = resolve_draft(args.draft, loaded, dtype=dtype, device=device, block_size=args.block_size,
                                progress=False, log=log)
    if getattr(resolved, "tokenizer", None) is not None:
        raise UsageError(f"--draft {args.draft!r} has another tokenizer than {args.model!r}; the fast engine verifies "
                         "token ids, so use a draft with the target's tokenizer (cross-tokenizer speculation: "
                         "benchmarks/device/crosstok_specdec.py)")
    dmodel = FastModel.from_hf(resolved.model)
    return SpecDraft.separate(dmodel, target, args.draft, list(resolved.layer_map)), "calibrated (cached layer map)"


def long_prompt(args: argparse.Namespace, tokenizer: Any, context: int, log: Any) -> tuple[list[int], str]:
    """The first ``context`` tokens of the longest document (repeated if it is shorter), and where they came from."""
    from sparsebench.data import load_corpus

    corpus = load_corpus(args.dataset, source=args.data_source, log=log)
    doc = max(corpus.documents, key=lambda d: (len(d.text), d.id))
    ids = list(tokenizer.encode(doc.text[: context * 12]))
    if len(ids) < context:
        ids = list(tokenizer.encode(doc.text))
    origin = f"document {doc.id!r} ({doc.title or 'untitled'}) of {corpus.origin}"
    if len(ids) >= context:
        return ids[:context], f"the first {context} tokens of {origin}"
    times = -(-context // len(ids))
    return (ids * times)[:context], (f"{origin}: {len(ids)} tokens, repeated {times} times (concatenated) to reach "
                                     f"{context} tokens")


# ---- the bound ------------------------------------------------------------------------------------------


def round_bytes(spec_dec: FastSpeculator, m: SpecMeasurement, dtype: torch.dtype) -> dict[str, float]:
    """Bytes the measured rounds must read, summed over one pass (the numerator of the bound).

    ``draft``: per draft step its weights (the output head only when it proposed) and its KV up to the step's
    length (block 0 plus the window for a StreamingLLM draft); ``target_weights`` once per verification;
    ``target_kv`` what the backend reported reading (the union of the rows' blocks per layer, K and V).
    """
    item = torch.empty((), dtype=dtype).element_size()
    draft, target = spec_dec.draft, spec_dec.target.spec
    dspec, bs = draft.model.spec, spec_dec.config.block_size
    per_token = 2 * len(draft.layers) * dspec.num_kv_heads * dspec.head_dim * item
    window = None if spec_dec.window_blocks is None else (spec_dec.window_blocks + 1) * bs
    draft_bytes = 0.0
    for rec in m.records:
        for kv_tokens, head in rec.draft_steps:
            read = kv_tokens if window is None else min(kv_tokens, window)
            draft_bytes += draft.weight_bytes(dtype, head=head) + read * per_token
    target_kv = m.kv.read_all * 2 * target.head_dim * item
    return {"draft": draft_bytes, "target_weights": float(m.rounds * target.weight_bytes(dtype)),
            "target_kv": float(target_kv)}


# ---- rows -----------------------------------------------------------------------------------------------


def _fits(args: argparse.Namespace, target: FastModel, draft: SpecDraft, dtype: torch.dtype, context: int,
          backend: str) -> str | None:
    """Why one context's rows cannot fit in device memory, or None (CPU: not checked)."""
    device = torch.device(args.device)
    if device.type != "cuda":
        return None
    capacity = context + max(args.steps, args.rounds * (args.gamma + 1)) + 2 * (args.gamma + 2)
    need = 0
    for spec, layers in ((target.spec, target.spec.num_layers), (draft.model.spec, len(draft.layers))):
        need += StaticKVCache.bytes_needed(layers=layers, batch=1, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
                                           capacity=capacity, block_size=args.block_size, dtype=dtype,
                                           summaries=frozenset(), summary_layers=0)
    if backend == "torch":
        need += 2 * target.spec.num_kv_heads * capacity * target.spec.head_dim * 4
    need += 3 * GIB
    free = torch.cuda.mem_get_info(device)[0]
    if need > free:
        return f"needs ~{need / GIB:.0f} GiB (both KV caches and workspace) but {free / GIB:.0f} GiB are free"
    return None


def _positions_limit(args: argparse.Namespace, info: dict[str, Any], context: int) -> str | None:
    limit = info.get("max_positions") or 0
    need = context + args.rounds * (args.gamma + 1) + args.gamma + 2
    if args.model and limit and need > limit:
        return (f"{args.model} supports {limit} positions; a {context}-token context plus {args.rounds} rounds of "
                f"up to {args.gamma + 1} tokens needs {need}")
    return None


def _plain_row(args: argparse.Namespace, target: FastModel, backend: Any, config: EngineConfig, context: int,
               prompt: list[int] | None, dtype: torch.dtype, bandwidth: float, log: Any) -> dict[str, Any]:
    dec = FastDecoder(target, Dense(), backend, config, max_tokens=context + args.steps + 1)
    if prompt is None:
        dec.fill_random(context, seed=args.seed)
    else:
        dec.prefill(torch.tensor([prompt]))
    m: Measurement = measure(dec, args.steps, cuda_graphs=not args.no_cuda_graphs, repeats=args.repeats, log=log)
    nbytes = step_bytes(target.spec, dtype, Dense(), m, context=context, block_size=args.block_size,
                        dense_layers=args.dense_layers, draft=None)
    bound_ms = (nbytes["weights"] + nbytes["kv"]) / bandwidth * 1e3
    b = m.breakdown_ms
    return {
        "context": context, "row": NO_SPEC, "policy": "dense", "mode": m.mode, "tokens_per_s": m.tokens_per_second,
        "ms_per_token": m.ms_per_step, "pass_ms": m.pass_ms, "acceptance_rate": None, "tokens_per_round": 1.0,
        "kv_reduction_sparse": 0.0,
        "breakdown_ms_per_round": {"draft": 0.0, "selection": b.get("plan", 0.0) + b.get("select", 0.0),
                                   "target_attention": b.get("attention", 0.0),
                                   "rest": max(0.0, m.ms_per_step - b.get("plan", 0.0) - b.get("select", 0.0)
                                               - b.get("attention", 0.0))},
        "breakdown_source": m.breakdown_source, "bytes_per_token": nbytes, "bound_tokens_per_s": 1e3 / bound_ms,
        "tokens_head": m.tokens[0, :16].tolist(), "notes": m.notes,
    }


def _spec_row(args: argparse.Namespace, label: str, target: FastModel, draft: SpecDraft, policy: Policy,
              backend: Any, config: EngineConfig, context: int, prompt: list[int] | None, dtype: torch.dtype,
              bandwidth: float, pattern: tuple[int, ...] | None, window: int | None, log: Any) -> dict[str, Any]:
    spec_dec = FastSpeculator(target, draft, policy, backend, config, gamma=args.gamma,
                              max_tokens=context + args.rounds * (args.gamma + 1) + 1, accept_pattern=pattern,
                              draft_window=window, cuda_graphs=not args.no_cuda_graphs,
                              compile_rows=args.device == "cuda" and not args.no_compile, last_row=args.last_row)
    if prompt is None:
        spec_dec.fill_random(context, seed=args.seed, heavy_frac=args.heavy_frac, heavy_scale=args.heavy_scale)
    else:
        spec_dec.prefill(torch.tensor([prompt]))
    m = measure_speculation(spec_dec, args.rounds, repeats=args.repeats, log=log)
    nbytes = round_bytes(spec_dec, m, dtype)
    bound_s = sum(nbytes.values()) / bandwidth
    return {
        "context": context, "row": label, "policy": policy.label(), "mode": m.mode,
        "tokens_per_s": m.tokens_per_second, "ms_per_round": m.ms_per_round, "pass_ms": m.pass_ms,
        "rounds": m.rounds, "gamma": m.gamma, "tokens_per_pass": m.tokens,
        "acceptance_rate": m.acceptance_rate, "greedy_acceptance_rate": m.greedy_acceptance_rate,
        "tokens_per_round": m.mean_accepted_length, "accepted_per_round": [r.accepted for r in m.records],
        "kv_reduction_sparse": m.kv.reduction_sparse, "kv_reduction_all": m.kv.reduction_all,
        "breakdown_ms_per_round": m.breakdown_ms, "breakdown_source": m.breakdown_source,
        "bytes_per_pass": nbytes, "bound_tokens_per_s": m.tokens / bound_s, "draft_window": window,
        "graph_captures": m.captures, "tokens_head": m.token_ids[:16],
        "draft_mass": ("triton kernel" if spec_dec.mass_kernel else "torch") if spec_dec.uses_mass else None,
        "last_row": spec_dec.last_row_note,
        "notes": m.notes,
    }


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    """Speed-ups against the context's no-speculation row and its dense-speculation row, measured and bound."""
    for r in rows:
        r["achieved_over_bound"] = r["tokens_per_s"] / r["bound_tokens_per_s"]
        ctx = [x for x in rows if x["context"] == r["context"]]
        for key, ref_label in (("vs_no_spec", NO_SPEC), ("vs_dense_spec", DENSE_SPEC)):
            ref = next((x for x in ctx if x["row"] == ref_label), None)
            if ref is None:
                r[key] = None
                continue
            measured = r["tokens_per_s"] / ref["tokens_per_s"]
            bound = r["bound_tokens_per_s"] / ref["bound_tokens_per_s"]
            r[key] = {"measured": measured, "bound": bound, "measured_over_bound": measured / bound}


def run(args: argparse.Namespace, save: Any = None) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but this torch sees no CUDA device; use --device cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    contexts = int_list(args.contexts, "--contexts")
    if args.rounds < 1 or args.steps < 1:
        raise UsageError(f"--rounds and --steps must be >= 1, got {args.rounds} and {args.steps}")
    pattern = parse_accept_pattern(args.accept_pattern or (None if args.model else "3,4,2,4"), args.gamma)
    config = EngineConfig(block_size=args.block_size, dense_layers=args.dense_layers)
    target, draft, tokenizer, info = _build_models(args, device, dtype, log)
    compiled = device.type == "cuda" and not args.no_compile
    if compiled:
        target.compile_layers()
        if not draft.is_self:
            draft.model.compile_layers()
    backend = resolve_backend(args.backend, device=device, dtype=dtype, head_dim=target.spec.head_dim)
    bandwidth = copy_bandwidth(device, int(args.copy_gib * GIB) if device.type == "cuda" else 64 * 2**20)
    window = args.draft_window or None
    rows_spec: list[tuple[str, Policy, int | None]] = [(DENSE_SPEC, Dense(), None),
                                                       (f"speculation, specattn p={args.p}", SpecAttn(p=args.p), None)]
    if window:
        rows_spec.append((f"speculation, specattn p={args.p}, StreamingLLM draft ({window})", SpecAttn(p=args.p),
                          window))
    random_cache = (f"random keys/values (no prefill); the draft's cache has synthetic heavy hitters: "
                    f"{args.heavy_frac:.0%} of its blocks (per layer and kv head) with keys scaled by "
                    f"{args.heavy_scale:g}, so top-p over its attention can sparsify (see the module docstring)")
    meta = {
        "date": now_iso(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "environment": environment_info(device), "driver": driver_version() if device.type == "cuda" else None,
        **info, "target_shape": dataclasses.asdict(target.spec), "draft_shape": dataclasses.asdict(draft.model.spec),
        "draft_layers": draft.layers, "layer_map": draft.layer_map, "dtype": str(dtype), "layers_compiled": compiled,
        "backend": backend.name, "block_size": args.block_size, "dense_layers": args.dense_layers,
        "gamma": args.gamma, "p": args.p, "last_row": args.last_row, "rounds": args.rounds, "steps": args.steps,
        "repeats": args.repeats,
        "accept_pattern": list(pattern) if pattern else None,
        "acceptance": (f"FIXED pattern {','.join(map(str, pattern))} accepted drafted tokens per round (cycled): "
                       "random weights accept nothing; greedy verification still runs" if pattern
                       else "greedy (the target's argmax; output identical to plain greedy decoding at p = 1)"),
        "kv_cache": random_cache if not args.model else None, "prompts": {},
        "copy_bandwidth_bytes_per_s": bandwidth,
        "timing": "headline: median of the timed passes, CUDA events around each pass of rounds (host synchronisation "
                  "per round included); breakdown: one instrumented pass (each row's breakdown_source)",
        "bound": "bytes the rounds read (draft weights + draft KV per draft step, target weights + target KV read "
                 "per verification) / copy bandwidth, as tokens/s with the tokens the rounds committed",
        "dry_run": args.dry_run,
    }
    log(f"sparsebench: {info['weights']}; draft {draft.name}; backend {backend.name}; copy bandwidth "
        f"{bandwidth / 1e9:.0f} GB/s; acceptance: {meta['acceptance']}")
    report: dict[str, Any] = {"meta": meta, "rows": [], "skipped": []}
    for context in contexts:
        why = _positions_limit(args, info, context) or _fits(args, target, draft, dtype, context, backend.name)
        if why:
            report["skipped"].append({"context": context, "why": why})
            log(f"sparsebench: skipping context {context}: {why}")
            continue
        prompt = None
        if tokenizer is not None:
            prompt, origin = long_prompt(args, tokenizer, context, log)
            meta["prompts"][str(context)] = origin
            log(f"sparsebench: prompt: {origin}")
        jobs: list[tuple[str, Policy | None, int | None]] = [(NO_SPEC, None, None), *rows_spec]
        for label, policy, win in jobs:
            try:
                if policy is None:
                    row = _plain_row(args, target, backend, config, context, prompt, dtype, bandwidth, log)
                else:
                    row = _spec_row(args, label, target, draft, policy, backend, config, context, prompt, dtype,
                                    bandwidth, pattern, win, log)
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:  # report it, keep the other rows
                msg = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
                report["skipped"].append({"context": context, "row": label, "why": msg})
                log(f"sparsebench: context {context}, {label}: {msg}")
            else:
                report["rows"].append(row)
                log(f"sparsebench: context {context}, {label}: {row['tokens_per_s']:.1f} tok/s ({row['mode']})")
            _add_ratios(report["rows"])
            if save is not None:
                save(report)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return report


def table(report: dict[str, Any], fmt_name: str = "github") -> str:
    lines = []
    for r in report["rows"]:
        b = r["breakdown_ms_per_round"]
        no, ds = r.get("vs_no_spec") or {}, r.get("vs_dense_spec") or {}
        lines.append([
            r["context"], r["row"], r["mode"], fmt(r["tokens_per_s"]),
            "-" if r["acceptance_rate"] is None else f"{100 * r['acceptance_rate']:.0f}%",
            fmt(r["tokens_per_round"], ".2f"), f"{100 * r['kv_reduction_sparse']:.1f}%",
            *(fmt(b.get(k, 0.0), ".2f") for k in ("draft", "selection", "target_attention", "rest")),
            fmt(r["bound_tokens_per_s"]), fmt(r.get("achieved_over_bound"), ".2f"),
            fmt(no.get("measured"), ".2f"), fmt(no.get("bound"), ".2f"), fmt(no.get("measured_over_bound"), ".2f"),
            fmt(ds.get("measured"), ".2f"), fmt(ds.get("bound"), ".2f"),
        ])
    return tabulate(lines, headers=list(COLUMNS), tablefmt=fmt_name)


def explanation(report: dict[str, Any]) -> str:
    meta = report["meta"]
    text = [
        f"Device: {meta['environment']['device_name']} (driver {meta['driver']}); target: {meta['weights']}; "
        f"draft: {meta['draft']} (layer map: {meta['layer_map_source']}); {meta['dtype']}; layers "
        f"{'compiled' if meta['layers_compiled'] else 'eager'}; backend {meta['backend']}; block {meta['block_size']}, "
        f"first {meta['dense_layers']} layers dense; gamma {meta['gamma']}; {meta['rounds']} rounds per pass.",
        f"Acceptance: {meta['acceptance']}.",
        f"tok/s: {meta['timing']}. Breakdown columns: ms per round (per token for the no-speculation row).",
        f"Bound: {meta['bound']} ({meta['copy_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s measured). speed-up = tok/s / "
        "no-speculation tok/s; bound speed-up the same for the bounds; speed-up/bound their ratio; x dense spec = "
        "tok/s / dense-speculation tok/s (measured, then bound).",
    ]
    if meta.get("kv_cache"):
        text.append(f"KV cache: {meta['kv_cache']}.")
    text += [f"Prompt at {ctx}: {origin}." for ctx, origin in meta["prompts"].items()]
    for what in sorted({r["last_row"] for r in report["rows"] if r.get("last_row")}):
        text.append(f"SpecAttn rows (--last-row {meta['last_row']}): {what}.")
    for how in sorted({r["draft_mass"] for r in report["rows"] if r.get("draft_mass")}):
        text.append(f"SpecAttn rows: the draft's attention mass per block comes from the {how} path.")
    notes = sorted({n for r in report["rows"] for n in r["notes"]})
    text += [f"Note: {n}" for n in notes]
    text += [f"Skipped context {s['context']}{', ' + s['row'] if 'row' in s else ''}: {s['why']}"
             for s in report["skipped"]]
    mean_accept = [r["tokens_per_round"] for r in report["rows"] if r["row"] != NO_SPEC]
    if mean_accept:
        text.append(f"Mean tokens per round over the speculation rows: {statistics.mean(mean_accept):.2f}.")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> int:
    return run_and_publish("specdec", parse_args(argv), run, table_then_notes(table, explanation))


if __name__ == "__main__":
    sys.exit(main())
