"""One evaluation run: load, select documents, run the engine per document, store a row per document.

The CLI's ``run`` is a thin wrapper around :func:`run_evaluation`; the comparison suite calls it once
per policy so every policy sees the same documents, tokens and engine settings.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sparsebench.config import RunConfig, resolve_device
from sparsebench.data import load_corpus, select_documents, tokenize_documents
from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.errors import UsageError
from sparsebench.evals.results import append_row, environment_info, now_iso, read_rows
from sparsebench.kernels import resolve_backend
from sparsebench.plugins import make_policy


@dataclass
class RunResult:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def aggregate(self) -> dict[str, float]:
        """Token-weighted perplexity and KV reduction over all documents of the run."""
        tokens = sum(r["metrics"]["tokens"] for r in self.rows)
        nll = sum(r["metrics"]["nll_sum"] for r in self.rows)
        read_s = sum(r["metrics"]["kv_read_sparse"] for r in self.rows)
        dense_s = sum(r["metrics"]["kv_dense_sparse"] for r in self.rows)
        read_a = sum(r["metrics"]["kv_read_all"] for r in self.rows)
        dense_a = sum(r["metrics"]["kv_dense_all"] for r in self.rows)
        secs = sum(r["metrics"]["decode_seconds"] for r in self.rows)
        return {
            "tokens": tokens,
            "perplexity": math.exp(nll / tokens) if tokens else float("nan"),
            "kv_reduction_sparse": 1 - read_s / dense_s if dense_s else 0.0,
            "kv_reduction_all": 1 - read_a / dense_a if dense_a else 0.0,
            "tokens_per_s": tokens / secs if secs else float("nan"),
        }


@dataclass
class Prepared:
    """Everything a run needs before it sees data: validated policy, model, backend, draft."""

    policy: Any
    engine_cfg: EngineConfig
    device: torch.device
    dtype: torch.dtype
    loaded: Any
    backend: Any
    draft: Any = None
    draft_info: dict[str, Any] | None = None


def prepare(cfg: RunConfig, *, log: Callable[[str], None], progress: bool, positions: int) -> Prepared:
    """Validate the policy first (before any slow loading), then load the model, backend and draft.

    ``positions`` is the longest sequence the run will feed the model (checked against its maximum).
    """
    policy = make_policy(cfg.policy, cfg.policy_params)
    engine_cfg = EngineConfig(cfg.block_size, cfg.dense_layers, cfg.prefill_frac)
    device = resolve_device(cfg.device)
    dtype = cfg.torch_dtype()
    torch.manual_seed(cfg.seed)
    loaded = _load_model_once(cfg.model, dtype, str(device), progress)
    if positions > loaded.max_positions:
        raise UsageError(f"--seq-len {positions} exceeds {cfg.model}'s maximum of {loaded.max_positions} "
                         f"positions; use --seq-len {loaded.max_positions} or less")
    text_cfg = loaded.model.config.get_text_config()
    head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
    backend = resolve_backend(cfg.backend, device=device, dtype=dtype, head_dim=head_dim,
                              softcap=getattr(text_cfg, "attn_logit_softcapping", None) is not None)
    prepared = Prepared(policy, engine_cfg, device, dtype, loaded, backend)
    if policy.requires.draft_attention:
        from sparsebench.specattn.drafts import resolve_draft

        draft, layer_map = resolve_draft(cfg.draft, loaded, dtype=dtype, device=device, block_size=cfg.block_size,
                                         data_dir=cfg.data_dir, data_source=cfg.data_source, progress=progress,
                                         log=log)
        prepared.draft = draft
        prepared.draft_info = {"name": draft.name, "description": draft.description, "layer_map": draft.layer_map,
                               "layer_map_key": layer_map.meta.get("key"), "identity": layer_map.meta.get("draft")}
    elif cfg.draft is not None:
        log(f"sparsebench: note: policy {policy.name!r} does not use a draft; --draft is ignored")
    return prepared


def run_evaluation(cfg: RunConfig, *, log: Callable[[str], None] | None = None,
                   progress: bool = True) -> RunResult:
    log = log or (lambda msg: print(msg, file=sys.stderr))
    prep = prepare(cfg, log=log, progress=progress, positions=cfg.seq_len)
    policy, engine_cfg, device, dtype, loaded, backend = (prep.policy, prep.engine_cfg, prep.device, prep.dtype,
                                                          prep.loaded, prep.backend)
    draft_info = prep.draft_info
    engine = TeacherForcedEngine(loaded.model, policy, backend, engine_cfg, draft=prep.draft)

    corpus = load_corpus(cfg.dataset, data_dir=cfg.data_dir, source=cfg.data_source, log=log)
    docs, too_short = tokenize_documents(select_documents(corpus.documents, cfg.seed), loaded.tokenizer,
                                         cfg.seq_len, cfg.docs)
    if not docs:
        raise UsageError(f"no document of {cfg.dataset!r} has {cfg.seq_len} tokens; lower --seq-len")
    if len(docs) < cfg.docs:
        log(f"sparsebench: only {len(docs)} of {len(corpus.documents)} documents have {cfg.seq_len} tokens "
            f"({too_short} too short); running {len(docs)}")
    log(f"sparsebench: {policy.label()} on {cfg.model} | {len(docs)} doc(s) of {corpus.origin} | "
        f"{cfg.seq_len} tokens, {engine_cfg.prefill_len(cfg.seq_len)} prefilled | backend {backend.name} | "
        f"{device} {str(dtype).removeprefix('torch.')}")

    env = environment_info(device)
    stored = stored_rows(cfg)
    result = RunResult([stored[doc.id] for doc, _ in docs if doc.id in stored])
    if result.rows:
        log(f"sparsebench: resuming: {len(result.rows)} of {len(docs)} document(s) already in {cfg.out}")
    docs = [(doc, ids) for doc, ids in docs if doc.id not in stored]
    steps = cfg.seq_len - engine_cfg.prefill_len(cfg.seq_len) - 1
    batch_size = cfg.batch_size
    if engine.cross_tokenizer and batch_size > 1:
        log("sparsebench: note: the draft has its own tokenizer, so documents run one at a time (--batch-size 1)")
        batch_size = 1
    bar = tqdm(total=steps * len(docs), unit="tok", desc=policy.label(), disable=not progress, file=sys.stderr)
    for first in range(0, len(docs), batch_size):
        batch = docs[first : first + batch_size]
        started = now_iso()
        t0 = time.perf_counter()
        out = engine.evaluate(torch.tensor([ids for _, ids in batch], device=device), progress=bar.update,
                              schedule=_schedule(prep.draft, batch, cfg.seq_len))
        wall = time.perf_counter() - t0
        for i, (doc, _) in enumerate(batch):
            kv = out.kv_rows[i]
            row = {
                "policy": policy.name,
                "policy_params": policy.params(),
                "policy_label": policy.label(),
                "policy_source": _policy_source(policy.name),
                "config": cfg.as_dict(),
                "resolved": {"dtype": str(dtype).removeprefix("torch."), "backend": backend.name,
                             "device": str(device)},
                "model": {"name": cfg.model, **loaded.identity},
                "draft": draft_info,
                "dataset": {"name": cfg.dataset, "origin": corpus.origin},
                "document": {"id": doc.id, "title": doc.title},
                "seed": cfg.seed,
                "metrics": {
                    "tokens": out.nll.shape[1],
                    "prefill_tokens": out.prefill_tokens,
                    "nll_sum": float(out.nll[i].sum()),
                    "perplexity": math.exp(float(out.nll[i].mean())),
                    "kv_reduction_sparse": kv.reduction_sparse,
                    "kv_reduction_all": kv.reduction_all,
                    "kv_read_sparse": kv.read_sparse,
                    "kv_dense_sparse": kv.dense_sparse,
                    "kv_read_all": kv.read_all,
                    "kv_dense_all": kv.dense_all,
                    "batch_size": len(batch),
                    "tokens_per_s": out.tokens_per_second,
                    "decode_seconds": out.decode_seconds / len(batch),
                    "timing_host_seconds": out.timing,
                    "per_layer": kv.layer_rows(),
                    "nll_trace": [round(x, 6) for x in out.nll[i].tolist()],
                },
                "environment": env,
                "started": started,
                "finished": now_iso(),
                "wall_seconds": wall / len(batch),
            }
            result.rows.append(row)
            if cfg.out:
                append_row(cfg.out, row)
    bar.close()
    return result


def _schedule(draft: Any, batch: list[tuple[Any, list[int]]], seq_len: int) -> Any:
    """How a cross-tokenizer draft reads the batch's one document (None for any other draft)."""
    from sparsebench.specattn.crosstok import CrossTokenizerDraftModel, check_schedule

    if not isinstance(draft, CrossTokenizerDraftModel):
        return None
    (doc, ids), = batch
    schedule = draft.schedule(doc.text, seq_len)
    check_schedule(schedule, ids, f"document {doc.id}")
    return schedule


