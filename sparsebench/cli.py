"""The ``sparsebench`` command line.

Policy parameters are not hard-coded here: ``run`` reads ``--policy NAME`` first, then adds that
policy's declared parameters as flags (``--p``, ``--budget-frac``, ...), so an installed plugin's
parameters work on the command line and show in ``--help`` with no change to this file.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from tabulate import tabulate

from sparsebench import __version__
from sparsebench.config import DEFAULT_MODEL, DTYPES, PAPER_SETUP, RunConfig
from sparsebench.errors import UsageError
from sparsebench.params import ParamSpec
from sparsebench.policy import Policy

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def parse_policy_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``quest:budget_frac=0.5,group_reduce=sum`` -> (``quest``, {...}) with values still as text."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"policy spec {spec!r}: expected key=value after ':', got {item!r}")
        params[key.strip().replace("-", "_")] = value.strip()
    return name.strip(), params


def _find_policy_arg(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--policy" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--policy="):
            return arg.split("=", 1)[1]
    return None


def _param_help(spec: ParamSpec) -> str:
    return f"{spec.help} [{spec.type.__name__}, {spec.range_text()}, default {spec.default}]"


def _all_policies_epilog() -> str:
    from sparsebench.plugins import registry

    lines = ["policy parameters (give --policy NAME --help for one policy):"]
    for name, cls in sorted(registry().policies.items()):
        flags = ", ".join(f"{s.flag} {s.default}" for s in cls.param_specs()) or "no parameters"
        lines.append(f"  {name}: {flags}")
    return "\n".join(lines)


def _add_run_arguments(p: argparse.ArgumentParser, *, single_policy: bool = True, teacher_forced: bool = True) -> None:
    if single_policy:
        p.add_argument("--policy", required=True,
                       help="policy name, optionally with parameters: quest or quest:budget_frac=0.5")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"alias (see `sparsebench models`), HF id, local directory or .gguf file, or "
                        f"tiny:llama|qwen2|gemma3 (default {DEFAULT_MODEL})")
    p.add_argument("--draft", default=None,
                   help="draft for policies that need one: self:SPEC (self:0-14, self:every=3, self:first-half) "
                        "or a model like --model (default: the model's default self-draft)")
    p.add_argument("--dataset", default="pg19",
                   help="pg19, wikitext, govreport, or a .txt/.jsonl file or folder (default pg19)")
    p.add_argument("--data-dir", default=None, help="offline corpus directory (default: $SPARSEBENCH_DATA, "
                                                    "../shared/data, or the packaged sample)")
    p.add_argument("--data-source", default="auto", choices=["auto", "hub", "offline"],
                   help="where named corpora come from (default auto: hub if reachable, else offline)")
    if teacher_forced:  # generation takes its lengths from the prompt and --max-new-tokens, one sequence at a time
        p.add_argument("--seq-len", type=int, default=768,
                       help="tokens per document (default 768: a quick first run)")
        p.add_argument("--prefill-frac", type=float, default=0.1, help="dense prefill fraction (default 0.1)")
    p.add_argument("--docs", type=int, default=1, help="documents to evaluate (default 1)")
    if teacher_forced:
        p.add_argument("--batch-size", type=int, default=1, help="documents decoded together (default 1)")
    p.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (default 16)")
    p.add_argument("--dense-layers", type=int, default=2, help="first layers kept dense (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--backend", default="auto", help="attention backend: auto, torch, ... (default auto)")
    p.add_argument("--seed", type=int, default=0, help="document-selection seed (default 0)")
    p.add_argument("--out", default=None, help="append one JSON row per document to this JSONL file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


RUN_DESCRIPTION = "Teacher-forced evaluation of one policy (perplexity, KV reduction, tokens/s)."


def _build_run_parser(prog: str, policy_cls: type[Policy] | None, *, description: str = RUN_DESCRIPTION,
                      teacher_forced: bool = True,
                      extra: Callable[[argparse.ArgumentParser], None] | None = None) -> _Parser:
    """The parser of a one-policy command: common flags, ``extra``'s flags, then the policy's declared ones."""
    epilog = None if policy_cls is not None else _all_policies_epilog()
    p = _Parser(prog=prog, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                description=description)
    _add_run_arguments(p, teacher_forced=teacher_forced)
    if extra is not None:
        extra(p)
    if policy_cls is not None:
        group = p.add_argument_group(f"parameters of policy {policy_cls.name!r}")
        for spec in policy_cls.param_specs():
            group.add_argument(spec.flag, dest=f"param_{spec.name}", default=None, metavar=spec.type.__name__.upper(),
                               help=_param_help(spec))
    return p


def _parse_policy_command(argv: Sequence[str], prog: str, **parser_kwargs: Any) -> tuple[argparse.Namespace,
                                                                                        type[Policy], dict[str, Any]]:
    """Parse a one-policy command: ``--policy NAME[:k=v,...]`` first, so its declared parameters become flags.

    Returns the arguments, the policy class and its typed, validated parameters (spec values overridden by
    flags). ``parser_kwargs`` go to :func:`_build_run_parser`.
    """
    from sparsebench.plugins import registry

    policy_arg = _find_policy_arg(argv)
    policy_cls = None
    spec_params: dict[str, str] = {}
    if policy_arg is not None:
        name, spec_params = parse_policy_spec(policy_arg)
        policy_cls = registry().policy_class(name)
    args = _build_run_parser(prog, policy_cls, **parser_kwargs).parse_args(argv)
    assert policy_cls is not None  # --policy is required, so parse_args has failed otherwise
    flag_params = {s.name: getattr(args, f"param_{s.name}") for s in policy_cls.param_specs()
                   if getattr(args, f"param_{s.name}") is not None}
    return args, policy_cls, _typed_params(policy_cls, spec_params | flag_params)


def cmd_run(argv: Sequence[str]) -> int:
    from sparsebench.runner import run_evaluation

    args, policy_cls, params = _parse_policy_command(argv, "sparsebench run")
    cfg = _run_config(args, policy_cls.name, params)
    result = run_evaluation(cfg, progress=not args.no_progress)
    _print_run_summary(result)
    if cfg.seq_len != 2048 or cfg.docs < 20:
        print(f"note: the SpecAttn paper's setup is {PAPER_SETUP} (on a GPU: --device cuda)")
    if cfg.out:
        print(f"results appended to {cfg.out}")
    return 0


def _typed_params(policy_cls: type[Policy], raw: dict[str, str]) -> dict[str, Any]:
    """Parameter text from the command line -> typed, validated values."""
    specs = {s.name: s for s in policy_cls.param_specs()}
    unknown = sorted(set(raw) - set(specs))
    if unknown:
        raise UsageError(f"policy {policy_cls.name!r} has no parameter {', '.join(unknown)}; "
                         f"it takes: {', '.join(s.flag for s in specs.values()) or 'none'}")
    params = {k: specs[k].parse(v, policy_cls.name) for k, v in raw.items()}
    policy_cls.from_params(params)  # validate ranges now, before any model is loaded
    return params


def _run_config(args: argparse.Namespace, policy: str, params: dict[str, Any]) -> RunConfig:
    # Commands without the teacher-forced flags (generate) keep RunConfig's defaults for them.
    lengths = {k: getattr(args, k) for k in ("seq_len", "batch_size", "prefill_frac") if hasattr(args, k)}
    return RunConfig(
        policy=policy, policy_params=params, model=args.model, draft=args.draft, dataset=args.dataset,
        data_dir=args.data_dir, data_source=args.data_source, docs=args.docs, block_size=args.block_size,
        dense_layers=args.dense_layers, device=args.device, dtype=args.dtype, backend=args.backend,
        seed=args.seed, out=args.out, **lengths,
    )


GENERATE_DESCRIPTION = (
    "Speculative decoding: the draft proposes --gamma tokens, the target verifies them in one pass with the "
    "policy choosing each verified token's KV blocks (specattn: from the draft's attention to that token). "
    "Greedy by default (exactly the target's greedy output at --p 1.0); --sampling uses the Leviathan/Chen "
    "rejection scheme, seeded by --seed (which also orders the documents, as in `run`). One sequence at a time."
)


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speculative generation")
    g.add_argument("--gamma", type=int, default=4, help="tokens the draft proposes per round (default 4)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    source = g.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="prompt text (default: a document of --dataset)")
    source.add_argument("--prompt-file", default=None, help="read the prompt from this text file")
    g.add_argument("--doc-index", type=int, default=0,
                   help="without a prompt: which document of --dataset, in `run`'s order for --seed (default 0)")
    g.add_argument("--context-tokens", type=int, default=512,
                   help="without a prompt: the document's first C tokens are the prompt (default 512)")
    g.add_argument("--eval", action="store_true",
                   help="evaluate over --docs documents of --dataset (each cut to --context-tokens) and print "
                        "the metrics per document and overall")
    g.add_argument("--sampling", action="store_true", help="speculative sampling instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=None, help="sampling temperature (default 1.0)")


def cmd_generate(argv: Sequence[str]) -> int:
    from sparsebench.specdec.decoder import SpeculationConfig
    from sparsebench.specdec.run import GenerateRequest, read_prompt_file, run_generate

    args, policy_cls, params = _parse_policy_command(argv, "sparsebench generate", description=GENERATE_DESCRIPTION,
                                                     teacher_forced=False, extra=_add_generate_arguments)
    if args.temperature is not None and not args.sampling:
        raise UsageError("--temperature applies to --sampling only; add --sampling or drop --temperature")
    speculation = SpeculationConfig(gamma=args.gamma, sampling=args.sampling, seed=args.seed,
                                    temperature=1.0 if args.temperature is None else args.temperature)
    prompt = read_prompt_file(args.prompt_file) if args.prompt_file else args.prompt
    request = GenerateRequest(speculation, max_new_tokens=args.max_new_tokens, prompt=prompt,
                              doc_index=args.doc_index, context_tokens=args.context_tokens, evaluate=args.eval)
    run_generate(_run_config(args, policy_cls.name, params), request, progress=not args.no_progress)
    if args.out:
        print(f"results appended to {args.out}")
    return 0


def _print_run_summary(result: Any) -> None:
    rows = [[r["document"]["id"], r["metrics"]["tokens"], f"{r['metrics']['perplexity']:.3f}",
             f"{100 * r['metrics']['kv_reduction_sparse']:.1f}%", f"{100 * r['metrics']['kv_reduction_all']:.1f}%",
             f"{r['metrics']['tokens_per_s']:.1f}"] for r in result.rows]
    agg = result.aggregate()
    rows.append(["ALL", agg["tokens"], f"{agg['perplexity']:.3f}", f"{100 * agg['kv_reduction_sparse']:.1f}%",
                 f"{100 * agg['kv_reduction_all']:.1f}%", f"{agg['tokens_per_s']:.1f}"])
    label = result.rows[0]["policy_label"]
    print(f"\n{label} on {result.rows[0]['model']['name']} ({result.rows[0]['resolved']['backend']} backend)")
    print(tabulate(rows, headers=["document", "decoded tokens", "perplexity", "KV reduction (sparse layers)",
                                  "KV reduction (all layers)", "tokens/s"], tablefmt="github"))
    print("KV reduction = 1 - KV tokens the backend read / KV tokens dense attention reads, over decode "
          "steps; the headline is over the sparse layers (all layers also counts dense and sliding-window "
          "layers). tokens/s is the teacher-forced loop's wall-clock rate on this device, not a tuned "
          "decode engine.")


def cmd_compare(argv: Sequence[str]) -> int:
    from sparsebench.compare import expand_sweep, run_comparison, split_policy_specs

    p = _Parser(prog="sparsebench compare", description="Run several policies on the same documents and print "
                                                          "the SpecAttn paper's Table 1 (relative to dense).")
    p.add_argument("--policies", required=True,
                   help="comma-separated policy specs, e.g. dense,quest:budget_frac=0.25,specattn:p=0.95,sink_blocks=1")
    p.add_argument("--format", default="github", choices=["github", "markdown", "latex", "csv", "plain"],
                   help="table format (default github)")
    p.add_argument("--sweep", action="store_true",
                   help="run each policy over its declared parameter grid (for the Pareto plot)")
    p.add_argument("--match-kv-reduction", default=None, metavar="SPEC",
                   help="bisect the other policies' budgets to read what SPEC reads (e.g. specattn:p=0.95)")
    p.add_argument("--match-docs", type=int, default=2, help="documents used for the bisection (default 2)")
    p.add_argument("--plots", default=None, metavar="DIR", help="also write the comparison plots to DIR")
    _add_run_arguments(p, single_policy=False)
    args = p.parse_args(argv)
    specs = [_typed_spec(text) for text in split_policy_specs(args.policies)]
    if args.sweep:
        specs = expand_sweep(specs)
    base = _run_config(args, "dense", {})
    if args.match_kv_reduction:
        specs = _matched_specs(base, specs, _typed_spec(args.match_kv_reduction), args.match_docs)
    results = run_comparison(base, specs, progress=not args.no_progress)
    _print_table_one(results, args.format, args.plots)
    return 0


def cmd_govreport(argv: Sequence[str]) -> int:
    from sparsebench.compare import split_policy_specs
    from sparsebench.govreport import govreport_table, run_govreport

    p = _Parser(prog="sparsebench govreport",
                description="LongBench gov_report: generate summaries under each policy, ROUGE-L and KV reads.")
    p.add_argument("--policies", required=True, help="comma-separated policy specs, as for compare")
    p.add_argument("--max-prompt-tokens", type=int, default=4096,
                   help="prompt budget; longer reports are cut in the middle as LongBench does (default 4096)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="summary length cap (default 512)")
    _add_run_arguments(p, single_policy=False)
    p.set_defaults(dataset="govreport")
    args = p.parse_args(argv)
    for flag, value in (("--max-prompt-tokens", args.max_prompt_tokens), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    specs = [_typed_spec(text) for text in split_policy_specs(args.policies)]
    base = _run_config(args, "dense", {})
    results = run_govreport(base, specs, max_prompt_tokens=args.max_prompt_tokens,
                            max_new_tokens=args.max_new_tokens, progress=not args.no_progress)
    print(govreport_table(results))
    print("ROUGE-L: F-measure of rouge-score's rougeL against the reference summary (LongBench's own scorer is "
          "the older `rouge` package, so scores are comparable across policies here, not with its tables).")
    return 0


def _typed_spec(text: str) -> tuple[str, dict[str, Any]]:
    from sparsebench.plugins import registry

    name, raw = parse_policy_spec(text)
    cls = registry().policy_class(name)
    return cls.name, _typed_params(cls, raw)


def _matched_specs(base: RunConfig, specs: list[tuple[str, dict[str, Any]]], reference: tuple[str, dict[str, Any]],
                   docs: int) -> list[tuple[str, dict[str, Any]]]:
    """The reference first, then every other policy with its budget bisected to the reference's reduction."""
    import dataclasses

    from sparsebench.compare import dedupe_specs, match_budget
    from sparsebench.runner import run_evaluation

    if docs < 1:
        raise UsageError(f"--match-docs must be >= 1, got {docs}")
    probe = dataclasses.replace(base, policy=reference[0], policy_params=reference[1], docs=docs,
                                batch_size=min(base.batch_size, docs), out=None)
    target = run_evaluation(probe, progress=False).aggregate()["kv_reduction_sparse"]
    print(f"matching KV reduction {100 * target:.2f}% of {reference[0]} {reference[1]} on {docs} document(s)")
    matched = [reference]
    for name, params in specs:
        if (name, params) == reference or name in {"dense", reference[0]}:
            matched.append((name, params))
            continue
        found, reached = match_budget(base, name, params, target, docs=docs)
        print(f"  {name}: {found} reads {100 * reached:.2f}% less")
        matched.append((name, found))
    return dedupe_specs(matched)


