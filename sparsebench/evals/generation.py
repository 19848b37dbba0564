"""Greedy generation under a sparse-attention policy, and LongBench gov_report scored with ROUGE-L.

Why generation at all: perplexity (the teacher-forced engine) scores a policy on text it did not write;
a summary it writes itself shows whether attention errors compound once the model reads its own
output. The loop reuses the engine's machinery unchanged (:class:`~sparsebench.engine.TeacherForcedEngine`
builds and validates the router, the draft pairing and its capture), so the KV accounting and the
draft lockstep are the same code that produces the perplexity tables, and the two can be compared.

Reading order: :func:`generate` (the loop), :func:`govreport_prompt` (LongBench's prompt and middle
truncation), :func:`rouge_l`, :func:`evaluate_govreport` (one row per document).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsebench.data.loaders import Document
from sparsebench.engine import EngineConfig, TeacherForcedEngine, synchronize
from sparsebench.errors import DependencyError, UsageError
from sparsebench.evals.metrics import KVAccessSummary
from sparsebench.kernels.base import AttentionBackend
from sparsebench.policy import Policy
from sparsebench.specattn.capture import Draft

#: LongBench's gov_report prompt (``config/dataset2prompt.json`` of THUDM/LongBench), verbatim.
GOVREPORT_TEMPLATE = (
    "You are given a report by a government agency. Write a one-page summary of the report.\n\n"
    "Report:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:"
)

ROUGE_INSTALL = "pip install rouge-score"


@dataclass
class GenerationResult:
    """What one greedy generation produced and what its decode steps read."""

    ids: list[int]
    """Generated token ids, in order; ends with the stop id when one was produced."""
    text: str
    """``ids`` decoded with special tokens skipped (so a final end-of-sequence token adds nothing)."""
    prompt_tokens: int
    kv: KVAccessSummary
    """KV reads of the decode steps (the prefill is dense and not counted, as in the engine)."""
    decode_seconds: float
    """Wall time of the decode steps only (prefill excluded), device-synchronised at both ends."""
    decode_steps: int
    """Forward passes through the router: ``len(ids) - 1`` (the first token comes from the prefill)."""
    prefill_seconds: float
    stop_reason: str
    """``"stop_id"`` (a stop token was generated) or ``"max_new_tokens"``."""
    timing: dict[str, float] = field(default_factory=dict)
    """Host seconds per phase from the router's timer (``select``, ``attend``, ``draft``)."""

    @property
    def tokens_per_second(self) -> float:
        """Decode steps per second, the engine's definition; NaN when there was no decode step."""
        return self.decode_steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def default_stop_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's, plus a shipped ``generation_config.json``'s.

    Why not always the model's generation config: one synthesised from the architecture's defaults
    (``_from_model_config``, e.g. the tiny random models) names ids that mean something else in the
    tokenizer actually used (Llama's default eos 2 is byte 0x02 for the byte tokenizer). A shipped
    one is authoritative and may add end-of-turn ids that instruct models emit instead of eos.
    """
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    gen = getattr(model, "generation_config", None)
    if gen is not None and not getattr(gen, "_from_model_config", False):
        extra = gen.eos_token_id
        ids.update([extra] if isinstance(extra, int) else list(extra or []))
    return ids


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt_ids: list[int],
    policy: Policy,
    backend: AttentionBackend,
    config: EngineConfig,
    *,
    max_new_tokens: int,
    draft: Draft | None = None,
    stop_ids: set[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> GenerationResult:
    """Greedy decoding of one prompt with ``policy`` choosing each sparse layer's KV blocks.

    The whole prompt is prefilled densely in one forward pass (``config.prefill_frac`` does not apply:
    the prompt is given, not a fraction of a document); its last logits give the first new token, so
    that token is dense, exactly as the engine's prefill prediction is. Every later token comes from
    one decode step through the router (argmax of the step's logits), and the draft, when the policy
    uses one, is fed the same tokens one step ahead of the target, as in the teacher-forced engine.

    ``stop_ids``: ``None`` uses :func:`default_stop_ids`; an empty set never stops early.
    ``progress`` is called with 1 after every decode step.
    """
    if not prompt_ids:
        raise UsageError("generation needs a non-empty prompt")
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    max_positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    # The last generated token is never fed back, so the cache peaks at prompt + max_new_tokens - 1.
    if max_positions and len(prompt_ids) + max_new_tokens - 1 > max_positions:
        raise UsageError(f"a {len(prompt_ids)}-token prompt plus {max_new_tokens} new tokens exceeds the model's "
                         f"{max_positions} positions; shorten the prompt or generate fewer tokens")
    stop = default_stop_ids(model, tokenizer) if stop_ids is None else set(stop_ids)

    # The engine validates the configuration against the model (dense layers, draft required, layer-map
    # length) and its decode session runs prefill and steps exactly as teacher-forced evaluation does.
    engine = TeacherForcedEngine(model, policy, backend, config, draft=draft)
    router = engine.router
    device = next(model.parameters()).device
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    generated: list[int] = []
    stop_reason = "max_new_tokens"
    with engine.session() as decode:
        synchronize(device)
        t0 = time.perf_counter()
        token = decode.prefill(prompt).argmax(dim=-1, keepdim=True)  # [1, 1]; the prompt is dense
        synchronize(device)
        prefill_seconds = time.perf_counter() - t0
        start = time.perf_counter()
        while True:
            token_id = int(token)  # one host sync per token: the stop check needs the value
            generated.append(token_id)
            if token_id in stop:
                stop_reason = "stop_id"
                break
            if len(generated) >= max_new_tokens:
                break
            token = decode.step(token).argmax(dim=-1, keepdim=True)
            if progress is not None:
                progress(1)
        synchronize(device)
        decode_seconds = time.perf_counter() - start
    return GenerationResult(
        ids=generated,
        text=tokenizer.decode(generated, skip_special_tokens=True),
        prompt_tokens=len(prompt_ids),
        kv=router.meter.summaries(1)[0],
        decode_seconds=decode_seconds,
        decode_steps=len(generated) - 1,
        prefill_seconds=prefill_seconds,
        stop_reason=stop_reason,
        timing=dict(router.timer.seconds),
    )


@dataclass(frozen=True)
class Prompt:
    """Prompt token ids within a budget, and how long the prompt was before truncation."""

    ids: list[int]
    full_tokens: int

    @property
    def dropped_tokens(self) -> int:
        """Tokens cut from the middle of the report (0 when it fit)."""
        return self.full_tokens - len(self.ids)


def truncate_middle(ids: list[int], max_tokens: int) -> list[int]:
    """Keep the first ``max_tokens // 2`` and the last ``max_tokens - max_tokens // 2`` ids.

    LongBench's rule (``pred.py``): a long report's opening and its conclusions both carry the summary,
    its middle least. LongBench keeps ``int(max_length / 2)`` on each side, one token fewer on an odd
    budget; we fill the budget.
    """
    if len(ids) <= max_tokens:
        return list(ids)
    head = max_tokens // 2
    tail = max_tokens - head
    return list(ids[:head]) + list(ids[len(ids) - tail :])


def govreport_prompt(document_text: str, tokenizer: Any, max_prompt_tokens: int, *,
                     chat_template: bool = False) -> Prompt:
    """LongBench's gov_report prompt for ``document_text`` in at most ``max_prompt_tokens`` tokens.

    As in LongBench, the whole formatted prompt is tokenized and, when over budget, its middle is cut
    (:func:`truncate_middle`): the instruction sits at both ends and the cut falls inside the report.
    Unlike LongBench we keep the truncated ids rather than decoding and re-tokenizing them, so the
    budget holds exactly. The plain prompt follows the tokenizer's own special-token convention (Gemma
    prepends ``<bos>``). With ``chat_template`` the prompt becomes one user turn of the tokenizer's chat
    template with the generation prompt; the template's tokens are kept whole and the budget left for
    the prompt is cut, which is LongBench's order (truncate, then ``build_chat``) with the wrapper counted.
    """
    text = GOVREPORT_TEMPLATE.format(context=document_text)
    if chat_template:
        head, tail = _chat_wrapper_ids(tokenizer)
        body = _encode(tokenizer, text, special=False)  # the template supplies its own special tokens
    else:
        head, tail = [], []
        body = _encode(tokenizer, text, special=True)
    budget = max_prompt_tokens - len(head) - len(tail)
    if budget < 2:
        raise UsageError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for the report "
                         f"(the chat template alone takes {len(head) + len(tail)} tokens)")
    full = len(head) + len(body) + len(tail)
    return Prompt(head + truncate_middle(body, budget) + tail, full)


_SENTINEL = "SPARSEBENCHPROMPTSENTINEL"


def _chat_wrapper_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids of the chat template before and after a single user message."""
    if not hasattr(tokenizer, "apply_chat_template") or getattr(tokenizer, "chat_template", None) is None:
        raise UsageError(f"{type(tokenizer).__name__} has no chat template; drop chat_template (the plain "
                         "LongBench prompt is the default) or use an instruct model's tokenizer")
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False,
                                             add_generation_prompt=True)
    if not isinstance(rendered, str) or rendered.count(_SENTINEL) != 1:
        raise UsageError("the tokenizer's chat template does not place a user message verbatim; "
                         "use the plain prompt")
    before, after = rendered.split(_SENTINEL)
    return _encode(tokenizer, before, special=False), _encode(tokenizer, after, special=False)


