"""LongBench gov_report under each policy: generate summaries, score ROUGE-L, count KV reads.

The hub's LongBench ``gov_report`` test set is used when reachable; otherwise the offline GAO/CRS
reports with their own summaries (the same two kinds of documents; see ``shared/data/SOURCES.md``).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from collections.abc import Callable
from typing import Any

from tabulate import tabulate

from sparsebench.compare import method_label
from sparsebench.config import RunConfig
from sparsebench.data import load_corpus, select_documents
from sparsebench.evals.generation import evaluate_govreport
from sparsebench.evals.results import append_row, environment_info, now_iso
from sparsebench.runner import prepare


def run_govreport(base: RunConfig, specs: list[tuple[str, dict[str, Any]]], *, max_prompt_tokens: int,
                  max_new_tokens: int, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows per policy (one per document), the same documents and prompts for every policy."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    corpus = load_corpus(base.dataset, data_dir=base.data_dir, source=base.data_source, log=log)
    with_refs = [d for d in select_documents(corpus.documents, base.seed)
                 if d.meta.get("summary") or d.meta.get("answers")][: base.docs]
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for name, params in specs:
        cfg = dataclasses.replace(base, policy=name, policy_params=params)
        prep = prepare(cfg, log=log, progress=progress, positions=max_prompt_tokens + max_new_tokens)
        rows = evaluate_govreport(prep.loaded, prep.policy, prep.backend, prep.engine_cfg, with_refs,
                                  max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
                                  draft=prep.draft, progress=progress, log=log)
        env = environment_info(prep.device)
        for row in rows:
            row.update(task="govreport", config=cfg.as_dict(), model={"name": cfg.model, **prep.loaded.identity},
                       draft=prep.draft_info, dataset={"name": cfg.dataset, "origin": corpus.origin},
                       max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens, environment=env,
                       finished=now_iso())
            if cfg.out:
                append_row(cfg.out, row)
        out.append((method_label({"policy": name, "config": {"policy_params": params}}), rows))
    return out


def govreport_table(results: list[tuple[str, list[dict[str, Any]]]], tablefmt: str = "github") -> str:
    rows = []
    for label, docs in results:
        if not docs:
            continue
        read = sum(d["kv_read_sparse"] for d in docs)
        dense = sum(d["kv_dense_sparse"] for d in docs)
        rows.append([label, len(docs), f"{statistics.mean(d['rouge_l'] for d in docs):.4f}",
                     f"{100 * (1 - read / dense) if dense else 0.0:.1f}%",
                     f"{statistics.mean(d['generated_tokens'] for d in docs):.0f}",
                     f"{statistics.mean(d['tokens_per_s'] for d in docs):.1f}"])
    return tabulate(rows, headers=["Method", "docs", "ROUGE-L (F)", "KV Reduction (sparse layers)",
                                   "tokens generated", "tokens/s"], tablefmt=tablefmt, disable_numparse=True)