def _print_table_one(runs: list[Any], fmt: str, plots: str | None) -> None:
    """Table 1, a line saying what it was measured on, and the plots when asked (compare and report)."""
    from sparsebench.compare import table_one, write_plots

    print(table_one(runs, tablefmt={"markdown": "pipe"}.get(fmt, fmt)))
    first = runs[0].rows[0]
    cfg, resolved = first["config"], first["resolved"]
    docs = "/".join(map(str, sorted({len(r.rows) for r in runs})))
    print(f"model {first['model']['name']}, {docs} document(s) per run of {first['dataset']['origin']}, "
          f"{cfg['seq_len']} tokens, prefill {cfg['prefill_frac']}, block {cfg['block_size']}, first "
          f"{cfg['dense_layers']} layers dense, {resolved['backend']} backend, {resolved['dtype']} on "
          f"{first['environment']['device_name']}")
    if plots:
        print("plots: " + ", ".join(str(x) for x in write_plots(runs, plots)))


def cmd_report(argv: Sequence[str]) -> int:
    from pathlib import Path

    from sparsebench.compare import group_runs
    from sparsebench.evals.results import read_rows

    p = _Parser(prog="sparsebench report", description="Regenerate Table 1 from stored results (no rerun).")
    p.add_argument("results", nargs="?", help="JSONL file written by run/compare --out")
    p.add_argument("--format", default="github", choices=["github", "markdown", "latex", "csv", "plain"])
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="also write the cumulative-log-perplexity and Pareto plots (PNG and SVG) to DIR")
    p.add_argument("--bench", action="append", default=[], metavar="JSON",
                   help="bench_topp.json / bench_attention.json to plot as the kernel speed-up figure (paper's "
                        "Fig. 4) into --plots DIR; repeatable")
    args = p.parse_args(argv)
    if args.bench:
        _plot_bench(args.bench, args.plots)
        if args.results is None:
            return 0
    if args.results is None:
        raise UsageError("give a results JSONL file, or --bench JSON files with --plots DIR")
    if not Path(args.results).is_file():
        raise UsageError(f"results file {args.results!r} does not exist")
    runs = group_runs(read_rows(args.results))
    if not runs:
        raise UsageError(f"{args.results!r} holds no result rows")
    if not any(r.rows[0]["policy"] == "dense" for r in runs):
        raise UsageError(f"{args.results!r} has no dense run to compare against; run --policy dense too")
    _print_table_one(runs, args.format, args.plots)
    return 0


