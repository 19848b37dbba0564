"""The fast decode engine: static cache, one token per sequence per step, every layer routed like the
teacher-forced engine's (:class:`sparsebench.engine.SparseAttentionRouter`), ready for CUDA-graph capture.

Reading order: :meth:`FastDecoder.prefill` (dense, chunked causal SDPA, or :meth:`fill_random`), then
:meth:`FastDecoder._step`, the body of one decode step, and :meth:`FastDecoder._attend`, one layer of it:

1. write the token's key/value at the device position ``position``; refresh its block's summaries;
2. sparse layer: build the :class:`~sparsebench.policy.SelectionContext` (query after RoPE, host
   ``n_tokens``/``n_blocks``, summaries sliced to ``n_blocks``, the draft's attention, exact scores),
   ``policy.select``, add the newest block (:func:`sparsebench.engine._finalize`);
   dense layer (the first ``dense_layers``): the full selection, planned once per step for all of them;
3. ``backend.plan`` then ``backend.run`` over ``cache[:, :, :n_blocks * block_size]`` with ``kv_len`` a
   device tensor; add the backend's ``tokens_read`` to a device counter.

Why dense layers go through the backend with a full selection, not SDPA: every row of a speed table then
runs the same kernel, so dense vs sparse measures what skipping blocks buys, not the difference between
two kernels (the teacher-forced engine runs the ``dense`` policy the same way). The memory-bandwidth bound
the benchmark prints shows how close that kernel is to ideal.

All sequences of a batch have the same length (one position tensor); selections are per sequence and per
kv head. Only host-side values seen by the policy (``n_tokens``, ``n_blocks``, ``step``) are Python ints;
the step itself reads and advances ``token``, ``position`` and ``kv_len`` on the device, so one CUDA graph
per ``n_blocks`` replays every token of that block (:mod:`sparsebench.fastdecode.graphs`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sparsebench.engine import EngineConfig, _finalize
from sparsebench.errors import UsageError
from sparsebench.evals.metrics import DENSE_LAYER, SPARSE, KVAccessSummary
from sparsebench.fastdecode.cache import StaticKVCache
from sparsebench.fastdecode.draft import SelfDraft
from sparsebench.fastdecode.model import FastModel
from sparsebench.fastdecode.timing import PhaseTracker, Timer
from sparsebench.kernels.base import AttentionBackend, AttentionPlan
from sparsebench.kernels.mass import block_attention_mass
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection, n_blocks_for

PREFILL_CHUNK = 4096


@dataclass(frozen=True)
class Snapshot:
    """Where a decode stands: enough to replay the same steps again (warm-up, capture, timed passes)."""

    n_tokens: int
    steps: int
    token: torch.Tensor
    position: torch.Tensor


def causal_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, offset: int,
                     scaling: float) -> torch.Tensor:
    """Dense causal attention of queries at positions ``offset ..`` over ``keys``/``values`` ``[B, Hkv, T, D]``."""
    groups = q.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(groups, 1), values.repeat_interleave(groups, 1)
    t, n = q.shape[2], keys.shape[2]
    if offset == 0 and t == n:
        return F.scaled_dot_product_attention(q, keys, values, is_causal=True, scale=scaling)
    mask = torch.arange(n, device=q.device) <= torch.arange(offset, offset + t, device=q.device)[:, None]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)


def prefill_attention(cache: StaticKVCache, start: int, end: int, positions: torch.Tensor, scaling: float,
                      layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One layer of a dense prefill chunk ``[start, end)``: store its keys/values and block summaries, then
    causal attention over the cache up to ``end`` (shared by the decoder and the speculator)."""
    cache.write(layer, k, v, positions)
    cache.refresh_summaries(layer, start, end)
    return causal_attention(q, cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end], start, scaling)


