"""``sparsebench generate``: load the pair, build the prompt(s), run speculative decoding, print and store.

Two forms. One prompt (``--prompt``, ``--prompt-file``, or the first ``--context-tokens`` tokens of
document ``--doc-index`` of ``--dataset``) prints the generated text and its metrics. ``--eval`` runs the
same over ``--docs`` documents of ``--dataset`` (each cut to ``--context-tokens`` tokens, chosen as
``sparsebench run`` chooses them for the same ``--seed``) and prints one row per document plus the
aggregate. Either form appends one JSON row per generation to ``--out``.

Model, backend and draft come from :func:`sparsebench.runner.prepare`, the same code ``run`` uses, so a
SpecAttn generation uses the same cached layer map as a SpecAttn perplexity run. A policy that does not
read the draft's attention (dense) still needs a draft to propose tokens; it is loaded here, without a
layer map.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tabulate import tabulate

from sparsebench.config import RunConfig
from sparsebench.data import load_corpus, select_documents, tokenize_documents
from sparsebench.errors import UsageError
from sparsebench.evals.results import append_row, environment_info, now_iso
from sparsebench.specattn.crosstok import CrossTokenizerDraftModel
from sparsebench.specdec.crosstok import CrossTokenizerSpeculativeDecoder
from sparsebench.specdec.decoder import SpeculationConfig, SpeculativeDecoder, check_length


@dataclass(frozen=True)
class GenerateRequest:
    """What to generate, beyond the model/policy configuration (a :class:`RunConfig`)."""

    speculation: SpeculationConfig
    max_new_tokens: int = 64
    prompt: str | None = None
    """Literal prompt text (``--prompt``, or the contents of ``--prompt-file``); None: a dataset document."""
    doc_index: int = 0
    context_tokens: int = 512
    evaluate: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.context_tokens < 1:
            raise UsageError(f"--context-tokens must be >= 1, got {self.context_tokens}")
        if self.doc_index < 0:
            raise UsageError(f"--doc-index must be >= 0, got {self.doc_index}")
        if self.evaluate and self.prompt is not None:
            raise UsageError("--eval runs over dataset documents; drop --prompt/--prompt-file (or drop --eval)")


def read_prompt_file(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--prompt-file {path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise UsageError(f"--prompt-file {path!r} is empty")
    return text


def build_decoder(cfg: RunConfig, speculation: SpeculationConfig, *, log: Callable[[str], None],
                  progress: bool) -> tuple[SpeculativeDecoder, Any, dict[str, Any]]:
    """The decoder for ``cfg``, the loaded target (``LoadedModel``) and a description of the draft."""
    from sparsebench.kernels.torch_backend import TorchBackend
    from sparsebench.plugins import make_policy
    from sparsebench.runner import prepare
    from sparsebench.specattn.drafts import default_draft_spec, load_draft_model

    needs_map = make_policy(cfg.policy, cfg.policy_params).requires.draft_attention
    # A policy without draft attention would have prepare() note that --draft is ignored; here it is not.
    prep = prepare(cfg if needs_map else dataclasses.replace(cfg, draft=None), log=log, progress=progress,
                   positions=0)
    if needs_map:
        draft, draft_info = prep.draft, dict(prep.draft_info or {})
    else:
        spec = cfg.draft or default_draft_spec(cfg.model)
        loaded_draft = load_draft_model(spec, prep.loaded, dtype=prep.dtype, device=str(prep.device),
                                        progress=progress)
        draft = loaded_draft.as_draft([], spec, prep.loaded.tokenizer)
        draft_info = {"name": spec, "description": loaded_draft.description, "identity": loaded_draft.identity}
        log(f"sparsebench: draft = {loaded_draft.description}")
    backend = prep.backend
    if not backend.capabilities.multi_row_queries and cfg.backend == "auto":
        log(f"sparsebench: backend {backend.name} cannot verify several query rows per sequence; using torch")
        backend = TorchBackend()
    decoder_class = (CrossTokenizerSpeculativeDecoder if isinstance(draft, CrossTokenizerDraftModel)
                     else SpeculativeDecoder)
    decoder = decoder_class(prep.loaded.model, draft, prep.policy, backend, prep.engine_cfg, speculation)
    return decoder, prep.loaded, draft_info


def _prompts(cfg: RunConfig, request: GenerateRequest, tokenizer: Any,
             log: Callable[[str], None]) -> tuple[list[tuple[dict[str, Any], list[int]]], str]:
    """``(description, token ids)`` per prompt, and where they came from."""
    if request.prompt is not None:
        ids = [int(i) for i in tokenizer.encode(request.prompt)]
        if not ids:
            raise UsageError("the prompt tokenizes to nothing; give some text")
        return [({"source": "prompt"}, ids)], "the given prompt"
    corpus = load_corpus(cfg.dataset, data_dir=cfg.data_dir, source=cfg.data_source, log=log)
    ordered = select_documents(corpus.documents, cfg.seed)
    if request.evaluate:
        docs, too_short = tokenize_documents(ordered, tokenizer, request.context_tokens, cfg.docs)
        if not docs:
            raise UsageError(f"no document of {cfg.dataset!r} has {request.context_tokens} tokens; "
                             "lower --context-tokens")
        if len(docs) < cfg.docs:
            log(f"sparsebench: only {len(docs)} document(s) have {request.context_tokens} tokens "
                f"({too_short} too short); evaluating {len(docs)}")
    else:
        if request.doc_index >= len(ordered):
            raise UsageError(f"--doc-index {request.doc_index} is past the {len(ordered)} document(s) of "
                             f"{cfg.dataset!r}")
        docs, _ = tokenize_documents(ordered[request.doc_index : request.doc_index + 1], tokenizer,
                                     request.context_tokens, 1)
        if not docs:
            raise UsageError(f"document {request.doc_index} of {cfg.dataset!r} has fewer than "
                             f"{request.context_tokens} tokens; lower --context-tokens or pick another --doc-index")
    return [({"source": "dataset", "id": d.id, "title": d.title}, ids) for d, ids in docs], corpus.origin


def run_generate(cfg: RunConfig, request: GenerateRequest, *, log: Callable[[str], None] | None = None,
                 progress: bool = True) -> list[dict[str, Any]]:
    """Generate for each prompt of ``request``; print text (one prompt) or a table (``--eval``); return rows."""
    from sparsebench.config import resolve_device
    from sparsebench.plugins import make_policy
    from sparsebench.runner import _load_model_once

    log = log or (lambda msg: print(msg, file=sys.stderr))
    make_policy(cfg.policy, cfg.policy_params)  # a bad policy fails before anything loads
    # The target first (prepare() reuses it), so that a prompt too long fails before the draft and its
    # layer map are built; the decoder checks again with the draft's positions.
    target = _load_model_once(cfg.model, cfg.torch_dtype(), str(resolve_device(cfg.device)), progress)
    prompts, origin = _prompts(cfg, request, target.tokenizer, log)
    for _, ids in prompts:
        check_length(len(ids), request.max_new_tokens, target.max_positions)
    decoder, loaded, draft_info = build_decoder(cfg, request.speculation, log=log, progress=progress)
    for _, ids in prompts:  # every length error before the first (slow) generation
        decoder.check_length(len(ids), request.max_new_tokens)
    spec = request.speculation
    mode = "sampling" if spec.sampling else "greedy"
    log(f"sparsebench: speculative decoding ({mode}, gamma {spec.gamma}) of {decoder.policy.label()} on {cfg.model} "
        f"| {len(prompts)} prompt(s) from {origin} | backend {decoder.backend.name} | {decoder.device}")
    env = environment_info(decoder.device)
    rows = []
    for prompt_info, ids in prompts:
        started = now_iso()
        result = decoder.generate(ids, max_new_tokens=request.max_new_tokens, tokenizer=loaded.tokenizer)
        row = {
            "mode": "eval" if request.evaluate else "generate",
            "policy": decoder.policy.name,
            "policy_params": decoder.policy.params(),
            "policy_label": decoder.policy.label(),
            "model": {"name": cfg.model, **loaded.identity},
            "draft": draft_info,
            "speculation": dataclasses.asdict(spec),
            "config": {"max_new_tokens": request.max_new_tokens, "context_tokens": request.context_tokens,
                       "dataset": None if request.prompt is not None else cfg.dataset,
                       "block_size": cfg.block_size, "dense_layers": cfg.dense_layers, "device": str(decoder.device),
                       "backend": decoder.backend.name},
            "prompt": prompt_info | {"tokens": len(ids)},
            "text": result.text,
            "ids": result.ids,
            "metrics": result.metrics() | ({"draft_proposed_tokens": decoder.draft_proposed}
                                           if isinstance(decoder, CrossTokenizerSpeculativeDecoder) else {}),
            "environment": env,
            "started": started,
            "finished": now_iso(),
        }
        rows.append(row)
        if cfg.out:
            append_row(cfg.out, row)
    if request.evaluate:
        print(eval_table(rows))
    else:
        print(rows[0]["text"])
        print()
        print(eval_table(rows))
    print(METRICS_NOTE)
    return rows


METRICS_NOTE = (
    "acceptance = drafted tokens accepted / proposed; accepted/round = drafted tokens accepted per verification; "
    "tokens/round adds the target's own token (1.0 = no speedup from speculation); tokens/s excludes the prefill; "
    "KV reduction = 1 - KV tokens the target's sparse layers read during verification (each block once for all "
    "rows) / the whole cache; time: draft, selection (policy), target attention (sparse layers), rest."
)


def aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over generations: ratios of sums (so long generations weigh more), timing summed."""
    m = [r["metrics"] for r in rows]
    proposed, accepted, rounds = (sum(x[k] for x in m) for k in ("proposed", "accepted", "rounds"))
    read, dense = sum(x["kv_read_sparse"] for x in m), sum(x["kv_dense_sparse"] for x in m)
    tokens = sum(x["generated_tokens"] - 1 for x in m)
    seconds = sum(x["decode_seconds"] for x in m)
    timing: dict[str, float] = {}
    for x in m:
        for k, v in x["timing_seconds"].items():
            timing[k] = timing.get(k, 0.0) + v
    return {
        "generated_tokens": sum(x["generated_tokens"] for x in m), "rounds": rounds, "proposed": proposed,
        "accepted": accepted,
        "acceptance_rate": accepted / proposed if proposed else float("nan"),
        "mean_accepted": accepted / rounds if rounds else float("nan"),
        "tokens_per_round": (accepted + rounds) / rounds if rounds else float("nan"),
        "tokens_per_s": tokens / seconds if seconds else float("nan"),
        "kv_reduction_sparse": 1 - read / dense if dense else 0.0,
        "timing_seconds": timing,
    }