def _plot_bench(files: Sequence[str], plots: str | None) -> None:
    import json
    from pathlib import Path

    from sparsebench.evals.plots import plot_kernel_speedups

    if plots is None:
        raise UsageError("--bench needs --plots DIR (where the figure goes)")
    topp, attention, devices = [], [], set()
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UsageError(f"bench file {name!r} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"bench file {name!r} is not JSON ({exc})") from None
        meta = data.get("meta", {})
        devices.add(str(meta.get("device") or meta.get("environment", {}).get("device_name") or "unknown device"))
        if "results" in data and all("speedup_vs_sort" in r for r in data["results"]):
            topp += data["results"]
        elif "rows" in data and any("speedup_vs_flashinfer" in r for r in data["rows"]):
            attention += data["rows"]
        else:
            raise UsageError(f"{name!r} is neither a bench topp nor a bench attention result")
    out = Path(plots) / "kernel_speedups"
    for path in plot_kernel_speedups(topp, attention, title=f"Kernel speed-ups ({', '.join(sorted(devices))})",
                                     out=out):
        print(f"wrote {path}")


def cmd_bench(argv: Sequence[str]) -> int:
    import importlib

    from sparsebench.bench import BENCHMARKS

    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: sparsebench bench NAME [options]\n\nbenchmarks:")
        for name, (_, text) in BENCHMARKS.items():
            print(f"  {name:<8} {text}")
        return 0
    if argv[0] not in BENCHMARKS:
        raise UsageError(f"unknown benchmark {argv[0]!r}; known: {', '.join(BENCHMARKS)}")
    module = importlib.import_module(BENCHMARKS[argv[0]][0])
    try:
        return int(module.main(list(argv[1:])))
    except SystemExit as exc:  # argparse inside the benchmark, or a benchmark's own message (no GPU, ...)
        if isinstance(exc.code, str):
            raise UsageError(f"sparsebench bench {argv[0]}: {exc.code}") from None
        if exc.code not in (0, None):
            raise UsageError(f"sparsebench bench {argv[0]}: bad arguments (see --help)") from None
        return 0


def cmd_policies(argv: Sequence[str]) -> int:
    from sparsebench.plugins import registry

    p = _Parser(prog="sparsebench policies", description="List registered policies and their parameters.")
    p.parse_args(argv)
    reg = registry()
    rows = []
    for name, cls in sorted(reg.policies.items()):
        params = "\n".join(f"{s.flag} {s.type.__name__}={s.default} {s.range_text()}: {s.help}"
                           for s in cls.param_specs()) or "(none)"
        needs = ", ".join(sorted(cls.requires.summaries) + (["draft attention"] if cls.requires.draft_attention
                                                            else [])) or "-"
        rows.append([name, reg.sources.get(f"policy:{name}", "?"), cls.summary(), needs, params])
    print(tabulate(rows, headers=["policy", "package", "description", "needs", "parameters"], tablefmt="grid",
                   maxcolwidths=[None, None, 40, 16, 70]))
    return 0


def cmd_models(argv: Sequence[str]) -> int:
    from sparsebench.models import describe_models

    p = _Parser(prog="sparsebench models", description="List built-in model aliases and whether each is cached.")
    p.parse_args(argv)
    rows = describe_models()
    print(tabulate(rows, headers="keys", tablefmt="github"))
    return 0


def cmd_fetch(argv: Sequence[str]) -> int:
    from pathlib import Path

    from sparsebench.models import fetch

    p = _Parser(prog="sparsebench fetch", description="Download and convert a model alias ahead of time.")
    p.add_argument("name", help="model alias (see `sparsebench models`)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="take the tokenizer from DIR (tokenizer.json, tokenizer_config.json) instead of converting the "
                        "GGUF's; checked against the alias's recorded probe tokenization")
    args = p.parse_args(argv)
    if args.tokenizer is not None and not (Path(args.tokenizer) / "tokenizer.json").is_file():
        raise UsageError(f"--tokenizer {args.tokenizer}: no tokenizer.json there; give the directory holding the "
                         "model's tokenizer.json and tokenizer_config.json")
    path = fetch(args.name, progress=True, tokenizer_dir=Path(args.tokenizer) if args.tokenizer else None)
    print(f"{args.name}: ready at {path}")
    return 0


def cmd_layermap(argv: Sequence[str]) -> int:
    from sparsebench.config import resolve_device
    from sparsebench.models import load_model
    from sparsebench.specattn.drafts import CalibrationSettings, resolve_draft

    p = _Parser(prog="sparsebench layermap",
                description="Compute (or show the cached) SpecAttn layer map between a target and a draft.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"target model (default {DEFAULT_MODEL})")
    p.add_argument("--draft", default=None, help="draft: self:SPEC or a model (default: the model's self-draft)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--calib-docs", type=int, default=4, help="calibration sequences (default 4)")
    p.add_argument("--calib-len", type=int, default=512, help="tokens per calibration sequence (default 512)")
    p.add_argument("--rows", type=int, default=64, help="query positions per sequence compared (default 64)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-source", default="auto", choices=["auto", "hub", "offline"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES))
    p.add_argument("--recompute", action="store_true", help="ignore the cache")
    p.add_argument("--plot", default=None, help="save the KL heatmap with the chosen path (PNG and SVG)")
    args = p.parse_args(argv)
    for flag, value in (("--calib-docs", args.calib_docs), ("--calib-len", args.calib_len), ("--rows", args.rows),
                        ("--block-size", args.block_size)):
        if value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    device = resolve_device(args.device)
    dtype = RunConfig(policy="dense", device=args.device, dtype=args.dtype).torch_dtype()
    target = load_model(args.model, dtype=dtype, device=str(device))
    settings = CalibrationSettings(docs=args.calib_docs, seq_len=args.calib_len, rows=args.rows)
    draft, result = resolve_draft(args.draft, target, dtype=dtype, device=device, block_size=args.block_size,
                                  data_dir=args.data_dir, data_source=args.data_source, settings=settings,
                                  recompute=args.recompute)
    rows = [[i, j, f"{result.kl[i][j]:.4f}", f"{min(result.kl[i]):.4f}"] for i, j in enumerate(draft.layer_map)]
    print(tabulate(rows, headers=["target layer", "draft layer", "KL", "best KL in row"], tablefmt="github"))
    print(f"total path cost {result.total_cost:.4f}")
    if args.plot:
        from sparsebench.evals.plots import plot_layer_map

        paths = plot_layer_map(result.kl, result.path, result.target_to_draft, target_name=args.model,
                               draft_name=draft.name, out=args.plot)
        print("plot: " + ", ".join(str(x) for x in paths))
    return 0


DISTILL_DESCRIPTION = (
    "Train a small draft for a target: --layers decoder layers (from evenly spaced target layers, or fresh) with "
    "the target's tokenizer, trained to match its next-token distribution (KL on logits, plus optionally its "
    "attention at the mapped layers). The draft is saved as a transformers model directory under "
    "$SPARSEBENCH_CACHE/drafts/NAME (or --out) and used with --draft distilled:NAME. Ctrl-C saves a checkpoint; "
    "--resume continues."
)


def cmd_distill(argv: Sequence[str]) -> int:
    from sparsebench.distill import DistillConfig, Distiller

    p = _Parser(prog="sparsebench distill", description=DISTILL_DESCRIPTION)
    p.add_argument("--target", required=True, help="target model: alias, HF id, local directory or tiny:ARCH")
    p.add_argument("--layers", type=int, default=4, help="draft decoder layers (default 4)")
    p.add_argument("--init", default="subset", choices=["subset", "fresh"],
                   help="copy evenly spaced target layers (subset, default) or initialise at random (fresh)")
    p.add_argument("--share-embeddings", action=argparse.BooleanOptionalAction, default=True,
                   help="keep the target's embeddings, final norm and head frozen (default); --no-share-embeddings "
                        "trains copies of them")
    p.add_argument("--head-vocab", type=int, default=None, metavar="K",
                   help="reduced output head: the draft computes logits (and proposes) only for K ids, the "
                        "tokenizer's special ids plus the most frequent ids of the training text (default: the "
                        "full vocabulary)")
    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    g.add_argument("--seq-len", type=int, default=1024, help="tokens per training window (default 1024)")
    g.add_argument("--batch-size", type=int, default=8, help="windows per step (default 8)")
    g.add_argument("--lr", type=float, default=5e-4, help="peak AdamW learning rate (default 5e-4)")
    g.add_argument("--min-lr-frac", type=float, default=0.1, help="final lr as a fraction of --lr (default 0.1)")
    g.add_argument("--warmup", type=int, default=None, help="linear warmup steps (default 5%% of --steps)")
    g.add_argument("--schedule", default="cosine", choices=["cosine", "linear"], help="decay after warmup")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices (default 0.01)")
    g.add_argument("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0 for none (default 1.0)")
    g.add_argument("--attention-weight", type=float, default=0.0,
                   help="weight of the attention-matching KL (draft layer j vs the target layer it came from; "
                        "default 0: logits only)")
    g.add_argument("--attention-rows", type=int, default=32, help="query positions matched per window (default 32)")
    g.add_argument("--attention-block-size", type=int, default=16,
                   help="KV block size the attention is compared at, as SpecAttn reads it (default 16)")
    g.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed (default 0)")
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    g.add_argument("--resume", action="store_true", help="continue from the draft's last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="discard an existing checkpoint and start over")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="pg19",
                   help="pg19, wikitext, govreport or a .txt/.jsonl file or folder; comma-separate several "
                        "(default pg19)")
    d.add_argument("--holdout-docs", type=int, default=4,
                   help="first documents of each corpus (in run/compare's order at --seed 0) kept out of training "
                        "and used for evaluation (default 4)")
    d.add_argument("--data-dir", default=None, help="offline corpus directory (default: $SPARSEBENCH_DATA, ...)")
    d.add_argument("--data-source", default="auto", choices=["auto", "hub", "offline"])
    d.add_argument("--generate-tokens", type=int, default=0, metavar="N",
                   help="add N tokens the target writes itself (continuations of training-text prompts, cached) to "
                        "the training text: the draft learns the text it will be judged on (default 0: none)")
    d.add_argument("--generate-prompt-len", type=int, default=512, help="prompt tokens per continuation (default 512)")
    d.add_argument("--generate-len", type=int, default=512, help="tokens per continuation (default 512)")
    d.add_argument("--generate-temperature", default="0,0.8", metavar="T[,T...]",
                   help="sampling temperatures, cycled over the continuations; 0 is greedy (default 0,0.8)")
    d.add_argument("--generate-batch", type=int, default=512, help="continuations written at once (default 512)")
    o = p.add_argument_group("output and evaluation")
    o.add_argument("--name", default=None, help="draft name (default TARGET-L<layers>, e.g. smollm2-135m-L4)")
    o.add_argument("--out", default=None, help="model directory (default $SPARSEBENCH_CACHE/drafts/NAME)")
    o.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N] (default auto)")
    o.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="autocast dtype (default bf16 on a GPU, "
                                                                           "fp32 on the CPU)")
    o.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens for perplexity/KL (default 16384)")
    o.add_argument("--eval-acceptance", action="store_true",
                   help="also measure greedy speculative-decoding acceptance on held-out prompts")
    o.add_argument("--gamma", type=int, default=4, help="tokens drafted per round for --eval-acceptance (default 4)")
    o.add_argument("--acceptance-prompts", type=int, default=4, help="held-out prompts (default 4)")
    o.add_argument("--acceptance-context", type=int, default=512, help="prompt tokens (default 512)")
    o.add_argument("--acceptance-tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other; give one")
    datasets = tuple(x.strip() for x in args.dataset.split(",") if x.strip())
    cfg = DistillConfig(
        target=args.target, layers=args.layers, init=args.init, share_embeddings=args.share_embeddings,
        steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, min_lr_frac=args.min_lr_frac,
        warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        attention_weight=args.attention_weight, attention_rows=args.attention_rows,
        attention_block_size=args.attention_block_size, datasets=datasets, holdout_docs=args.holdout_docs,
        data_dir=args.data_dir, data_source=args.data_source, seed=args.seed, checkpoint_every=args.checkpoint_every,
        name=args.name, out=args.out, device=args.device, dtype=args.dtype, eval_tokens=args.eval_tokens,
        eval_acceptance=args.eval_acceptance, gamma=args.gamma, acceptance_prompts=args.acceptance_prompts,
        acceptance_context=args.acceptance_context, acceptance_tokens=args.acceptance_tokens,
        head_vocab=args.head_vocab, generate_tokens=args.generate_tokens,
        generate_prompt_len=args.generate_prompt_len, generate_len=args.generate_len,
        generate_temperatures=_temperatures(args.generate_temperature), generate_batch=args.generate_batch,
    )
    report = Distiller(cfg, progress=not args.no_progress, resume=args.resume, overwrite=args.overwrite).run()
    _print_distill_report(report)
    return 0