def _encode(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    if not text:
        return []
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=special)]


@functools.lru_cache(maxsize=2)
def _rouge_scorer(use_stemmer: bool) -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise DependencyError(f"ROUGE-L needs the rouge-score package: {ROUGE_INSTALL}") from exc
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l(prediction: str, reference: str, *, use_stemmer: bool = False) -> float:
    """ROUGE-L F-measure of ``prediction`` against ``reference`` (``rouge-score``'s ``rougeL``).

    No stemming by default: LongBench scores gov_report without it. ``rouge-score``'s tokenizer
    lowercases and keeps only ``[a-z0-9]`` runs, which suits gov_report's English, and an empty
    prediction scores 0. LongBench uses the older ``rouge`` package, whose ROUGE-L differs in
    tokenization, so compare numbers from this function with each other, not with LongBench's tables.
    """
    score = _rouge_scorer(use_stemmer).score(reference, prediction)["rougeL"]
    return float(score.fmeasure)


def references_of(doc: Document) -> list[str]:
    """Reference summaries of a gov_report document: offline ``summary`` or LongBench ``answers``."""
    refs: list[Any] = []
    summary = doc.meta.get("summary")
    if summary is not None:
        refs.append(summary)
    answers = doc.meta.get("answers")
    if isinstance(answers, str):
        refs.append(answers)
    elif isinstance(answers, list | tuple):
        refs.extend(answers)
    return [r for r in refs if isinstance(r, str) and r.strip()]