def stored_rows(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Rows already in ``cfg.out`` from a run with exactly this configuration (policy defaults filled in),
    by document id. A rerun skips these documents, so an interrupted run loses and duplicates nothing."""
    if not cfg.out or not Path(cfg.out).exists():
        return {}
    policy = make_policy(cfg.policy, cfg.policy_params)
    want = cfg.as_dict() | {"policy_params": policy.params()}
    ignored = {"out", "docs", "batch_size"} | (set() if policy.requires.draft_attention else {"draft"})
    keys = [k for k in want if k not in ignored]
    found = {}
    for row in read_rows(cfg.out):
        got = {k: row.get("policy_params") if k == "policy_params" else row.get("config", {}).get(k) for k in keys}
        if all(got[k] == want[k] for k in keys):
            found[row["document"]["id"]] = row
    return found


_LAST_MODEL: dict[tuple[str, torch.dtype, str], Any] = {}


def _load_model_once(spec: str, dtype: torch.dtype, device: str, progress: bool) -> Any:
    """Load ``spec``, reusing the last model loaded in this process (a comparison runs many policies on one
    model); only one model is kept, so memory does not grow."""
    from sparsebench.models import load_model

    key = (spec, dtype, device)
    if key not in _LAST_MODEL:
        _LAST_MODEL.clear()
        _LAST_MODEL[key] = load_model(spec, dtype=dtype, device=device, progress=progress)
    return _LAST_MODEL[key]


def _policy_source(name: str) -> str:
    from sparsebench.plugins import registry

    return registry().sources.get(f"policy:{name}", "unknown")