def _tokens(n: int) -> str:
    """``4.00M tokens``, or the exact count below a million (a test run's 120 would print as 0.00M)."""
    return f"{n / 1e6:.2f}M tokens" if n >= 1e6 else f"{n:,} tokens"


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        message = f"--generate-temperature takes comma-separated numbers >= 0 (0: greedy), got {text!r}"
        raise UsageError(message) from None


def _print_distill_report(report: dict[str, Any]) -> None:
    held = report["heldout"]
    rows = [["steps", f"{report['steps']} ({_tokens(report['tokens_seen'])})"],
            ["training time", f"{report['train_seconds']:.1f} s on {report['device']}"],
            ["final training KL (nats/token, mean of the last 20 steps)", f"{report['final_train_kl']:.4f}"]]
    generated = report.get("data", {}).get("generated")
    if generated:
        rows.append(["target-written training text",
                     f"{_tokens(generated['tokens'])} ({generated['continuations']} continuations of "
                     f"{generated['new_len']}, temperatures {generated['temperatures']}, "
                     f"{generated['seconds']:.0f} s)"])
    head = report.get("head_vocab")
    if head:
        rows.append(["reduced head (ids the draft can propose)",
                     f"{head['rows']} of {head['vocab_size']} ({100 * head['train_token_coverage']:.2f}% of "
                     "training tokens)"])
    if held.get("windows"):
        within = " over the head's ids" if "head" in held else ""
        rows += [[f"held-out KL(target || draft){within}", f"{held['kl_target_draft']:.4f}"],
                 [f"held-out perplexity draft / target{within}",
                  f"{held['draft_perplexity']:.2f} / {held['target_perplexity']:.2f} ({held['tokens']} tokens)"]]
        if "head" in held:
            h = held["head"]
            rows.append(["held-out next token / target mass / target argmax in the head",
                         f"{100 * h['next_token_in_head']:.2f}% / {100 * h['target_mass_in_head']:.2f}% / "
                         f"{100 * h['target_argmax_in_head']:.2f}%"])
    else:
        rows.append(["held-out evaluation", held.get("note", "none")])
    for cost in report["cost"]:
        rows.append([f"FLOPs per token target / draft (context {cost['context_tokens']}, head rows "
                     f"{cost['target_head_rows']} / {cost['draft_head_rows']})",
                     f"{cost['target_over_draft']:.2f}x ({cost['target_gflops_per_token']:.4g} / "
                     f"{cost['draft_gflops_per_token']:.4g} GFLOP)"])
    acc = report.get("acceptance")
    if acc and acc.get("prompts"):
        rows.append([f"greedy acceptance at gamma {acc['gamma']}",
                     f"{100 * acc['acceptance_rate']:.1f}% ({acc['accepted']}/{acc['proposed']}, "
                     f"{acc['tokens_per_round']:.2f} tokens/round, {acc['prompts']} prompts)"])
    print(tabulate(rows, headers=[f"draft {report['name']}", "value"], tablefmt="github"))
    print(f"saved to {report['path']} (report: distill_report.json); use it with --draft {report['draft_spec']}")


