"""Does a draft with another tokenizer predict the target's block attention? (issue 8, part 2)

For each target (qwen2.5-coder-0.5b, gemma3-270m) with smollm2-135m as the cross-tokenizer draft: the
KL layer map computed on the draft's attention mapped onto the target's KV blocks through character
offsets (sparsebench.specattn.crosstok), against two references on the same rows: the target's default
self-draft (shared tokenizer, today's SpecAttn) and a uniform distribution over the causal blocks.
Reported per pair: the layer map and the mean KL(target || guide) along it (lower is better), also over
the target layers the self-draft does not copy (``mean_kl_unshared``).

    PYTHONPATH=$PWD python3 benchmarks/device/crosstok_layermap.py [--device cuda] [--docs 4] [--seq-len 512]

Writes $OUT/crosstok_layermap.json (or ./crosstok_layermap.json without $OUT). Needs the three model
aliases in the sparsebench model cache and the offline corpus (packaged samples suffice).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from sparsebench.data import load_corpus, select_documents
from sparsebench.models import build_self_draft, load_model
from sparsebench.models.registry import ALIASES
from sparsebench.selection import n_blocks_for
from sparsebench.specattn.calibrate import collect_block_attention
from sparsebench.specattn.crosstok import CrossTokenizerDraft, mapped_draft_block_attention
from sparsebench.specattn.layermap import align_layers, kl_matrix


def uniform_rows(n_tokens: int, rows: int, block_size: int) -> torch.Tensor:
    """``[rows, 1, N]``: uniform mass over the blocks each of the last ``rows`` positions can see."""
    n = n_blocks_for(n_tokens, block_size)
    out = torch.zeros(rows, 1, n)
    for r, t in enumerate(range(n_tokens - rows, n_tokens)):
        seen = n_blocks_for(t + 1, block_size)
        out[r, 0, :seen] = 1.0 / seen
    return out


def along_map(kl: torch.Tensor, unshared: list[int]) -> dict:
    """The DP layer map and KL along it; ``mean_kl_unshared`` averages only the target layers that the
    self-draft does not copy (on the copied ones its KL is 0 by construction, so the plain mean flatters it)."""
    m = align_layers(kl)
    per_layer = [float(kl[i, j]) for i, j in enumerate(m.target_to_draft)]
    return {"map": m.target_to_draft, "mean_kl": sum(per_layer) / len(per_layer),
            "mean_kl_unshared": sum(per_layer[i] for i in unshared) / max(1, len(unshared)),
            "per_layer_kl": per_layer}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dataset", default="wikitext-validation")
    ap.add_argument("--docs", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--targets", default="qwen2.5-coder-0.5b,gemma3-270m")
    ap.add_argument("--draft", default="smollm2-135m")
    args = ap.parse_args()
    out_dir = Path(os.environ.get("OUT", "."))
    draft = load_model(args.draft, device=args.device, progress=False)
    corpus = load_corpus(args.dataset, source="offline", log=lambda m: print(m, file=sys.stderr))
    results = []
    for alias in args.targets.split(","):
        t0 = time.time()
        target = load_model(alias, device=args.device, progress=False)
        self_spec = ALIASES[alias].default_self_draft
        self_draft = build_self_draft(target.model, self_spec)
        tgt_rows, cross_rows, self_rows, doc_ids, fed_hist = [], [], [], [], {}
        for doc in select_documents(corpus.documents, seed=0):
            sched = CrossTokenizerDraft(draft.tokenizer, target.tokenizer, doc.text[: args.seq_len * 8])
            if len(sched.target_ids) < args.seq_len:
                continue
            ids = torch.tensor([sched.target_ids[: args.seq_len]], device=args.device)
            tgt_rows.append(collect_block_attention(target.model, ids, args.block_size, args.rows))
            self_rows.append(collect_block_attention(self_draft, ids, args.block_size, args.rows))
            cross_rows.append(mapped_draft_block_attention(draft.model, sched, args.seq_len, args.block_size,
                                                           args.rows))
            for t in range(1, args.seq_len):
                k = len(sched.step_ids(t))
                fed_hist[k] = fed_hist.get(k, 0) + 1
            doc_ids.append(doc.id)
            if len(doc_ids) == args.docs:
                break

        def cat(per_doc: list[list[torch.Tensor]]) -> list[torch.Tensor]:
            return [torch.cat([d[i].float().cpu() for d in per_doc]) for i in range(len(per_doc[0]))]

        target_layers = cat(tgt_rows)
        copied = set(self_draft.draft_source_layers)
        unshared = [i for i in range(len(target_layers)) if i not in copied]
        uniform = torch.cat([uniform_rows(args.seq_len, args.rows, args.block_size)] * len(doc_ids))
        row = {
            "target": alias, "draft": args.draft, "self_draft": f"self:{self_spec}", "documents": doc_ids,
            "seq_len": args.seq_len, "rows": args.rows, "block_size": args.block_size,
            "draft_tokens_per_target_step": dict(sorted(fed_hist.items())),
            "cross_tokenizer": along_map(kl_matrix(target_layers, cat(cross_rows)), unshared),
            "self_draft_ref": along_map(kl_matrix(target_layers, cat(self_rows)), unshared),
            "uniform_mean_kl": float(kl_matrix(target_layers, [uniform]).mean()),
            "seconds": time.time() - t0,
        }
        print(json.dumps({k: v for k, v in row.items() if k not in ("documents",)}), flush=True)
        results.append(row)
        del target, self_draft
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "crosstok_layermap.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
