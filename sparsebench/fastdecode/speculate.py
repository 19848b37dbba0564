"""Speculative decoding on the fast engine: a draft proposes ``gamma`` tokens, the target verifies them in one
pass in which every query row attends only to the blocks the policy picked for that row (SpecAttn as the paper
means it), then a prefix is accepted and both static caches roll back by moving their positions.

Reading order: :class:`SpecDraft` (who proposes), :meth:`FastSpeculator.round` (one round, the only place
the host waits for the device), :meth:`FastSpeculator._draft_step` and :meth:`FastSpeculator._verify` (the
two bodies CUDA graphs capture), :func:`measure_speculation` (warm-up, instrumented and timed passes).

One round, with ``P`` the position of the pending token ``x`` (the last committed token, not yet in the
target's cache) and ``R = gamma + 1`` verified rows:

1. **Draft.** The draft feeds ``x`` and then its own argmax proposals, one token per step, proposing
   ``d_1 .. d_gamma``. Each step keeps, for every draft layer the layer map names, the attention mass of its
   query per KV block (row ``r`` of a ``[R, ...]`` buffer, the row index a device counter, so one CUDA graph
   per block count serves every step of a block). On CUDA those layers attend through
   :func:`~sparsebench.kernels.draft_mass.attention_with_block_mass` (the mass comes out of the flash-decoding
   pass itself, no second read of K); elsewhere in torch (:func:`attention_with_mass`); the other layers
   through the backend. The last verified row, ``d_gamma``, is a token the draft proposed but never fed, so
   it has no draft attention. ``last_row="reuse"`` (default) gives that row the draft attention of row
   ``gamma - 1`` (the previous token's, blocks past that token's context zeroed; the row's own newest block is
   always read): an approximation, stated in the benchmark's output, that saves one draft step per round.
   ``last_row="extra-step"`` feeds ``d_gamma`` too, without computing logits (``gamma + 1`` steps, as
   :mod:`sparsebench.specdec.decoder` does), so every row has its own draft attention.
2. **Verify.** The target runs ``[x, d_1 .. d_gamma]`` at positions ``P .. P + gamma`` in one forward pass.
   Dense layers (and every layer of a dense policy) read a full selection shared by the rows; sparse layers
   get a per-row selection ``[B, Hkv, R, N]``: ``policy.select`` once per row with the row's own query,
   context length and draft attention (exactly the decode step that token would have had alone), or, for
   SpecAttn's top-p, which reads nothing but the draft mass, one call with the rows stacked along the batch
   (same blocks, ``R`` times fewer kernel launches). The backend reads each selected block once for all
   rows, each row masked causally and to its own blocks. The target's argmax rows come out in a static buffer.
3. **Accept.** :func:`~sparsebench.specdec.acceptance.accept_greedy` on the verified logits (the round's
   one host synchronisation), or a fixed acceptance pattern (random weights accept nothing, so speed runs
   script the accepted counts and say so). Rollback is arithmetic: the next round writes from the new
   position, the stale slots past it are never read (``kv_len`` masks them) and are overwritten.

Invariant between rounds: the target's cache holds every committed token but the pending one; the draft's
holds the same, or one token less after a round that accepted all ``gamma`` proposals without the extra
draft step (the textbook loop): that token is fed first in the next round ("catch-up" step, no logits).
At SpecAttn's p = 1.0 the selection is full whatever the draft attention, so ``last_row`` changes nothing
there and greedy output stays identical to plain greedy decoding in both modes (tested).
Batch size 1: sequences of a batch accept different numbers of tokens, which would need ragged positions.

Timing breakdown (ms per round): ``draft`` (every draft step), ``selection`` (the verification's block
summaries, policy calls and backend plans), ``target_attention`` (the verification's attention kernels),
``rest`` (the headline ms per round minus those three: projections, MLPs, logits, acceptance, the host
synchronisation and the rollback).
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsebench.engine import EngineConfig, _finalize
from sparsebench.errors import UsageError
from sparsebench.evals.metrics import DENSE_LAYER, SPARSE, KVAccessSummary
from sparsebench.fastdecode.cache import StaticKVCache
from sparsebench.fastdecode.draft import SelfDraft
from sparsebench.fastdecode.engine import PREFILL_CHUNK, prefill_attention
from sparsebench.fastdecode.graphs import GraphCaptureError, cuda_graph_blocker, first_line
from sparsebench.fastdecode.model import FastModel, finish_layer, qkv_projection
from sparsebench.fastdecode.timing import EventTimer, PhaseTracker, Timer, WallTimer, add_into, time_repeated
from sparsebench.kernels.base import AttentionBackend, AttentionPlan
from sparsebench.kernels.mass import block_attention_mass
from sparsebench.kernels.verify_select import MAX_N as VERIFY_MAX_N
from sparsebench.kernels.verify_select import verify_select_slots
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection, n_blocks_for
from sparsebench.specdec.acceptance import accept_greedy

#: How the last verified row gets its draft attention (module docstring, step 1).
LAST_ROW_MODES = ("reuse", "extra-step")
#: Breakdown columns (ms per round) and the engine phases each one sums.
BREAKDOWN = {"draft": ("draft",), "selection": ("summaries", "select", "plan"), "target_attention": ("attention",)}


# ---- the draft ------------------------------------------------------------------------------------------


def proportional_layer_map(n_target_layers: int, n_draft_layers: int) -> list[int]:
    """Target layer ``i`` -> the draft layer at the same relative depth (a separate draft has no shared layers
    and, with random weights, no calibration to go by)."""
    if n_target_layers == 1:
        return [n_draft_layers - 1]
    return [round(i * (n_draft_layers - 1) / (n_target_layers - 1)) for i in range(n_target_layers)]


@dataclass(frozen=True)
class SpecDraft:
    """The model that proposes: draft slot ``j`` runs ``model.layers[layers[j]]``; slot ``layer_map[i]`` guides
    target layer ``i``. A self-draft is the target itself over a subset of its layers (then its final norm and
    head); a separate draft is another :class:`FastModel` with every layer."""

    model: FastModel
    layers: list[int]
    layer_map: list[int]
    name: str
    is_self: bool

    @classmethod
    def separate(cls, model: FastModel, target: FastModel, name: str,
                 layer_map: list[int] | None = None) -> SpecDraft:
        if model.spec.vocab_size != target.spec.vocab_size:
            raise UsageError(f"draft {name!r} has a vocabulary of {model.spec.vocab_size} tokens but the target has "
                             f"{target.spec.vocab_size}; a draft must share the target's tokenizer")
        n = model.spec.num_layers
        mapping = layer_map or proportional_layer_map(target.spec.num_layers, n)
        if len(mapping) != target.spec.num_layers or not all(0 <= j < n for j in mapping):
            raise UsageError(f"layer map {mapping} must give one draft layer (0-{n - 1}) for each of the "
                             f"{target.spec.num_layers} target layers")
        return cls(model, list(range(n)), list(mapping), name, False)

    @classmethod
    def self_draft(cls, target: FastModel, draft: SelfDraft) -> SpecDraft:
        if len(draft.layer_map) != target.spec.num_layers:
            raise UsageError(f"the draft's layer map has {len(draft.layer_map)} entries for "
                             f"{target.spec.num_layers} target layers")
        name = draft.spec if draft.spec.startswith("self:") else f"self:{draft.spec}"
        return cls(target, list(draft.layers), list(draft.layer_map), name, True)

    def weight_bytes(self, dtype: torch.dtype, *, head: bool) -> int:
        """Weights one draft step reads (the output head only when the step proposes a token)."""
        spec = self.model.spec
        layers = len(self.layers) * spec.layer_weight_bytes(dtype)
        return layers + (spec.weight_bytes(dtype) - spec.num_layers * spec.layer_weight_bytes(dtype) if head else 0)


# ---- small pieces ---------------------------------------------------------------------------------------


def parse_accept_pattern(text: str | None, gamma: int) -> tuple[int, ...] | None:
    """``"3,4,2,4"`` -> accepted drafted tokens per round (cycled); each in ``0 .. gamma``."""
    if text is None or not text.strip():
        return None
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--accept-pattern {text!r}: give comma-separated counts of accepted drafted tokens, "
                         "e.g. 3,4,2,4") from None
    bad = [v for v in values if not 0 <= v <= gamma]
    if not values or bad:
        raise UsageError(f"--accept-pattern {text!r}: every count must be between 0 and --gamma {gamma}")
    return values


def attention_with_mass(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, key_pos: torch.Tensor,
                        kv_len: torch.Tensor, scaling: float, block_size: int,
                        want_mass: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One query row's attention and, optionally, its probability mass per KV block, from one read of K and V.

    ``q`` ``[B, Hq, 1, D]``; ``keys``/``values`` ``[B, Hkv, T, D]`` at token positions ``key_pos`` ``[T]``
    (whole blocks); tokens at or past ``kv_len`` ``[B]`` are masked. Returns ``out`` ``[B, Hq, 1, D]`` and mass
    ``[B, Hq, T / block_size]`` (fp32). Why not :func:`~sparsebench.kernels.mass.block_attention_mass` next to
    the backend: that re-reads the keys expanded to every query head in fp32 (at 128K tokens, a gigabyte per
    layer and step); here the GQA group shares its kv head and the scores come out of one matmul in the cache's
    dtype (fp32 accumulation; the logits are rounded to it before the fp32 softmax).
    """
    b, hq, _, d = q.shape
    hkv, t = keys.shape[1], keys.shape[2]
    scores = torch.matmul(q.reshape(b, hkv, hq // hkv, d), keys.transpose(-1, -2)).float() * scaling
    scores = scores.masked_fill((key_pos.view(1, 1, 1, t) >= kv_len.view(b, 1, 1, 1)), float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [B, Hkv, G, T]
    out = torch.matmul(probs.to(values.dtype), values).reshape(b, hq, 1, d)
    mass = probs.reshape(b, hq, t // block_size, block_size).sum(-1) if want_mass else None
    return out, mass


def fill_heavy_hitters(cache: StaticKVCache, n_tokens: int, frac: float, scale: float, seed: int) -> None:
    """Scale the keys of a random fraction ``frac`` of blocks (per layer and kv head) by ``scale``.

    Why: with random weights and random keys the draft's attention is almost uniform, so top-p at 0.97 keeps
    almost every block and the rows' blocks are unrelated, unlike real attention, whose mass sits on a few
    blocks shared by consecutive tokens. Larger keys get larger logits of either sign whatever the query, so
    the scaled blocks hold most of every query's mass: a synthetic but explicit stand-in for heavy hitters.
    """
    gen = torch.Generator(device=cache.keys[0].device).manual_seed(seed)
    n_blocks = n_tokens // cache.block_size  # whole blocks only; the partial last block stays as it is
    if n_blocks == 0 or frac <= 0:
        return
    for keys in cache.keys:
        b, h = keys.shape[:2]
        heavy = torch.rand(b, h, n_blocks, device=keys.device, generator=gen) < frac
        factor = torch.where(heavy, scale, 1.0).to(keys.dtype).repeat_interleave(cache.block_size, dim=2)
        keys[:, :, : n_blocks * cache.block_size].mul_(factor.unsqueeze(-1))


@dataclass(frozen=True)
class SpecSnapshot:
    """Where a speculative decode stands between rounds (to replay the same rounds: warm-up, timed passes)."""

    n_tokens: int
    draft_tokens: int
    rounds: int
    pending: torch.Tensor
    catchup: torch.Tensor


@dataclass
class RoundRecord:
    """What one round did (host values: the bandwidth bound is computed from them)."""

    position: int
    """Position of the pending token at the start of the round."""
    accepted: int
    """Drafted tokens kept (the pattern's count when one is given)."""
    greedy_accepted: int
    """What greedy verification accepted (equal to ``accepted`` without a pattern)."""
    draft_steps: list[tuple[int, bool]]
    """Per draft step: the draft's KV length after writing its token, and whether it computed logits."""


class _Graphs:
    """CUDA graphs of the draft step and the verification pass, captured on first use per key.

    A key fixes every host value the body reads (block counts, and for the verification the position the
    policies see), so a replay is exact; tensors the body reads and advances (positions, the draft row
    counter) live on the device. Before capture the body runs twice eagerly on the capture stream (compilation,
    autotuning), the second time with ``set_sync_debug_mode("error")``: a host synchronisation is reported
    with the phase it happened in. The state those runs advance is restored before capturing.
    """

    def __init__(self, owner: FastSpeculator) -> None:
        self.owner = owner
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device=owner.device)
        self.plain: dict[tuple, torch.cuda.CUDAGraph] = {}
        self.timed: dict[tuple, tuple[torch.cuda.CUDAGraph, EventTimer]] = {}
        self.captures = 0

    def run(self, key: tuple, body: Callable[[], None], *, timed: bool) -> dict[str, float]:
        if key not in self.plain:
            self._capture(key, body)
        if timed and key in self.timed:
            graph, timer = self.timed[key]
            graph.replay()
            torch.cuda.synchronize(self.owner.device)
            return timer.collect()
        self.plain[key].replay()
        return {}

    def _capture(self, key: tuple, body: Callable[[], None]) -> None:
        o = self.owner
        saved = o._state()
        tracker = PhaseTracker()
        o.timer = tracker
        self.stream.wait_stream(torch.cuda.current_stream(o.device))
        with torch.cuda.stream(self.stream):
            body()
            o._set_state(saved)
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("error")
            try:
                body()
            except RuntimeError as exc:
                raise GraphCaptureError(f"phase {tracker.phase!r} of {key[0]} (policy {o.policy.name!r}, backend "
                                        f"{o.backend.name!r}) synchronizes with the host ({first_line(exc)})") from exc
            finally:
                torch.cuda.set_sync_debug_mode(previous)
            o._set_state(saved)
        torch.cuda.current_stream(o.device).wait_stream(self.stream)
        self.plain[key] = self._record(body, PhaseTracker())
        if key[0] == "verify":  # the draft steps are timed as a whole, outside their graphs
            timer = EventTimer(external=True)
            try:
                self.timed[key] = (self._record(body, timer), timer)
            except (RuntimeError, TypeError) as exc:
                o.notes.append(f"could not capture CUDA events inside the verification graph ({first_line(exc)})")
        o.timer = PhaseTracker()
        self.captures += 1

    def _record(self, body: Callable[[], None], timer: Timer) -> torch.cuda.CUDAGraph:
        self.owner.timer = timer
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            body()
        return graph


# ---- the speculator -------------------------------------------------------------------------------------


class FastSpeculator:
    """Speculative greedy decoding of one sequence on static caches (see the module docstring).

    ``draft_window``: the draft attends only to its first block (attention sink) and its last
    ``draft_window`` tokens (StreamingLLM on the draft's own cache), so its attention mass, and what SpecAttn
    can select from it, covers only those blocks. ``batched_rows``: stack the verified rows along the batch in
    one ``policy.select`` call (default: only for SpecAttn's top-p, whose selection reads nothing else); for
    SpecAttn's top-p below p = 1 where the Triton kernels run, one fused launch per verification selects for
    every draft layer the layer map uses instead (:func:`~sparsebench.kernels.verify_select.verify_select_slots`,
    same blocks; target layers mapped to one draft layer share its selection; ``fused_select`` says whether).
    ``last_row``: one of :data:`LAST_ROW_MODES` (module docstring). ``mass_kernel``: the Triton kernel for the
    draft layers that keep their attention mass (and for a windowed draft's layers); None: where it can run
    (CUDA, triton, a supported dtype and head dim), True: required, False: torch.
    """

    def __init__(self, target: FastModel, draft: SpecDraft, policy: Policy, backend: AttentionBackend,
                 config: EngineConfig | None = None, *, gamma: int, max_tokens: int,
                 accept_pattern: Sequence[int] | None = None, draft_window: int | None = None,
                 batched_rows: bool | None = None, cuda_graphs: bool = True, compile_rows: bool = False,
                 last_row: str = "reuse", mass_kernel: bool | None = None) -> None:
        self.target, self.draft, self.policy, self.backend = target, draft, policy, backend
        self.config = config = config or EngineConfig()
        spec = target.spec
        target.require_full_head("target")
        if gamma < 1:
            raise UsageError(f"--gamma must be >= 1 (tokens the draft proposes per round), got {gamma}")
        if draft.model.spec.vocab_size != spec.vocab_size:
            raise UsageError(f"draft {draft.name!r} has a vocabulary of {draft.model.spec.vocab_size} tokens but the "
                             f"target has {spec.vocab_size}; a draft must share the target's tokenizer")
        if config.dense_layers >= spec.num_layers:
            raise UsageError(f"--dense-layers {config.dense_layers} leaves no sparse layer in a "
                             f"{spec.num_layers}-layer model; use at most {spec.num_layers - 1}")
        if not backend.capabilities.multi_row_queries:
            raise UsageError(f"backend {backend.name!r} cannot verify several query rows per sequence, which "
                             "speculative decoding needs; use --backend triton or torch")
        if accept_pattern is not None and not all(0 <= a <= gamma for a in accept_pattern):
            raise UsageError(f"every count of the acceptance pattern must be between 0 and gamma {gamma}")
        if draft_window is not None and draft_window < 1:
            raise UsageError(f"the draft's window must be >= 1 token, got {draft_window}")
        if last_row not in LAST_ROW_MODES:
            raise UsageError(f"--last-row {last_row!r}: choose one of {', '.join(LAST_ROW_MODES)}")
        self.gamma, self.rows = gamma, gamma + 1
        self.pattern = tuple(accept_pattern) if accept_pattern else None
        self.dense_policy = policy.name == "dense"
        self.uses_mass = policy.requires.draft_attention
        self.batched_rows = (policy.name == "specattn" and getattr(policy, "select_by", "") == "topp"
                             if batched_rows is None else batched_rows)
        self.last_row = last_row
        self.reuse_last = self.uses_mass and last_row == "reuse"
        self.draft_steps = gamma + 1 if self.uses_mass and not self.reuse_last else gamma
        weight = next(target.parameters())
        self.device, self.dtype = weight.device, weight.dtype
        self.mass_kernel = self._choose_mass_kernel(mass_kernel, draft.model.spec.head_dim, config.block_size)
        bs = config.block_size
        capacity = max_tokens + self.rows + 1  # a round may write up to gamma + 1 slots past the committed tokens
        self.cache = StaticKVCache(layers=spec.num_layers, batch=1, kv_heads=spec.num_kv_heads,
                                   head_dim=spec.head_dim, capacity=capacity, block_size=bs, dtype=self.dtype,
                                   device=self.device, summaries=policy.requires.summaries,
                                   summary_layers=range(config.dense_layers, spec.num_layers))
        dspec = draft.model.spec
        self.draft_cache = StaticKVCache(layers=len(draft.layers), batch=1, kv_heads=dspec.num_kv_heads,
                                         head_dim=dspec.head_dim, capacity=capacity, block_size=bs, dtype=self.dtype,
                                         device=self.device)
        self.cos, self.sin = target.rope_tables(self.cache.capacity, self.device)
        self.draft_cos, self.draft_sin = ((self.cos, self.sin) if draft.is_self
                                          else draft.model.rope_tables(self.cache.capacity, self.device))
        needed = sorted({draft.layer_map[i] for i in range(config.dense_layers, spec.num_layers)})
        self.mass_slot = {slot: k for k, slot in enumerate(needed)} if self.uses_mass else {}
        self.window_blocks = None if draft_window is None else -(-draft_window // bs)
        dev = self.device
        # Static device state, read and advanced by the graphs.
        self.pending = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.catchup = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.kv_len = torch.zeros(1, dtype=torch.int32, device=dev)
        self.draft_token = torch.zeros(1, 1, dtype=torch.long, device=dev)
        self.draft_pos = torch.zeros(1, dtype=torch.long, device=dev)
        self.draft_kv_len = torch.zeros(1, dtype=torch.int32, device=dev)
        self.draft_row = torch.zeros(1, dtype=torch.long, device=dev)
        self.proposals = torch.zeros(self.rows + 1, 1, dtype=torch.long, device=dev)  # the last slot: catch-up
        self.rows_mass = torch.zeros(self.rows + 1, max(1, len(self.mass_slot)), 1, dspec.num_heads,
                                     self.cache.max_blocks, dtype=torch.float32, device=dev)
        self.logits = torch.zeros(1, self.rows, spec.vocab_size, dtype=torch.float32, device=dev)
        self.reads = torch.zeros(spec.num_layers, dtype=torch.long, device=dev)
        self.generated = torch.zeros(self.cache.capacity + self.rows, dtype=torch.long, device=dev)
        self._token_pos = torch.arange(self.cache.capacity, device=dev)
        self._row_offsets = torch.arange(self.rows, device=dev)
        # Position whose context bounds each row's draft mass: the row's own, or row gamma - 1's for a reused row.
        self._mass_offsets = self._row_offsets.clone()
        if self.reuse_last:
            self._mass_offsets[-1] = gamma - 1
        # Host mirror.
        self.n_tokens = 0
        """Tokens in the target's cache = position of the pending token."""
        self.draft_tokens = 0
        """Tokens in the draft's cache (``n_tokens`` or one less, see the module docstring)."""
        self.prompt_tokens = 0
        self.records: list[RoundRecord] = []
        self.dense_tokens = 0
        """KV tokens per layer a dense verification would have read since the counters were reset."""
        self.timer: Timer = PhaseTracker()
        self.notes: list[str] = []
        self._compile = compile_rows
        self._qkv: Callable = torch.compile(qkv_projection, fullgraph=True, dynamic=False) if compile_rows \
            else qkv_projection
        self._finish: Callable = torch.compile(finish_layer, fullgraph=True, dynamic=False) if compile_rows \
            else finish_layer
        self.graphs: _Graphs | None = None
        if cuda_graphs:
            blocker = cuda_graph_blocker(self.device, backend)
            if blocker is None:
                self.graphs = _Graphs(self)
            else:
                self.notes.append(f"{blocker}; decoding eagerly")
        # Per-round host values the bodies read (set by round()).
        self._n_blocks = 0
        self._with_head = True
        self._verify_rows: tuple[int, ...] = ()
        self._dense_plan: AttentionPlan | None = None
        self._row_valid: torch.Tensor | None = None
        self._row_newest: torch.Tensor | None = None
        self._mass_valid: torch.Tensor | None = None
        self._slot_selections: list[Selection] = []
        self._fused_now = False
        self._fused_args = self._fused_select_args()
        self.fused_select = self._fused_args is not None
        """The batched rows' selection runs as one fused kernel per verification (see the class docstring)."""

    def _fused_select_args(self) -> dict[str, Any] | None:
        """SpecAttn's top-p arguments of :func:`~sparsebench.kernels.verify_select.verify_select` when the batched
        rows can use it (SpecAttn top-p below p = 1 with its draft mass, the Triton kernels usable here), else None.
        At p = 1 SpecAttn selects every block (not only the positive-mass ones), so that stays on the policy."""
        from sparsebench.kernels.topp import triton_usable
        from sparsebench.policies.specattn import HEAD_REDUCTIONS, SpecAttn

        pol = self.policy
        if not (self.batched_rows and self.uses_mass and isinstance(pol, SpecAttn) and pol.select_by == "topp"
                and pol.p < 1.0 and pol.head_reduce in HEAD_REDUCTIONS and triton_usable(self.device)):
            return None
        return {"p": pol.p, "num_kv_heads": self.target.spec.num_kv_heads, "head_reduce": pol.head_reduce,
                "sink_blocks": pol.sink_blocks}

    def _choose_mass_kernel(self, wanted: bool | None, head_dim: int, block_size: int) -> bool:
        """Whether the draft's mass layers run the Triton kernel (see the class docstring)."""
        if wanted is False or (wanted is None and self.device.type != "cuda"):
            return False
        from sparsebench.kernels.draft_mass import mass_kernel_unavailable

        why = mass_kernel_unavailable(self.device, self.dtype, head_dim)
        if why is None and not (block_size & (block_size - 1) == 0 and 16 <= block_size <= 128):
            why = f"block size {block_size} is not a power of two from 16 to 128"
        if why and wanted:
            raise UsageError(f"the draft-mass kernel cannot run here: {why}")
        return why is None

    @property
    def last_row_note(self) -> str | None:
        """What the output must say about the last verified row's draft attention (None: nothing to say)."""
        if not self.uses_mass:
            return None
        if self.reuse_last:
            return (f"the last verified row (proposal {self.gamma}, never fed to the draft) reuses row "
                    f"{self.gamma - 1}'s draft attention (an approximation; {self.gamma} draft steps per round)")
        return f"an extra draft step per round gives the last verified row its own draft attention ({self.rows} steps)"

    # ---- prompt -----------------------------------------------------------------------------------------

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, chunk: int = PREFILL_CHUNK) -> int:
        """Dense causal pass of both models over ``tokens`` ``[1, P]``; returns the first generated token."""
        if tokens.dim() != 2 or tokens.shape[0] != 1 or tokens.shape[1] < 1:
            raise UsageError(f"speculative decoding prefills one sequence [1, length >= 1], got {tuple(tokens.shape)}")
        n = tokens.shape[1]
        self.cache.check_fits(n + self.rows + 1)
        logits = None
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            part = tokens[:, s:e].to(self.device)
            positions = self._token_pos[s:e]
            d = self.draft
            attend = functools.partial(prefill_attention, self.draft_cache, s, e, positions, d.model.spec.scaling)
            d.model.run_layers(d.model.embed(part), d.layers, self.draft_cos[s:e], self.draft_sin[s:e], attend)
            attend = functools.partial(prefill_attention, self.cache, s, e, positions, self.target.spec.scaling)
            logits = self.target(part, self.cos[s:e], self.sin[s:e], attend)
        assert logits is not None
        first = logits.argmax(-1)
        self._start(n, first)
        return int(first)

    @torch.inference_mode()
    def fill_random(self, n_tokens: int, *, seed: int = 0, heavy_frac: float = 0.0, heavy_scale: float = 1.0) -> None:
        """Random keys/values in both caches instead of a prefill (speed runs), optionally with synthetic heavy
        hitters in the draft's keys (:func:`fill_heavy_hitters`)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.cache.check_fits(n_tokens + self.rows + 1)
        self.cache.fill_random(n_tokens, gen)
        self.draft_cache.fill_random(n_tokens, gen)
        fill_heavy_hitters(self.draft_cache, n_tokens, heavy_frac, heavy_scale, seed + 1)
        first = torch.randint(0, self.target.spec.vocab_size, (1,), device=self.device, generator=gen)
        self._start(n_tokens, first)

    def _start(self, n_tokens: int, first: torch.Tensor) -> None:
        self.n_tokens = self.draft_tokens = self.prompt_tokens = n_tokens
        self.pending.copy_(first.view(1, 1))
        self.generated[n_tokens] = first.view(())
        self.records = []
        self.policy.reset()

    # ---- one round --------------------------------------------------------------------------------------

    @torch.inference_mode()
    def round(self, *, timed: bool = False) -> dict[str, float]:
        """Draft, verify, accept, roll back (module docstring). Returns in-graph phase times when ``timed``."""
        p, rows, bs = self.n_tokens, self.rows, self.config.block_size
        self.cache.check_fits(p + rows + 1)
        phases: dict[str, float] = {}
        steps: list[tuple[int, bool]] = []
        marks = None
        if timed and self.graphs is not None:  # the draft's graphs are timed as a whole, from outside
            marks = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            marks[0].record()
        if self.draft_tokens < p:  # the previous round accepted every proposal: feed the last one first
            self.draft_token.copy_(self.catchup)
            self.draft_pos.fill_(self.draft_tokens)
            self.draft_row.fill_(rows)  # the scratch slot: this step's proposal and mass are not used
            steps.append((self.draft_tokens + 1, False))
            self._run(("draft", n_blocks_for(self.draft_tokens + 1, bs), False), self._draft_step, timed)
        self.draft_token.copy_(self.pending)
        self.draft_pos.fill_(p)
        self.draft_row.fill_(0)
        for i in range(self.draft_steps):
            head = i < self.gamma
            steps.append((p + i + 1, head))
            self._run(("draft", n_blocks_for(p + i + 1, bs), head), self._draft_step, timed)
        self.draft_tokens = p + self.draft_steps
        if self.reuse_last:  # the last row's draft attention: row gamma - 1's (see _verify for its context)
            self.rows_mass[self.gamma].copy_(self.rows_mass[self.gamma - 1])
        if marks is not None:
            marks[1].record()
        self.position.fill_(p)
        add_into(phases, self._run(("verify", p), self._verify, timed))
        if marks is not None:
            marks[1].synchronize()
            phases["draft"] = phases.get("draft", 0.0) + marks[0].elapsed_time(marks[1])
        drafted = self.proposals[: self.gamma, 0]
        greedy, nxt = accept_greedy(self.logits[0], drafted)  # the round's host synchronisation
        accepted = greedy
        if self.pattern is not None:
            accepted = self.pattern[len(self.records) % len(self.pattern)]
            nxt = self.logits[0, accepted].argmax()
        # Commit: the accepted proposals and the target's token; both caches roll back to the committed tokens.
        self.generated[p + 1 : p + accepted + 1] = drafted[:accepted]
        self.generated[p + accepted + 1] = nxt
        self.pending.copy_(nxt.view(1, 1))
        self.n_tokens = p + accepted + 1
        self.draft_tokens = min(self.draft_tokens, self.n_tokens)
        if self.draft_tokens < self.n_tokens:
            self.catchup.copy_(self.proposals[self.gamma - 1 : self.gamma])
        self.dense_tokens += self.target.spec.num_kv_heads * (p + rows)
        self.records.append(RoundRecord(p, accepted, greedy, steps))
        return phases

    def _run(self, key: tuple, body: Callable[[], None], timed: bool) -> dict[str, float]:
        """One body (draft step or verification) for the host values in ``key``: a graph replay or eager."""
        if key[0] == "draft":
            self._n_blocks, self._with_head = key[1], key[2]
        else:
            p, bs = key[1], self.config.block_size
            self._verify_rows = tuple(n_blocks_for(p + r + 1, bs) for r in range(self.rows))
        if self.graphs is not None:
            try:
                return self.graphs.run(key, body, timed=timed)
            except GraphCaptureError as exc:
                torch.cuda.synchronize(self.device)
                self.notes.append(f"{exc}; decoding eagerly")
                self.graphs = None
        body()
        return {}

    # ---- draft step (graph body) -------------------------------------------------------------------------

    def _draft_step(self) -> None:
        """Feed ``draft_token`` at ``draft_pos``: write its KV, keep its block mass in row ``draft_row`` and, with
        a head, its argmax in ``proposals[draft_row]`` and ``draft_token``. Advances the position and row."""
        t, d = self.timer, self.draft
        t.switch("draft")
        self.draft_kv_len.copy_(self.draft_pos + 1)
        cos, sin = self.draft_cos.index_select(0, self.draft_pos), self.draft_sin.index_select(0, self.draft_pos)
        self._dense_plan = None
        if self.window_blocks is None:
            full = Selection.full(1, d.model.spec.num_kv_heads, self._n_blocks, self.device)
            self._dense_plan = self.backend.plan(full, block_size=self.config.block_size,
                                                 n_tokens=self._n_blocks * self.config.block_size,
                                                 kv_len=self.draft_kv_len)
        x = d.model.run_layers(d.model.embed(self.draft_token), d.layers, cos, sin, self._attend_draft)
        if self._with_head:
            nxt = d.model.token_ids(d.model.logits(x)[:, -1].argmax(-1))  # [1]; a reduced head's index -> token id
            self.proposals.index_copy_(0, self.draft_row, nxt.view(1, 1))
            self.draft_token.copy_(nxt.view(1, 1))
        self.draft_pos.add_(1)
        self.draft_row.add_(1)
        t.switch(None)

    def _attend_draft(self, slot: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        bs, nb = self.config.block_size, self._n_blocks
        self.draft_cache.write(slot, k, v, self.draft_pos)
        keys, values = self.draft_cache.view(slot, nb)
        want = slot in self.mass_slot
        scaling = self.draft.model.spec.scaling
        if self.window_blocks is None and not want:
            assert self._dense_plan is not None
            return self.backend.run(self._dense_plan, q, keys, values, scaling=scaling).out
        first = nb - self.window_blocks if self.window_blocks is not None else 0
        if self.mass_kernel:
            from sparsebench.kernels.draft_mass import attention_with_block_mass

            mass_out = self.rows_mass[:, self.mass_slot[slot]] if want else None  # [R + 1, 1, H, max blocks]
            out, _ = attention_with_block_mass(q, keys, values, block_size=bs, scaling=scaling,
                                               kv_len=self.draft_kv_len, skip=(1, first) if first > 1 else None,
                                               want_mass=want, mass_out=mass_out,
                                               mass_row=self.draft_row if want else None)
            return out
        pos = self._token_pos[: nb * bs]
        if first > 1:  # StreamingLLM on the draft's cache: block 0 (the sink) and the last window_blocks blocks
            keys = torch.cat([keys[:, :, :bs], keys[:, :, first * bs :]], dim=2)
            values = torch.cat([values[:, :, :bs], values[:, :, first * bs :]], dim=2)
            pos = torch.cat([pos[:bs], pos[first * bs :]])
        out, mass = attention_with_mass(q, keys, values, pos, self.draft_kv_len, scaling, bs, want)
        if mass is not None:
            if first > 1:
                mass = torch.cat([mass[..., :1], mass.new_zeros(*mass.shape[:-1], first - 1), mass[..., 1:]], dim=-1)
            self.rows_mass[:, self.mass_slot[slot], :, :, :nb].index_copy_(0, self.draft_row, mass.unsqueeze(0))
        return out

    # ---- verification (graph body) -----------------------------------------------------------------------

    def _verify(self) -> None:
        """The target over ``[pending, proposals]`` at ``position ..``; logits of every row into ``self.logits``."""
        t, bs, rows, spec = self.timer, self.config.block_size, self.rows, self.target.spec
        t.switch("other")
        positions = self.position + self._row_offsets
        self.kv_len.copy_(self.position + rows)
        cos, sin = self.cos.index_select(0, positions), self.sin.index_select(0, positions)
        tokens = torch.cat([self.pending, self.proposals[: self.gamma].view(1, self.gamma)], dim=1)  # [1, R]
        n_blocks = self._verify_rows[-1]
        self._dense_plan = None
        if self.config.dense_layers or self.dense_policy:
            t.switch("plan")
            full = Selection.full(1, spec.num_kv_heads, n_blocks, self.device)
            self._dense_plan = self.backend.plan(full, block_size=bs, n_tokens=n_blocks * bs, kv_len=self.kv_len)
        if self.batched_rows and not self.dense_policy:
            t.switch("select")
            # Row r sees blocks below ceil((P + r + 1) / bs); its newest block is always read.
            # A reused row's mass covers the blocks of the row it comes from.
            limit = torch.div(positions + bs, bs, rounding_mode="floor")  # = n_blocks of row r
            source = (torch.div(self.position + self._mass_offsets + bs, bs, rounding_mode="floor")
                      if self.reuse_last else limit)
            self._fused_now = self.fused_select and n_blocks <= VERIFY_MAX_N
            if self._fused_now:  # one launch for every mass slot; the kernel takes the row limits as they are
                assert self._fused_args is not None
                self._slot_selections = verify_select_slots(
                    self.rows_mass[:rows, :, 0, :, :n_blocks], limit, mass_blocks=source, **self._fused_args)
            else:  # the policy path masks with bitmaps, built once per round for every layer
                blocks = torch.arange(n_blocks, device=self.device).view(1, 1, n_blocks)
                limit = limit.view(rows, 1, 1)
                self._row_valid, self._row_newest = blocks < limit, blocks == limit - 1
                self._mass_valid = blocks < source.view(rows, 1, 1)
        t.switch("other")
        x = self.target.embed(tokens)
        for layer, block in enumerate(self.target.layers):
            q, k, v = self._qkv(x, block.attn_norm.weight, spec.rms_norm_eps, block.wqkv.weight, block.wqkv.bias,
                                cos, sin, spec.num_heads, spec.num_kv_heads, spec.head_dim)
            attn = self._attend_rows(layer, q, k, v, positions, n_blocks)
            x = self._finish(x, attn, block.wo.weight, block.wo.bias, block.mlp_norm.weight, spec.rms_norm_eps,
                             block.w_gate_up.weight, block.w_down.weight)
        self.logits.copy_(self.target.logits(x))
        t.switch(None)

    def _attend_rows(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     n_blocks: int) -> torch.Tensor:
        t, bs = self.timer, self.config.block_size
        self.cache.write(layer, k, v, positions)
        keys, values = self.cache.view(layer, n_blocks)
        if layer < self.config.dense_layers or self.dense_policy:
            plan = self._dense_plan
        else:
            if layer in self.cache.summaries:
                t.switch("summaries")
                # One refresh per block the rows wrote into, at its last row (a refresh recomputes the block
                # from the cache up to that row's position).
                last = self.rows - 1
                for r, nb in enumerate(self._verify_rows):
                    if r == last or nb != self._verify_rows[r + 1]:
                        self.cache.update_summaries(layer, positions[r : r + 1])
            t.switch("select")
            selection = self._select_batched(layer, q) if self.batched_rows else self._select_rows(layer, q, keys)
            t.switch("plan")
            plan = self.backend.plan(selection, block_size=bs, n_tokens=n_blocks * bs, kv_len=self.kv_len)
        assert plan is not None
        t.switch("attention")
        result = self.backend.run(plan, q, keys, values, scaling=self.target.spec.scaling)
        t.switch("other")
        self.reads[layer].add_(result.tokens_read.sum())
        return result.out

    def _context(self, layer: int, query: torch.Tensor, n_tokens: int, n_blocks: int, draft: torch.Tensor | None,
                 summaries: dict[str, torch.Tensor], exact: torch.Tensor | None) -> SelectionContext:
        spec = self.target.spec
        return SelectionContext(layer=layer, query=query, n_tokens=n_tokens, block_size=self.config.block_size,
                                n_blocks=n_blocks, num_kv_heads=spec.num_kv_heads, scaling=spec.scaling,
                                step=n_tokens - 1 - self.prompt_tokens, summaries=summaries, draft_attention=draft,
                                exact_scores=exact)

    def _draft_mass(self, layer: int, rows: slice | int, n_blocks: int) -> torch.Tensor | None:
        """The draft mass of verified row(s) ``rows`` over ``n_blocks`` blocks. A reused last row's mass (a copy
        of row gamma - 1's) is zeroed past the blocks its source row saw (per row here; batched: _mass_valid)."""
        if not self.uses_mass:
            return None
        slot = self.mass_slot[self.draft.layer_map[layer]]
        if isinstance(rows, int) and self.reuse_last and rows == self.gamma:
            seen = self._verify_rows[rows - 1]
            return torch.nn.functional.pad(self.rows_mass[rows, slot, :, :, :seen], (0, n_blocks - seen))
        return self.rows_mass[rows, slot, :, :, :n_blocks]

    def _select_rows(self, layer: int, q: torch.Tensor, keys: torch.Tensor) -> Selection:
        """One ``policy.select`` per verified row, with the context that token's own decode step would have."""
        p, n_blocks = self.n_tokens, self._verify_rows[-1]
        summaries = self.cache.summary_view(layer, n_blocks, self.kv_len)
        exact = None
        if self.policy.requires.exact_scores:
            exact = block_attention_mass(q, keys, self.target.spec.scaling, self.config.block_size,
                                         query_positions=self.position + self._row_offsets)
        selections = []
        for r, nb in enumerate(self._verify_rows):
            ctx = self._context(layer, q[:, :, r : r + 1], p + r + 1, nb, self._draft_mass(layer, r, nb),
                                {name: s[:, :, :nb] for name, s in summaries.items()},
                                exact[:, :, r, :nb] if exact is not None else None)
            selections.append(_finalize(self.policy.select(ctx), self.policy, 1, self.target.spec.num_kv_heads, nb))
        return Selection.stack_rows(selections, n_blocks)

    def _select_batched(self, layer: int, q: torch.Tensor) -> Selection:
        """The rows as a batch of ``R`` one-row contexts in one call (draft mass past a row's blocks zeroed)."""
        n_blocks, rows = self._verify_rows[-1], self.rows
        if self._fused_now:  # computed for every slot at the start of the verification (_verify)
            return self._slot_selections[self.mass_slot[self.draft.layer_map[layer]]]
        assert self._row_valid is not None and self._row_newest is not None and self._mass_valid is not None
        mass = self._draft_mass(layer, slice(0, rows), n_blocks)  # [R, 1, H, N]
        if mass is not None:
            mass = mass[:, 0].masked_fill(~self._mass_valid, 0.0)
        ctx = self._context(layer, q[0].transpose(0, 1).unsqueeze(2), self.n_tokens + rows, n_blocks, mass, {}, None)
        mask = self.policy.select(ctx).mask  # [R, Hkv, N]
        mask = (mask & self._row_valid) | self._row_newest
        return Selection(mask.transpose(0, 1).unsqueeze(0))

    # ---- state ------------------------------------------------------------------------------------------

    def _state(self) -> list[torch.Tensor]:
        """Clones of the device state a body advances (restored after the eager warm-up runs of a capture)."""
        return [b.clone() for b in self._state_buffers()]

    def _set_state(self, saved: list[torch.Tensor]) -> None:
        for buf, value in zip(self._state_buffers(), saved, strict=True):
            buf.copy_(value)

    def _state_buffers(self) -> list[torch.Tensor]:
        return [self.draft_token, self.draft_pos, self.draft_row, self.draft_kv_len, self.kv_len, self.reads]

    def snapshot(self) -> SpecSnapshot:
        return SpecSnapshot(self.n_tokens, self.draft_tokens, len(self.records), self.pending.clone(),
                            self.catchup.clone())

    def restore(self, snap: SpecSnapshot) -> None:
        """Back to ``snap``: positions move back, the slots past them are rewritten before anything reads them."""
        self.n_tokens, self.draft_tokens = snap.n_tokens, snap.draft_tokens
        del self.records[snap.rounds :]
        self.pending.copy_(snap.pending)
        self.catchup.copy_(snap.catchup)
        self.generated[snap.n_tokens] = snap.pending.view(())
        self.policy.reset()

    def reset_counters(self) -> None:
        self.reads.zero_()
        self.dense_tokens = 0

    @torch.inference_mode()
    def generate(self, n: int) -> list[int]:
        """The first ``n`` generated tokens (the prefill's token first), running rounds as needed."""
        start = self.prompt_tokens
        while self.n_tokens + 1 - start < n:
            self.round()
        return self.generated_tokens(start, n)

    def generated_tokens(self, start: int, n: int) -> list[int]:
        return [int(x) for x in self.generated[start : start + n].tolist()]

    def kv_summary(self) -> KVAccessSummary:
        """Target KV reads of the verifications since :meth:`reset_counters` (one host synchronisation)."""
        reads = self.reads.tolist()
        return KVAccessSummary({i: (int(r), self.dense_tokens, DENSE_LAYER if i < self.config.dense_layers
                                    else SPARSE) for i, r in enumerate(reads)})


# ---- measuring ------------------------------------------------------------------------------------------


@dataclass
class SpecMeasurement:
    """What :func:`measure_speculation` found: the same rounds replayed from the same start."""

    mode: str
    rounds: int
    gamma: int
    pass_ms: list[float]
    tokens: int
    """Tokens committed per pass (the accepted proposals plus the target's own token, every round)."""
    records: list[RoundRecord]
    breakdown_ms: dict[str, float]
    """ms per round: draft, selection, target_attention, rest (rest = headline ms per round minus the others)."""
    breakdown_source: str
    kv: KVAccessSummary
    token_ids: list[int]
    notes: list[str] = field(default_factory=list)
    captures: int = 0

    @property
    def ms_per_round(self) -> float:
        return statistics.median(self.pass_ms) / self.rounds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens * 1000.0 / statistics.median(self.pass_ms)

    @property
    def proposed(self) -> int:
        return self.rounds * self.gamma

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafted tokens over proposed ones."""
        return sum(r.accepted for r in self.records) / self.proposed if self.proposed else float("nan")

    @property
    def greedy_acceptance_rate(self) -> float:
        """What greedy verification itself accepted (differs from the above only under a fixed pattern)."""
        return sum(r.greedy_accepted for r in self.records) / self.proposed if self.proposed else float("nan")

    @property
    def mean_accepted_length(self) -> float:
        """Tokens committed per round (accepted proposals + the target's token; 1.0 is plain decoding)."""
        return self.tokens / self.rounds


@torch.inference_mode()
def measure_speculation(spec: FastSpeculator, rounds: int, *, repeats: int = 3,
                        log: Callable[[str], None] | None = None) -> SpecMeasurement:
    """``rounds`` rounds from the current state: a warm-up pass (captures), an instrumented pass, then
    ``repeats`` timed passes (CUDA events around the pass, host clock on a CPU); the headline is their median."""
    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    start = spec.snapshot()
    _pass(spec, start, rounds)  # warm-up: compilation, graph capture
    captures = spec.graphs.captures if spec.graphs is not None else 0
    totals, source = _instrumented(spec, start, rounds)
    pass_ms = [_pass(spec, start, rounds) for _ in range(max(1, repeats))]
    if spec.graphs is not None and spec.graphs.captures != captures:
        spec.notes.append("graphs were captured during the timed passes (the rounds did not repeat exactly)")
    records = list(spec.records[start.rounds :])
    tokens = spec.n_tokens - start.n_tokens
    ms_round = statistics.median(pass_ms) / rounds
    breakdown = {name: sum(totals.get(p, 0.0) for p in parts) / rounds for name, parts in BREAKDOWN.items()}
    breakdown["rest"] = max(0.0, ms_round - sum(breakdown.values()))
    for note in spec.notes:
        (log or (lambda _m: None))(f"sparsebench: {note}")
    return SpecMeasurement(
        mode="cuda-graphs" if spec.graphs is not None else "eager", rounds=rounds, gamma=spec.gamma, pass_ms=pass_ms,
        tokens=tokens,
        records=records, breakdown_ms=breakdown, breakdown_source=source, kv=spec.kv_summary(),
        token_ids=spec.generated_tokens(start.n_tokens, tokens + 1), notes=list(dict.fromkeys(spec.notes)),
        captures=captures,
    )


def _pass(spec: FastSpeculator, start: SpecSnapshot, rounds: int) -> float:
    spec.restore(start)
    spec.reset_counters()
    spec.timer = PhaseTracker()
    return time_repeated(spec.device, spec.round, rounds)


def _instrumented(spec: FastSpeculator, start: SpecSnapshot, rounds: int) -> tuple[dict[str, float], str]:
    """Summed ms per engine phase over ``rounds`` rounds, and where the numbers come from."""
    spec.restore(start)
    spec.reset_counters()
    totals: dict[str, float] = {}
    if spec.graphs is not None:
        for _ in range(rounds):
            add_into(totals, spec.round(timed=True))
        return totals, ("draft: CUDA events around the draft steps' graph replays; verification phases: CUDA "
                        "events captured inside its graph")
    timer: Timer = EventTimer() if spec.device.type == "cuda" else WallTimer()
    spec.timer = timer
    try:
        for _ in range(rounds):
            spec.round()
    finally:
        spec.timer = PhaseTracker()
    if spec.device.type == "cuda":
        torch.cuda.synchronize(spec.device)
        return timer.collect(), "eager pass with CUDA events at phase switches (includes host launch gaps)"
    return timer.collect(), "eager pass, host clock (CPU)"