class FastDecoder:
    """Decodes ``batch`` sequences with ``policy`` choosing every sparse layer's blocks (see module docstring)."""

    def __init__(self, model: FastModel, policy: Policy, backend: AttentionBackend, config: EngineConfig | None = None,
                 *, batch: int = 1, max_tokens: int, draft: SelfDraft | None = None) -> None:
        self.model, self.policy, self.backend = model, policy, backend
        self.config = config = config or EngineConfig()
        spec = model.spec
        layers = spec.num_layers
        model.require_full_head("decoded model")
        if config.dense_layers >= layers:
            raise UsageError(f"--dense-layers {config.dense_layers} leaves no sparse layer in a {layers}-layer "
                             f"model; use at most {layers - 1}")
        if batch < 1:
            raise UsageError(f"batch must be >= 1, got {batch}")
        if policy.requires.draft_attention and draft is None:
            raise UsageError(f"policy {policy.name!r} needs a draft model's attention; give a self-draft "
                             "(for example self:first-half)")
        if draft is not None and len(draft.layer_map) != layers:
            raise UsageError(f"the draft's layer map has {len(draft.layer_map)} entries for {layers} target layers")
        weight = next(model.parameters())
        self.device, self.dtype, self.batch = weight.device, weight.dtype, batch
        shape = dict(batch=batch, kv_heads=spec.num_kv_heads, head_dim=spec.head_dim, capacity=max_tokens,
                     block_size=config.block_size, dtype=self.dtype, device=self.device)
        self.cache = StaticKVCache(layers=layers, summaries=policy.requires.summaries,
                                   summary_layers=range(config.dense_layers, layers), **shape)
        self.draft = draft if policy.requires.draft_attention else None
        self.draft_layers = self.draft.run_layers(config.dense_layers) if self.draft is not None else []
        self._draft_needed = set(self.draft.needed(config.dense_layers)) if self.draft is not None else set()
        self.draft_cache = StaticKVCache(layers=len(self.draft_layers), **shape) if self.draft is not None else None
        self.cos, self.sin = model.rope_tables(self.cache.capacity, self.device)
        # The step's inputs and outputs: static device buffers, read and advanced by the step itself.
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self.kv_len = torch.zeros(batch, dtype=torch.int32, device=self.device)
        self.reads = torch.zeros(layers, batch, dtype=torch.long, device=self.device)
        self.generated = torch.zeros(self.cache.capacity, batch, dtype=torch.long, device=self.device)
        self.logits: torch.Tensor | None = None
        # Host-side mirror: what the policy sees as Python ints.
        self.n_tokens = 0
        self.steps = 0
        self.dense_tokens = 0
        """KV tokens per sequence and layer a dense decode would have read since the counters were reset."""
        self.timer: Timer = PhaseTracker()
        self._n_blocks = 0
        self._dense_plan: AttentionPlan | None = None
        self._draft_mass: dict[int, torch.Tensor] = {}

    # ---- prompt -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, chunk: int = PREFILL_CHUNK) -> torch.Tensor:
        """Dense causal pass over ``tokens`` ``[B, P]`` (in chunks); returns the last position's logits ``[B, V]``."""
        if tokens.dim() != 2 or tokens.shape[0] != self.batch or tokens.shape[1] < 1:
            raise UsageError(f"prefill needs token ids [batch={self.batch}, length >= 1], got {tuple(tokens.shape)}")
        start, end = self.n_tokens, self.n_tokens + tokens.shape[1]
        self.cache.check_fits(end)
        scaling, logits = self.model.spec.scaling, None
        for s in range(start, end, chunk):
            e = min(end, s + chunk)
            part = tokens[:, s - start : e - start].to(self.device)
            cos, sin, positions = self.cos[s:e], self.sin[s:e], torch.arange(s, e, device=self.device)
            if self.draft_cache is not None:
                attend = functools.partial(prefill_attention, self.draft_cache, s, e, positions, scaling)
                self.model.run_layers(self.model.embed(part), self.draft_layers, cos, sin, attend)
            attend = functools.partial(prefill_attention, self.cache, s, e, positions, scaling)
            logits = self.model(part, cos, sin, attend)
        assert logits is not None
        self._set_length(end, logits.argmax(-1))
        return logits

    @torch.inference_mode()
    def fill_random(self, n_tokens: int, seed: int = 0) -> None:
        """Random keys/values for ``n_tokens`` positions instead of a prefill (speed runs only: the
        tokens/s of a step do not depend on what the cache holds, its selections do)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        for cache in (self.cache, self.draft_cache):
            if cache is not None:
                cache.fill_random(n_tokens, gen)
        vocab = self.model.spec.vocab_size
        self._set_length(n_tokens, torch.randint(0, vocab, (self.batch,), device=self.device, generator=gen))

    def _set_length(self, n_tokens: int, next_token: torch.Tensor) -> None:
        self.n_tokens = n_tokens
        self.position.fill_(n_tokens)
        self.token.copy_(next_token.view(self.batch, 1))

    # ---- decode -------------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """One eager decode step feeding ``tokens`` ``[B, 1]`` (default: the previous step's argmax)."""
        if tokens is not None:
            self.token.copy_(tokens.view(self.batch, 1))
        self.begin_step()
        self._step()
        self.end_step()
        assert self.logits is not None
        return self.logits

    @torch.inference_mode()
    def generate(self, steps: int) -> torch.Tensor:
        """Greedy tokens ``[B, steps]`` (eager), continuing from the prefill's argmax."""
        start = self.n_tokens
        for _ in range(steps):
            self.step()
        return self.generated_tokens(start, steps)

    def begin_step(self) -> int:
        """Host bookkeeping before a step (capacity check, this step's block count); returns ``n_blocks``."""
        self.cache.check_fits(self.n_tokens + 1)
        self._n_blocks = n_blocks_for(self.n_tokens + 1, self.config.block_size)
        return self._n_blocks

    def end_step(self) -> None:
        self.n_tokens += 1
        self.steps += 1
        self.dense_tokens += self.model.spec.num_kv_heads * self.n_tokens

    def _step(self) -> None:
        """One decode step on the static buffers: the body a CUDA graph captures (no host synchronisation)."""
        t = self.timer
        t.switch("other")
        self.kv_len.copy_(self.position + 1)
        cos, sin = self.cos.index_select(0, self.position), self.sin.index_select(0, self.position)
        self._dense_plan = None
        if self.config.dense_layers or self.draft_cache is not None:
            t.switch("plan")
            full = Selection.full(self.batch, self.model.spec.num_kv_heads, self._n_blocks, self.device)
            self._dense_plan = self.backend.plan(full, block_size=self.config.block_size,
                                                 n_tokens=self._n_blocks * self.config.block_size, kv_len=self.kv_len)
        if self.draft_cache is not None:
            t.switch("draft")
            self._draft_mass = {}
            self.model.run_layers(self.model.embed(self.token), self.draft_layers, cos, sin, self._attend_draft)
        t.switch("other")
        logits = self.model(self.token, cos, sin, self._attend)
        nxt = logits.argmax(-1)
        self.generated.index_copy_(0, self.position, nxt.view(1, self.batch))
        self.token.copy_(nxt.view(self.batch, 1))
        self.position.add_(1)
        self.logits = logits
        t.switch(None)

    def _attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One target layer of a decode step (see the module docstring)."""
        t, bs = self.timer, self.config.block_size
        self.cache.write(layer, k, v, self.position)
        keys, values = self.cache.view(layer, self._n_blocks)
        if layer < self.config.dense_layers:
            plan = self._dense_plan
        else:
            if layer in self.cache.summaries:
                t.switch("summaries")
                self.cache.update_summaries(layer, self.position)
            t.switch("select")
            selection = self._select(layer, q, keys)
            t.switch("plan")
            plan = self.backend.plan(selection, block_size=bs, n_tokens=self._n_blocks * bs, kv_len=self.kv_len)
        assert plan is not None
        t.switch("attention")
        result = self.backend.run(plan, q, keys, values, scaling=self.model.spec.scaling)
        t.switch("other")
        self.reads[layer].add_(result.tokens_read.sum(-1))
        return result.out

    def _select(self, layer: int, q: torch.Tensor, keys: torch.Tensor) -> Selection:
        spec, nb = self.model.spec, self._n_blocks
        ctx = SelectionContext(
            layer=layer, query=q, n_tokens=self.n_tokens + 1, block_size=self.config.block_size, n_blocks=nb,
            num_kv_heads=spec.num_kv_heads, scaling=spec.scaling, step=self.steps,
            summaries=self.cache.summary_view(layer, nb, self.kv_len),
            draft_attention=self._draft_mass.get(self.draft.layer_map[layer]) if self.draft is not None else None,
            exact_scores=self._mass(q, keys) if self.policy.requires.exact_scores else None,
        )
        return _finalize(self.policy.select(ctx), self.policy, self.batch, spec.num_kv_heads, nb)

    def _mass(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """``[B, Hq, N]`` attention mass per block of the current query; slots past ``position`` are masked."""
        return block_attention_mass(q, keys, self.model.spec.scaling, self.config.block_size,
                                    query_positions=self.position)[:, :, 0]

    def _attend_draft(self, slot: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """One self-draft layer: dense attention, plus its block mass when a sparse target layer reads it."""
        assert self.draft_cache is not None and self._dense_plan is not None
        self.draft_cache.write(slot, k, v, self.position)
        keys, values = self.draft_cache.view(slot, self._n_blocks)
        if slot in self._draft_needed:
            self._draft_mass[slot] = self._mass(q, keys)
        return self.backend.run(self._dense_plan, q, keys, values, scaling=self.model.spec.scaling).out

    # ---- state and counters -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        return Snapshot(self.n_tokens, self.steps, self.token.clone(), self.position.clone())

    def restore(self, snap: Snapshot) -> None:
        """Back to ``snap`` (the cache past it is rewritten by the next steps before anything reads it)."""
        self.n_tokens, self.steps = snap.n_tokens, snap.steps
        self.token.copy_(snap.token)
        self.position.copy_(snap.position)
        self.policy.reset()

    def reset_counters(self) -> None:
        self.reads.zero_()
        self.dense_tokens = 0

    def generated_tokens(self, start: int, steps: int) -> torch.Tensor:
        """Greedy tokens ``[B, steps]`` the steps at positions ``start .. start + steps - 1`` produced (CPU)."""
        return self.generated[start : start + steps].T.cpu()

    def kv_summaries(self) -> list[KVAccessSummary]:
        """KV reads per sequence since :meth:`reset_counters` (one host synchronisation)."""
        reads = self.reads.tolist()
        kinds = [DENSE_LAYER if i < self.config.dense_layers else SPARSE for i in range(len(reads))]
        return [KVAccessSummary({i: (row[b], self.dense_tokens, kinds[i]) for i, row in enumerate(reads)})
                for b in range(self.batch)]