COMMANDS = {
    "run": (cmd_run, "evaluate one policy (perplexity, KV reduction, tokens/s)"),
    "generate": (cmd_generate, "speculative decoding with a policy verifying (SpecAttn as the paper means it)"),
    "compare": (cmd_compare, "run several policies on the same documents (Table 1)"),
    "bench": (cmd_bench, "benchmarks (bench topp: the top-p kernel on a GPU)"),
    "govreport": (cmd_govreport, "LongBench gov_report generation under each policy (ROUGE-L)"),
    "report": (cmd_report, "regenerate Table 1 from a results JSONL"),
    "policies": (cmd_policies, "list registered policies and their parameters"),
    "models": (cmd_models, "list model aliases and their cache state"),
    "fetch": (cmd_fetch, "pre-fetch a model alias"),
    "layermap": (cmd_layermap, "compute the SpecAttn target-to-draft layer map (and plot it)"),
    "distill": (cmd_distill, "train a small draft that matches a target (--draft distilled:NAME)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(f"sparsebench {__version__}: compare sparse-attention policies for LLM decoding\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<10} {text}")
        print("\nrun `sparsebench COMMAND --help` for a command's options")
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"sparsebench {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    try:
        if command is None:
            import difflib

            close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(f"unknown command {argv[0]!r}; {hint}commands: {', '.join(COMMANDS)}")
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return command[0](argv[1:])
    except UsageError as exc:
        print(f"sparsebench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sparsebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
