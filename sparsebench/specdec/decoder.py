"""The speculative decoding loop: the draft proposes, the target verifies all proposals in one pass.

One round, for a committed sequence whose last token ``x`` the target has not yet seen:

1. **Draft.** The draft model feeds ``x`` and then its own proposals one token at a time, proposing
   ``gamma`` tokens ``d_1 .. d_gamma`` (argmax, or sampled from its tempered distribution). When the
   policy reads the draft's attention (SpecAttn), the draft also feeds ``d_gamma``, so every verified
   position has the draft's attention for that very token, aggregated to KV blocks
   (:class:`~sparsebench.specattn.capture.DraftAttentionCapture`): ``gamma + 1`` draft steps. The textbook
   loop runs ``gamma`` steps and feeds ``d_gamma`` with the next round's first token; the extra step
   here is wasted only in rounds that reject. Without a draft-attention policy the textbook order is
   kept, so the dense-attention baseline pays nothing for SpecAttn's needs.
2. **Verify.** The target runs ``[x, d_1 .. d_gamma]`` in one forward pass. Each sparse layer serves the
   ``gamma + 1`` query rows through :meth:`~sparsebench.engine.SparseAttentionRouter._attend_rows`: row
   ``i`` gets the policy's blocks for its own draft attention and context length, and attends causally
   (it sees the window's new tokens up to itself).
3. **Accept.** :mod:`~sparsebench.specdec.acceptance` keeps a prefix of the proposals and adds one target
   token (greedy, or the Leviathan/Chen rejection scheme). Both KV caches are cropped back to the
   committed sequence minus its last token, and so are the policy's block summaries.

Invariant between rounds: the target cache holds every committed token but the last; so does the
draft's (or one token less, without a draft-attention policy). Batch size 1 only: sequences of a batch
accept different numbers of tokens, which would need ragged caches.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from sparsebench.engine import EngineConfig, PhaseClock, SparseAttentionRouter, policy_layers, synchronize
from sparsebench.errors import UsageError
from sparsebench.evals.metrics import KVAccessSummary
from sparsebench.hf_attention import attached, cache_kwarg, use_router
from sparsebench.kernels.base import AttentionBackend
from sparsebench.policy import Policy
from sparsebench.specattn.capture import Draft, DraftAttentionCapture
from sparsebench.specdec.acceptance import accept_greedy, accept_sampling, probabilities


@dataclass(frozen=True)
class SpeculationConfig:
    """How the draft speculates and how proposals are accepted."""

    gamma: int = 4
    """Tokens the draft proposes per round."""
    sampling: bool = False
    """False: greedy (output identical to the target's greedy decoding). True: speculative sampling."""
    temperature: float = 1.0
    """Sampling temperature of both models (sampling mode only)."""
    seed: int = 0
    """Seed of the generator every random draw of a generation comes from (sampling mode only)."""

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise UsageError(f"--gamma must be >= 1 (tokens the draft proposes per round), got {self.gamma}")
        if self.sampling and not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0 when sampling, got {self.temperature}")


@dataclass
class SpecDecResult:
    """What one speculative generation produced, and what it cost."""

    ids: list[int]
    """Generated token ids (the first comes from the dense prefill, as in plain generation)."""
    text: str
    prompt_tokens: int
    rounds: list[tuple[int, int]]
    """Per verification round: (tokens the draft proposed, tokens the target accepted)."""
    kv: KVAccessSummary
    """KV reads of the target's verification passes (its prefill is dense and not counted)."""
    decode_seconds: float
    """Wall time of the rounds, device-synchronised at both ends (prefill excluded)."""
    prefill_seconds: float
    stop_reason: str
    """``"stop_id"`` or ``"max_new_tokens"``."""
    timing: dict[str, float] = field(default_factory=dict)
    """Seconds per phase: ``draft``, ``selection``, ``target_attention`` (the sparse layers' block-sparse
    attention), ``rest`` (everything else in the rounds: the target's other layers and projections,
    acceptance, cache crops) and ``total``; ``timing_method`` says how they were measured."""
    timing_method: str = "wall"
    """``"cuda_events"`` on a GPU, ``"wall"`` (host wall time) elsewhere."""

    @property
    def proposed(self) -> int:
        return sum(p for p, _ in self.rounds)

    @property
    def accepted(self) -> int:
        return sum(a for _, a in self.rounds)

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafted tokens over proposed drafted tokens."""
        return self.accepted / self.proposed if self.proposed else float("nan")

    @property
    def mean_accepted(self) -> float:
        """Drafted tokens accepted per verification round."""
        return self.accepted / len(self.rounds) if self.rounds else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """Tokens committed per verification round: the accepted ones plus the target's own (the
        'mean accepted length' of the speculative decoding papers; 1.0 is plain decoding)."""
        return (self.accepted + len(self.rounds)) / len(self.rounds) if self.rounds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        """Tokens committed by the rounds per second of rounds (the prefill's token excluded)."""
        return (len(self.ids) - 1) / self.decode_seconds if self.decode_seconds > 0 else float("nan")

    def metrics(self) -> dict[str, Any]:
        """The JSON-ready numbers of one generation."""
        return {
            "generated_tokens": len(self.ids),
            "prompt_tokens": self.prompt_tokens,
            "rounds": len(self.rounds),
            "proposed": self.proposed,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted": self.mean_accepted,
            "tokens_per_round": self.tokens_per_round,
            "tokens_per_s": self.tokens_per_second,
            "decode_seconds": self.decode_seconds,
            "prefill_seconds": self.prefill_seconds,
            "kv_reduction_sparse": self.kv.reduction_sparse,
            "kv_reduction_all": self.kv.reduction_all,
            "kv_read_sparse": self.kv.read_sparse,
            "kv_dense_sparse": self.kv.dense_sparse,
            "kv_read_all": self.kv.read_all,
            "kv_dense_all": self.kv.dense_all,
            "timing_seconds": dict(self.timing),
            "timing_method": self.timing_method,
            "stop_reason": self.stop_reason,
            "accepted_per_round": [a for _, a in self.rounds],
        }


def check_length(prompt_tokens: int, max_new_tokens: int, limit: int | None) -> None:
    """A clear error when a prompt plus the new tokens cannot fit ``limit`` positions (None: no limit)."""
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    # The last token is never fed back, so the caches peak at prompt + max_new_tokens - 1 positions.
    if limit and prompt_tokens + max_new_tokens - 1 > limit:
        raise UsageError(f"a {prompt_tokens}-token prompt plus --max-new-tokens {max_new_tokens} exceeds the "
                         f"model's {limit} positions; generate at most {max(0, limit - prompt_tokens + 1)} tokens")


def _crop(cache: DynamicCache, keep: int) -> None:
    """Roll ``cache`` back to its first ``keep`` tokens.

    transformers 5.x crops by a negative count; ``crop(0)`` trims sliding-window layers that recorded
    their past for a rollback back to their window (only called where past recording exists, since
    older 5.x releases read 0 as a length).
    """
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)
    elif hasattr(cache, "activate_past_recording"):
        cache.crop(0)