def evaluate_govreport(
    model_loaded: Any,
    policy: Policy,
    backend: AttentionBackend,
    config: EngineConfig,
    documents: Iterable[Document],
    *,
    max_prompt_tokens: int,
    max_new_tokens: int,
    draft: Draft | None = None,
    progress: bool = True,
    chat_template: bool = False,
    stop_ids: set[int] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Summarise each document greedily under ``policy`` and score it with ROUGE-L.

    ``model_loaded`` is a :class:`~sparsebench.models.LoadedModel` (its ``model`` and ``tokenizer`` are
    used). Documents without a reference summary (some offline records have ``summary: null``) are
    skipped and their count is logged. With several references (LongBench ``answers``) a prediction
    scores its best match, as in LongBench. Returns one row per scored document.
    """
    from tqdm.auto import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr))
    _rouge_scorer(False)  # fail on a missing rouge-score before any slow generation
    model, tokenizer = model_loaded.model, model_loaded.tokenizer
    usable: list[tuple[Document, list[str]]] = []
    skipped = 0
    for doc in documents:
        refs = references_of(doc)
        if refs:
            usable.append((doc, refs))
        else:
            skipped += 1
    if skipped:
        log(f"sparsebench: skipped {skipped} gov_report document(s) with no reference summary")

    rows: list[dict[str, Any]] = []
    bar = tqdm(usable, unit="doc", desc=policy.label(), disable=not progress, file=sys.stderr)
    for doc, refs in bar:
        prompt = govreport_prompt(doc.text, tokenizer, max_prompt_tokens, chat_template=chat_template)
        out = generate(model, tokenizer, prompt.ids, policy, backend, config, max_new_tokens=max_new_tokens,
                       draft=draft, stop_ids=stop_ids)
        scores = [rouge_l(out.text, ref) for ref in refs]
        best = max(range(len(refs)), key=scores.__getitem__)
        rows.append({
            "id": doc.id,
            "title": doc.title,
            "policy": policy.name,
            "policy_label": policy.label(),
            "policy_params": policy.params(),
            "rouge_l": scores[best],
            "generated": out.text,
            "reference": refs[best],
            "prompt_tokens": out.prompt_tokens,
            "prompt_tokens_dropped": prompt.dropped_tokens,
            "generated_tokens": len(out.ids),
            "stop_reason": out.stop_reason,
            "kv_reduction_sparse": out.kv.reduction_sparse,
            "kv_reduction_all": out.kv.reduction_all,
            "kv_read_sparse": out.kv.read_sparse,
            "kv_dense_sparse": out.kv.dense_sparse,
            "kv_read_all": out.kv.read_all,
            "kv_dense_all": out.kv.dense_all,
            "decode_steps": out.decode_steps,
            "decode_seconds": out.decode_seconds,
            "prefill_seconds": out.prefill_seconds,
            "tokens_per_s": out.tokens_per_second,
        })
    bar.close()
    return rows