def _table_row(name: str, m: dict[str, Any]) -> list[Any]:
    t = m["timing_seconds"]
    total = t.get("total", 0.0) or float("nan")
    phases = ("draft", "selection", "target_attention", "rest")
    split = " / ".join(f"{100 * t.get(k, 0.0) / total:.0f}%" for k in phases)
    return [name, m["generated_tokens"], m["rounds"], f"{100 * m['acceptance_rate']:.1f}%", f"{m['mean_accepted']:.2f}",
            f"{m['tokens_per_round']:.2f}", f"{m['tokens_per_s']:.1f}", f"{100 * m['kv_reduction_sparse']:.1f}%",
            split]


def eval_table(rows: list[dict[str, Any]]) -> str:
    """One line per generation (and an ALL line for several), plus how time was measured."""
    body = [_table_row(r["prompt"].get("id", r["prompt"]["source"]), r["metrics"]) for r in rows]
    if len(rows) > 1:
        body.append(_table_row("ALL", aggregate(rows)))
    method = rows[0]["metrics"]["timing_method"] if rows else "wall"
    headers = ["prompt", "new tokens", "rounds", "acceptance", "accepted/round", "tokens/round", "tokens/s",
               "KV reduction (sparse layers)", f"time draft/select/attn/rest ({method})"]
    return tabulate(body, headers=headers, tablefmt="github")