class SpeculativeDecoder:
    """Speculative decoding of one prompt by ``model`` with ``draft``, ``policy`` choosing the target's blocks.

    Build it once per (model, draft, policy, backend) and call :meth:`generate` per prompt. After a
    generation, ``cache`` and ``draft_cache`` hold the final KV caches (tests check the rollback on them).
    """

    def __init__(self, model: torch.nn.Module, draft: Draft, policy: Policy, backend: AttentionBackend,
                 config: EngineConfig | None = None, speculation: SpeculationConfig | None = None) -> None:
        self.model = model
        self.draft = draft
        self.policy = policy
        self.backend = backend
        self.config = config or EngineConfig()
        self.speculation = speculation or SpeculationConfig()
        text = model.config.get_text_config()
        n_layers = text.num_hidden_layers
        if self.config.dense_layers >= n_layers:
            raise UsageError(f"--dense-layers {self.config.dense_layers} leaves no sparse layer in a "
                             f"{n_layers}-layer model; use at most {n_layers - 1}")
        if not backend.capabilities.multi_row_queries:
            raise UsageError(f"backend {backend.name!r} cannot verify several query rows per sequence, which "
                             "speculative decoding needs; use --backend torch")
        draft_vocab = draft.model.config.get_text_config().vocab_size
        if draft_vocab != text.vocab_size and not self.reads_own_tokens:
            raise UsageError(f"draft {draft.name!r} has a vocabulary of {draft_vocab} tokens but the target has "
                             f"{text.vocab_size}; a draft must share the target's tokenizer")
        self.router = SparseAttentionRouter(policy, backend, self.config)
        self.capture: DraftAttentionCapture | None = None
        if policy.requires.draft_attention:
            if len(draft.layer_map) != n_layers:
                raise ValueError(f"layer map has {len(draft.layer_map)} entries for {n_layers} target layers")
            self.router.layer_map = draft.layer_map
            needed = {draft.layer_map[i] for i in policy_layers(model.config, self.config.dense_layers)}
            self.capture = DraftAttentionCapture(self.config.block_size, frozenset(needed))
        self.device = next(model.parameters()).device
        self.cache: DynamicCache | None = None
        self.draft_cache: DynamicCache | None = None
        self.generator: torch.Generator | None = None
        self._cache_args = {id(m): cache_kwarg(m) for m in (model, draft.model)}
        self._keep_last = ({"logits_to_keep": 1}
                           if "logits_to_keep" in inspect.signature(draft.model.forward).parameters else {})

    #: Whether the draft reads its own tokenization of the text (:mod:`sparsebench.specdec.crosstok`)
    #: rather than the target's ids, so vocabularies may differ.
    reads_own_tokens: bool = False

    def max_positions(self) -> int | None:
        """Longest sequence both models' position encodings support (None when neither says)."""
        limits = [getattr(m.config.get_text_config(), "max_position_embeddings", None)
                  for m in (self.model, self.draft.model)]
        known = [int(x) for x in limits if x]
        return min(known) if known else None

    def check_length(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """A clear error when the prompt plus the new tokens cannot fit the models' positions."""
        check_length(prompt_tokens, max_new_tokens, self.max_positions())

    # ------------------------------------------------------------------------------------------------
    # hooks (tests override propose to script the draft)

    def propose(self, logits: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The draft's ``index``-th proposal of a round from its logits ``[1, V]``: a ``[1, 1]`` token and,
        when sampling, the distribution it was drawn from (``[V]``)."""
        spec = self.speculation
        if not spec.sampling:
            return logits.argmax(dim=-1, keepdim=True), None
        q = probabilities(logits[0], spec.temperature)
        return torch.multinomial(q, 1, generator=self.generator).view(1, 1), q

    def _first_token(self, logits: torch.Tensor) -> torch.Tensor:
        """The token after the prompt, from the target's dense prefill logits ``[1, V]``."""
        spec = self.speculation
        if not spec.sampling:
            return logits.argmax(dim=-1, keepdim=True)
        p = probabilities(logits[0], spec.temperature)
        return torch.multinomial(p, 1, generator=self.generator).view(1, 1)

    # ------------------------------------------------------------------------------------------------

    def _forward(self, model: torch.nn.Module, tokens: torch.Tensor, cache: DynamicCache,
                 **kwargs: Any) -> torch.Tensor:
        out = model(input_ids=tokens, use_cache=True, **{self._cache_args[id(model)]: cache}, **kwargs)
        return out.logits[0]

    def _draft_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` ``[1, t]`` to the draft; returns its last logits ``[1, V]`` and leaves the
        block-aggregated attention of a single token in ``capture.probs``."""
        assert self.draft_cache is not None
        capture = self.capture
        if capture is not None:
            capture.n_tokens = self.draft_cache.get_seq_length() + tokens.shape[1]
            capture.probs = {}
        with use_router(capture):
            return self._forward(self.draft.model, tokens, self.draft_cache, **self._keep_last)[-1:]

    def _draft_round(self, pending: torch.Tensor, gamma: int) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                                                       list[dict[int, torch.Tensor]]]:
        """Proposals ``[1, 1]`` each, their draft distributions (sampling) and, per verified row, the
        draft's attention (only with a draft-attention policy)."""
        proposals: list[torch.Tensor] = []
        dists: list[torch.Tensor] = []
        rows: list[dict[int, torch.Tensor]] = []
        steps = gamma + 1 if self.capture is not None else gamma
        feed = pending
        for index in range(steps):
            logits = self._draft_step(feed)
            if self.capture is not None:
                rows.append(self.capture.probs)
            if index == gamma:
                break
            token, dist = self.propose(logits, index)
            proposals.append(token)
            if dist is not None:
                dists.append(dist)
            feed = token
        return proposals, dists, rows

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], *, max_new_tokens: int, tokenizer: Any = None,
                 stop_ids: set[int] | None = None, progress: Callable[[int], None] | None = None) -> SpecDecResult:
        """Generate up to ``max_new_tokens`` tokens after ``prompt_ids`` (one sequence: batch size 1).

        ``stop_ids``: generation ends after any of these (None: the tokenizer's end-of-sequence, see
        :func:`~sparsebench.evals.generation.default_stop_ids`; an empty set never stops early).
        ``progress`` is called with the number of tokens each round committed.
        """
        from sparsebench.evals.generation import default_stop_ids

        if prompt_ids and isinstance(prompt_ids[0], list | tuple):
            raise UsageError("speculative decoding runs one sequence at a time (batch size 1); "
                             "give one prompt")
        if not prompt_ids:
            raise UsageError("generation needs a non-empty prompt")
        self.check_length(len(prompt_ids), max_new_tokens)
        stop = (default_stop_ids(self.model, tokenizer) if tokenizer is not None else set()) \
            if stop_ids is None else set(stop_ids)
        spec, router, device = self.speculation, self.router, self.device
        self.generator = torch.Generator(device=device).manual_seed(spec.seed) if spec.sampling else None
        router.reset()
        clock = PhaseClock(device)
        router.clock = clock
        self.cache = DynamicCache(config=self.model.config)
        self.draft_cache = DynamicCache(config=self.draft.model.config)
        prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        n_prompt = len(prompt_ids)
        sequence = list(prompt_ids)
        rounds: list[tuple[int, int]] = []
        stop_reason = "max_new_tokens"
        with attached(self.model, self.draft.model):
            synchronize(device)
            t0 = time.perf_counter()
            router.decoding = False
            with use_router(router):
                logits = self._forward(self.model, prompt, self.cache)[-1:]
            self._prefill_draft(prompt)
            for cache in (self.cache, self.draft_cache):
                if hasattr(cache, "activate_past_recording"):  # sliding-window layers must be able to roll back
                    cache.activate_past_recording()
            token = self._first_token(logits)
            sequence.append(int(token))
            synchronize(device)
            prefill_seconds = time.perf_counter() - t0
            start = time.perf_counter()
            while True:
                generated = len(sequence) - n_prompt
                if sequence[-1] in stop:
                    stop_reason = "stop_id"
                    break
                if generated >= max_new_tokens:
                    break
                # Propose no more than can be used: accepting all plus the bonus token fills the budget.
                gamma = min(spec.gamma, max_new_tokens - generated - 1)
                new, proposed = self._round(sequence, gamma, clock, n_prompt)
                rounds.append((proposed, len(new) - 1))
                for tok in new:
                    sequence.append(tok)
                    if tok in stop:
                        break
                if progress is not None:
                    progress(len(sequence) - n_prompt - generated)
            synchronize(device)
            decode_seconds = time.perf_counter() - start
        router.row_draft_attention = None
        router.decoding = False
        ids = sequence[n_prompt:]
        return SpecDecResult(
            ids=ids, text=tokenizer.decode(ids, skip_special_tokens=True) if tokenizer is not None else "",
            prompt_tokens=n_prompt, rounds=rounds, kv=router.meter.summaries(1)[0], decode_seconds=decode_seconds,
            prefill_seconds=prefill_seconds, stop_reason=stop_reason, timing=_breakdown(clock.seconds()),
            timing_method="cuda_events" if clock.cuda else "wall",
        )

    def _prefill_draft(self, prompt: torch.Tensor) -> None:
        """Dense prefill of the draft on the prompt ``[1, P]``; a multi-token step captures nothing."""
        self._draft_step(prompt)

    def _round(self, sequence: list[int], gamma: int, clock: PhaseClock, n_prompt: int) -> tuple[list[int], int]:
        """One draft-verify-accept round: the tokens it commits (accepted drafts, then the target's) and how
        many target tokens were proposed."""
        assert self.cache is not None and self.draft_cache is not None
        router, spec = self.router, self.speculation
        n_cached = len(sequence) - 1  # the target has seen every committed token but the last
        with clock.span("round"):
            with clock.span("draft"):
                behind = self.draft_cache.get_seq_length()
                pending = torch.tensor([sequence[behind:]], dtype=torch.long, device=self.device)
                proposals, dists, rows = self._draft_round(pending, gamma)
            last = pending[:, -1:]
            tokens = torch.cat([last, *proposals], dim=1)  # [1, gamma + 1]
            router.row_draft_attention = rows
            router.step = n_cached - n_prompt
            router.decoding = True
            with use_router(router):
                logits = self._forward(self.model, tokens, self.cache)  # [gamma + 1, V]
            drafted = tokens[0, 1:]
            if spec.sampling:
                q = torch.stack(dists) if dists else logits.new_zeros(0, logits.shape[-1], dtype=torch.float32)
                assert self.generator is not None
                accepted, nxt = accept_sampling(probabilities(logits, spec.temperature), q, drafted, self.generator)
            else:
                accepted, nxt = accept_greedy(logits, drafted)
            keep = n_cached + 1 + accepted  # committed after this round, minus the new last token
            _crop(self.cache, keep)
            _crop(self.draft_cache, keep)
            router.summaries.crop(keep)
            new = torch.cat([drafted[:accepted], nxt.view(1)]).tolist()
        return [int(t) for t in new], gamma


def _breakdown(phases: dict[str, float]) -> dict[str, float]:
    """Phase spans -> draft / selection / target_attention / rest / total (rest = total minus the others)."""
    total = phases.get("round", 0.0)
    parts = {"draft": phases.get("draft", 0.0), "selection": phases.get("select", 0.0),
             "target_attention": phases.get("attend", 0.0)}
    return {**parts, "rest": max(0.0, total - sum(parts.values())), "total": total}
