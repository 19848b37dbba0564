"""The teacher-forced decode loop: prefill densely, then one token at a time through the policy.

Reading order: :class:`EngineConfig` (the knobs), :class:`SparseAttentionRouter` (what happens in one
layer of one step: summaries -> policy -> backend -> observers) and :meth:`TeacherForcedEngine.evaluate`
(the loop). The model keeps its own KV cache; we only route its attention. The router also serves
speculative verification (several query rows at once, :mod:`sparsebench.specdec`).
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from sparsebench.errors import UsageError
from sparsebench.evals.metrics import DENSE_LAYER, SLIDING, SPARSE, KVAccessMeter, KVAccessSummary, StepTimer
from sparsebench.hf_attention import attached, cache_kwarg, use_router
from sparsebench.kernels.base import AttentionBackend
from sparsebench.kernels.compact import CompactSelection
from sparsebench.kernels.mass import block_attention_mass
from sparsebench.kvcache import BlockSummaryStore
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection, n_blocks_for
from sparsebench.specattn.capture import Draft, DraftAttentionCapture
from sparsebench.specattn.crosstok import CrossTokenizerCapture, CrossTokenizerDraft, CrossTokenizerDraftModel


@dataclass(frozen=True)
class EngineConfig:
    """How the loop runs. Defaults follow the SpecAttn paper (16-token blocks, 10% dense prefill)."""

    block_size: int = 16
    dense_layers: int = 2
    """The first ``dense_layers`` layers always attend densely (the policy is not asked)."""
    prefill_frac: float = 0.1

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise UsageError(f"--block-size must be >= 1, got {self.block_size}; the paper uses 16")
        if self.dense_layers < 0:
            raise UsageError(f"--dense-layers must be >= 0, got {self.dense_layers}")
        if not 0.0 < self.prefill_frac < 1.0:
            raise UsageError(f"--prefill-frac must be in (0, 1), got {self.prefill_frac}; the paper uses 0.1")

    def prefill_len(self, seq_len: int) -> int:
        """Tokens prefilled densely: ``round(prefill_frac * seq_len)``, at least 1, leaving >= 1 step."""
        return min(max(1, round(self.prefill_frac * seq_len)), seq_len - 2)


class SparseAttentionRouter:
    """Serves each attention call of a decode step: dense, sliding-window, or policy-selected blocks."""

    def __init__(self, policy: Policy, backend: AttentionBackend, config: EngineConfig) -> None:
        self.policy = policy
        self.backend = backend
        self.config = config
        self.summaries = BlockSummaryStore(policy.requires.summaries, config.block_size)
        self.meter = KVAccessMeter()
        self.timer = StepTimer()
        self.decoding = False
        self.step = 0
        self.draft_attention: dict[int, torch.Tensor] = {}
        self.layer_map: list[int] | None = None
        self.row_draft_attention: list[dict[int, torch.Tensor]] | None = None
        """Speculative verification: the draft's attention for each verified query row (oldest first).
        While it is not None every decode call goes through :meth:`_attend_rows`, even a single row."""
        self.clock = PhaseClock()
        """Times the verification path's ``select`` and ``attend`` (CUDA events on a GPU)."""

    def reset(self) -> None:
        self.summaries.reset()
        self.meter = KVAccessMeter()
        self.timer = StepTimer()
        self.decoding = False
        self.step = 0
        self.draft_attention = {}
        self.row_draft_attention = None
        self.clock = PhaseClock()
        self.policy.reset()

    def attention(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        scaling: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor | None:
        b, hkv, n_tokens, _ = key.shape
        rows = query.shape[2]
        if sliding_window is not None:  # Gemma-3-style local layer: keeps its window, never sparsified
            if self.decoding:  # several rows read the union of their windows
                window = hkv * min(n_tokens, sliding_window + rows - 1)
                self.meter.observe(layer, SLIDING, window, window)
            return None
        if layer < self.config.dense_layers:
            if self.decoding:
                self.meter.observe(layer, DENSE_LAYER, hkv * n_tokens, hkv * n_tokens)
            return None
        self.summaries.update(layer, key)
        if not self.decoding:
            return None  # prefill is dense
        if self.row_draft_attention is not None:
            return self._attend_rows(layer, query, key, value, scaling=scaling, softcap=softcap)
        if rows != 1:
            raise RuntimeError("the teacher-forced engine decodes one token per step")
        n_blocks = n_blocks_for(n_tokens, self.config.block_size)
        ctx = self._context(
            layer, query, hkv, n_tokens, scaling, self.step, summaries=self.summaries.view(layer),
            draft=(self.draft_attention.get(self.layer_map[layer]) if self.layer_map is not None else None),
            exact=(block_attention_mass(query, key, scaling, self.config.block_size, softcap=softcap)[:, :, 0]
                   if self.policy.requires.exact_scores else None),
        )
        t0 = time.perf_counter()
        selection = self.policy.select(ctx)
        t1 = time.perf_counter()
        selection = _finalize(selection, self.policy, b, hkv, n_blocks)
        result = self.backend.attend(query, key, value, selection, block_size=self.config.block_size,
                                     scaling=scaling, softcap=softcap)
        self.timer.add("select", t1 - t0)
        self.timer.add("attend", time.perf_counter() - t1)
        self.meter.observe(layer, SPARSE, result.tokens_read, hkv * n_tokens)
        return result.out

    def _context(self, layer: int, query: torch.Tensor, kv_heads: int, n_tokens: int, scaling: float, step: int, *,
                 summaries: dict[str, torch.Tensor], draft: torch.Tensor | None,
                 exact: torch.Tensor | None) -> SelectionContext:
        """The policy's view of one query row at context length ``n_tokens`` (its own position + 1)."""
        return SelectionContext(
            layer=layer, query=query, n_tokens=n_tokens, block_size=self.config.block_size,
            n_blocks=n_blocks_for(n_tokens, self.config.block_size), num_kv_heads=kv_heads, scaling=scaling,
            step=step, summaries=summaries, draft_attention=draft, exact_scores=exact,
        )

    def _attend_rows(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                     scaling: float, softcap: float | None) -> torch.Tensor:
        """Verification of ``Q`` new tokens (the cache's last ``Q`` positions), each row with its own blocks.

        Why one policy call per row rather than a per-row policy API: row ``r`` is exactly the decode step
        that token would have had on its own (its query, context length, step and draft attention), so
        every policy keeps its one-query contract and, for those that read nothing else (dense, specattn,
        streamingllm, oracle-topp), selects exactly what one-token decoding selects. The rows' selections
        are stacked into one ``[B, Hkv, Q, N]`` selection and the backend reads each block once for all rows.
        The price is ``Q`` small policy calls per layer (``Q = gamma + 1``). Block summaries (Quest) are
        those of the whole cache, so a row's newest, partial block also summarises the window's later
        keys: that can change which other blocks Quest ranks in, never what a row attends to causally.
        """
        b, hkv, n_tokens, _ = key.shape
        rows, bs = query.shape[2], self.config.block_size
        row_draft = self.row_draft_attention or []
        draft_layer = self.layer_map[layer] if self.layer_map is not None else None
        with self.clock.span("select"):
            exact = None
            if self.policy.requires.exact_scores:
                positions = torch.arange(n_tokens - rows, n_tokens, device=query.device)
                exact = block_attention_mass(query, key, scaling, bs, query_positions=positions, softcap=softcap)
            summaries = self.summaries.view(layer)
            selections = []
            for r in range(rows):
                n_row = n_tokens - rows + 1 + r
                n_blocks = n_blocks_for(n_row, bs)
                draft = row_draft[r].get(draft_layer) if draft_layer is not None and r < len(row_draft) else None
                ctx = self._context(layer, query[:, :, r : r + 1], hkv, n_row, scaling, self.step + r,
                                    summaries={k: v[:, :, :n_blocks] for k, v in summaries.items()}, draft=draft,
                                    exact=exact[:, :, r, :n_blocks] if exact is not None else None)
                selections.append(_finalize(self.policy.select(ctx), self.policy, b, hkv, n_blocks))
            selection = Selection.stack_rows(selections, n_blocks_for(n_tokens, bs))
        with self.clock.span("attend"):
            result = self.backend.attend(query, key, value, selection, block_size=bs, scaling=scaling,
                                         softcap=softcap)
        self.meter.observe(layer, SPARSE, result.tokens_read, hkv * n_tokens)
        return result.out


def policy_layers(config: Any, dense_layers: int) -> list[int]:
    """The target layers whose blocks a policy selects: past the first ``dense_layers``, and not Gemma-3-style
    sliding-window layers (``layer_types``), which keep their window and never read a selection or a draft.

    Why it matters: a draft's attention is captured only for the draft layers these map to (gemma3-270m: 3 of its
    16 sparse-eligible layers), not for layers whose capture nobody reads.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    return [i for i in range(dense_layers, text.num_hidden_layers)
            if not (types and i < len(types) and types[i] == "sliding_attention")]


class PhaseClock:
    """Seconds per named phase, summed over spans of work.

    Why not host time everywhere: a GPU runs work asynchronously, so host time around a launch measures the
    launch, not the kernel. On CUDA each span records a pair of CUDA events on the device's current stream
    and the elapsed times are read once, in :meth:`seconds` (one synchronisation); elsewhere a span is wall
    time, which on the synchronous CPU is the work's time. Spans may nest (a round holds its draft phase).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self.cuda = self.device is not None and self.device.type == "cuda"
        self._totals: dict[str, float] = {}
        self._events: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def span(self, phase: str) -> Iterator[None]:
        if self.cuda:
            stream = torch.cuda.current_stream(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            try:
                yield
            finally:
                end.record(stream)
                self._events.append((phase, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._totals[phase] = self._totals.get(phase, 0.0) + time.perf_counter() - t0

    def seconds(self) -> dict[str, float]:
        """Seconds per phase so far (synchronises the device once when CUDA events are pending)."""
        if self._events:
            torch.cuda.synchronize(self.device)
            for phase, start, end in self._events:
                self._totals[phase] = self._totals.get(phase, 0.0) + start.elapsed_time(end) / 1000.0
            self._events.clear()
        return dict(self._totals)


def _finalize(selection: Selection, policy: Policy, batch: int, kv_heads: int, n_blocks: int) -> Selection:
    """Check the policy's answer and add the newest block (always attended)."""
    if not isinstance(selection, Selection):
        raise TypeError(f"policy {policy.name!r} returned {type(selection).__name__}, not a Selection")
    if tuple(selection.mask.shape) != (batch, kv_heads, n_blocks):
        raise ValueError(
            f"policy {policy.name!r} returned a selection of shape {tuple(selection.mask.shape)}, "
            f"expected [batch, kv_heads, n_blocks] = {[batch, kv_heads, n_blocks]}"
        )
    if isinstance(selection, CompactSelection) and selection.includes_newest:
        return selection  # already holds the newest block; its block lists stay valid for the backend
    # An integer index, not with_blocks' list (a host-to-device copy): the fast engine captures this
    # in CUDA graphs (sparsebench.fastdecode).
    mask = selection.mask.clone()
    mask[..., n_blocks - 1] = True
    return Selection(mask)


@dataclass
class DocumentResult:
    """What one teacher-forced pass over one (batch of) document(s) measured."""

    nll: torch.Tensor
    """``[B, steps]`` negative log-likelihood of each decoded token (fp64, CPU): the per-step trace."""
    prefill_tokens: int
    kv_rows: list[KVAccessSummary]
    """KV reads of each sequence of the batch."""
    decode_seconds: float
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def kv(self) -> KVAccessSummary:
        """KV reads summed over the batch."""
        merged = {layer: (sum(r.per_layer[layer][0] for r in self.kv_rows),
                          sum(r.per_layer[layer][1] for r in self.kv_rows), kind)
                  for layer, (_, _, kind) in self.kv_rows[0].per_layer.items()}
        return KVAccessSummary(merged)

    @property
    def decoded_tokens(self) -> int:
        return self.nll.numel()

    @property
    def tokens_per_second(self) -> float:
        return self.decoded_tokens / self.decode_seconds if self.decode_seconds > 0 else float("nan")


class TeacherForcedEngine:
    """Runs a model over known token sequences with a policy choosing each sparse layer's KV blocks.

    The first ``prefill_len`` tokens go through one dense forward pass. Then every remaining token but
    the last is fed one at a time; its step's logits score the next true token. Only those decode-step
    predictions are scored (the prefill's last prediction is dense and excluded), so the perplexity is
    that of ``seq_len - prefill_len - 1`` tokens each predicted under the policy.
    """

    def __init__(self, model: torch.nn.Module, policy: Policy, backend: AttentionBackend,
                 config: EngineConfig | None = None, draft: Draft | None = None) -> None:
        self.model = model
        self.config = config or EngineConfig()
        n_layers = model.config.get_text_config().num_hidden_layers
        if self.config.dense_layers >= n_layers:
            raise UsageError(f"--dense-layers {self.config.dense_layers} leaves no sparse layer in a "
                             f"{n_layers}-layer model; use at most {n_layers - 1}")
        if policy.requires.draft_attention and draft is None:
            raise UsageError(f"policy {policy.name!r} needs a draft model's attention; give --draft "
                             "(for example --draft self:first-half)")
        self.router = SparseAttentionRouter(policy, backend, self.config)
        self.draft = draft if policy.requires.draft_attention else None
        self.capture: DraftAttentionCapture | None = None
        self.draft_layers: frozenset[int] = frozenset()
        """Draft layers whose attention some sparse target layer reads."""
        if self.draft is not None:
            if len(self.draft.layer_map) != n_layers:
                raise ValueError(f"layer map has {len(self.draft.layer_map)} entries for {n_layers} target layers")
            self.router.layer_map = self.draft.layer_map
            self.draft_layers = frozenset(self.draft.layer_map[i]
                                          for i in policy_layers(model.config, self.config.dense_layers))
            if not self.cross_tokenizer:  # a cross-tokenizer draft gets a capture per document (its alignment)
                self.capture = DraftAttentionCapture(self.config.block_size, self.draft_layers)

    @property
    def cross_tokenizer(self) -> bool:
        """Whether the draft reads its own tokenization of the text (each decode needs a schedule)."""
        return isinstance(self.draft, CrossTokenizerDraftModel)

    @contextlib.contextmanager
    def session(self, schedule: CrossTokenizerDraft | None = None) -> Iterator[DecodeSession]:
        """A fresh decode of one batch: new KV caches, reset counters, attention routed while it lasts.

        ``schedule``: how a cross-tokenizer draft reads this document (required exactly then)."""
        if self.cross_tokenizer and schedule is None:
            assert self.draft is not None
            raise UsageError(f"draft {self.draft.name!r} has its own tokenizer, so it needs the text of what the "
                             "target decodes; only teacher-forced evaluation (run/compare) and speculative "
                             "decoding (generate) support such drafts")
        self.router.reset()
        models = [self.model] + ([self.draft.model] if self.draft is not None else [])
        with attached(*models):
            yield DecodeSession(self, schedule if self.cross_tokenizer else None)
        self.router.decoding = False

    @torch.inference_mode()
    def evaluate(self, token_ids: torch.Tensor, progress: Callable[[int], None] | None = None,
                 schedule: CrossTokenizerDraft | None = None) -> DocumentResult:
        """Teacher-forced pass over ``token_ids`` ``[B, L]`` (on the model's device).

        ``schedule`` (a cross-tokenizer draft only, batch size 1): the document's two tokenizations, whose
        target ids must start with ``token_ids``."""
        if token_ids.dim() != 2 or token_ids.shape[1] < 3:
            raise UsageError(f"need token ids [batch, length >= 3], got shape {tuple(token_ids.shape)}")
        if self.cross_tokenizer and token_ids.shape[0] != 1:
            raise UsageError("a draft with its own tokenizer reads each document's own tokenization, so documents "
                             "run one at a time; use --batch-size 1")
        if schedule is not None and schedule.target_ids[: token_ids.shape[1]] != token_ids[0].tolist():
            raise ValueError("the schedule's target ids do not start with the evaluated token ids")
        seq_len = token_ids.shape[1]
        prefill = self.config.prefill_len(seq_len)
        nll = []
        with self.session(schedule) as decode:
            decode.prefill(token_ids[:, :prefill])
            synchronize(token_ids.device)
            start = time.perf_counter()
            for pos in range(prefill, seq_len - 1):
                logp = torch.log_softmax(decode.step(token_ids[:, pos : pos + 1]).float(), dim=-1)
                nll.append(-logp.gather(-1, token_ids[:, pos + 1 : pos + 2]))
                if progress is not None:
                    progress(token_ids.shape[0])  # tokens scored this step (one per sequence)
            synchronize(token_ids.device)
            elapsed = time.perf_counter() - start
        return DocumentResult(
            nll=torch.cat(nll, dim=-1).double().cpu(),
            prefill_tokens=prefill,
            kv_rows=self.router.meter.summaries(token_ids.shape[0]),
            decode_seconds=elapsed,
            timing=dict(self.router.timer.seconds),
        )


class DecodeSession:
    """The state of one decode: the target's and the draft's KV caches and the step counter.

    ``prefill`` runs the prompt densely (building the policy's block summaries); each ``step`` feeds one
    token per sequence, the draft first (so its attention for this token is captured), then the target
    with the policy choosing every sparse layer's blocks. Teacher-forced evaluation and generation are
    both short loops over these two calls.
    """

    def __init__(self, engine: TeacherForcedEngine, schedule: CrossTokenizerDraft | None = None) -> None:
        self.engine = engine
        self.cache = DynamicCache(config=engine.model.config)
        draft = engine.draft
        self.draft_cache = DynamicCache(config=draft.model.config) if draft is not None else None
        self.schedule = schedule
        """A cross-tokenizer draft's feeding schedule (None: the draft reads the target's ids)."""
        self.cross_capture = (CrossTokenizerCapture(schedule.alignment, engine.config.block_size, engine.draft_layers,
                                                    device=next(engine.model.parameters()).device)
                              if schedule is not None else None)
        self.n_tokens = 0
        self.steps = 0
        self._keep_last = ({"logits_to_keep": 1}
                           if "logits_to_keep" in inspect.signature(engine.model.forward).parameters else {})
        # Resolved once: signature inspection is too slow for every step.
        self._cache_args = {id(m): cache_kwarg(m) for m in [engine.model] + ([draft.model] if draft else [])}

    def _forward(self, model: torch.nn.Module, tokens: torch.Tensor, cache: DynamicCache,
                 **kwargs: Any) -> torch.Tensor:
        return model(input_ids=tokens, use_cache=True, **{self._cache_args[id(model)]: cache}, **kwargs).logits[:, -1]

    def _draft(self, tokens: torch.Tensor) -> None:
        engine = self.engine
        if self.cross_capture is not None:
            self._draft_cross_tokenizer()
            return
        if engine.draft is None or engine.capture is None or self.draft_cache is None:
            return
        engine.capture.n_tokens = self.n_tokens
        engine.capture.probs = {}
        t0 = time.perf_counter()
        with use_router(engine.capture):
            self._forward(engine.draft.model, tokens, self.draft_cache, **self._keep_last)
        engine.router.timer.add("draft", time.perf_counter() - t0)
        engine.router.draft_attention = engine.capture.probs

    def _draft_cross_tokenizer(self) -> None:
        """Feed the draft its own tokens whose text the target has now read (the schedule of
        :mod:`sparsebench.specattn.crosstok`: zero, one or several per target token) and hand the router
        the draft's latest attention mapped onto the target's ``n_tokens`` (a step that feeds nothing
        reuses the previous attention, now over one more target token)."""
        engine, schedule, capture = self.engine, self.schedule, self.cross_capture
        assert engine.draft is not None and schedule is not None and capture is not None
        assert self.draft_cache is not None
        t0 = time.perf_counter()
        fed = schedule.draft_fed(self.n_tokens - 1)
        if fed > capture.n_draft_tokens:
            ids = torch.tensor([schedule.draft_ids[capture.n_draft_tokens: fed]], device=capture.device)
            capture.n_draft_tokens = fed
            with use_router(capture):
                self._forward(engine.draft.model, ids, self.draft_cache, **self._keep_last)
        engine.router.draft_attention = capture.target_blocks(self.n_tokens)
        engine.router.timer.add("draft", time.perf_counter() - t0)  # the mapping is part of the draft's cost

    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dense pass over ``tokens`` ``[B, P]``; returns the last position's logits ``[B, V]``."""
        self.n_tokens += tokens.shape[1]
        self.engine.router.decoding = False
        self._draft(tokens)
        with use_router(self.engine.router):
            return self._forward(self.engine.model, tokens, self.cache, **self._keep_last)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step for ``tokens`` ``[B, 1]`` under the policy; returns logits ``[B, V]``."""
        router = self.engine.router
        self.n_tokens += 1
        router.decoding = True
        router.step = self.steps
        self.steps += 1
        self._draft(tokens)
        with use_router(router):
            return self._forward(self.engine.model, tokens, self.cache)


def synchronize(device: torch.device) -> None:
    """Wait for the device so wall-clock timings cover the work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
