"""Cross-tokenizer SpecAttn: a draft's attention over its own tokens, mapped onto the target's KV blocks.

Why: no pretrained draft/target pair available offline shares a tokenizer (smollm2-135m, gemma3-270m and
qwen2.5-coder-0.5b use three vocabularies), so a separate draft reads the same *text* as the target,
cut into other tokens. What the two tokenizations share is the text, so the bridge is character offsets:
each draft token's attention mass is spread over the target tokens whose character spans overlap its
own, in proportion to the overlap length, and then summed per target KV block.

Alignment rules (:class:`TokenAlignment`):

* weight ``w[d, t] = overlap(d, t) / sum_t' overlap(d, t')``, so each mapped draft token passes on
  exactly its mass. Byte-level BPE tokens that split one character (a CJK character or an emoji into
  three byte tokens) all report that character's full span, so target spans may overlap each other;
  normalising by the total overlap rather than by the draft span length keeps mass conserved then too.
* a zero-width draft token (a special token such as ``<bos>``, span ``(p, p)``) maps, split evenly, to the
  target's zero-width tokens at the same position ``p``; with none there it is *uncovered*: its mass is
  not mapped (``covered`` says which draft tokens are). A draft token over text that no target token
  covers (a tokenizer whose offsets skip whitespace) is uncovered as well.

Teacher-forced integration (:class:`CrossTokenizerDraft` computes the schedule; ``DecodeSession`` in
:mod:`sparsebench.engine` follows it for a :class:`CrossTokenizerDraftModel`, which ``--draft`` resolves to
when the draft's tokenizer is not the target's):

1. Tokenize the document text with both tokenizers, each with its own special-token convention and
   offsets; the target's ids are the evaluated sequence (cut to ``seq_len``), the draft's ids are what
   the draft reads (:func:`document_schedule`).
2. Step the target one token at a time as today. Before target token ``t`` runs, advance the draft by
   every draft token whose span ends at or before the end of target token ``t`` (prefix maxima of the
   ends on both sides, so the draft is always fed a prefix). That may be zero draft tokens (the target
   token is finer than the draft's: keep the previous step's draft attention), one, or several (the
   draft is finer: feed them as one chunk and keep the attention of the chunk's *last* query row).
   The target prefill of ``P`` tokens pairs with a draft prefill of ``draft_fed(P - 1)`` tokens.
3. Capture the draft's attention per *token* for the last query row of each draft forward
   (:class:`CrossTokenizerCapture`); its ``target_blocks(n_target_tokens)`` maps it through
   :meth:`TokenAlignment.to_target_blocks` to the ``[B, H_draft, N]`` block mass that the SpecAttn policy
   expects today: ``router.draft_attention = capture.target_blocks(session.n_tokens)`` every step, fed
   or not. Draft tokens fed so far end within the target's prefix, so they overlap only target tokens
   already in the target's cache; the draft lags by at most the one draft token that straddles the
   target token's end, which the target's recent blocks cover anyway. Attention sinks line up: the
   draft's first token (its sink when it has no ``<bos>``) maps into target block 0, where the
   target's ``<bos>`` or first token sits.
4. Layer-map calibration (``calibrate.collect_block_attention``) must pair rows the same way: target
   row ``t`` against draft row ``draft_fed(t) - 1`` of a full causal draft pass over the draft's ids,
   mapped onto the target's blocks (:func:`mapped_draft_block_attention`; the KL map then runs on the
   mapped rows unchanged; :func:`cross_tokenizer_kl`). In speculative decoding the draft's proposed text
   is re-tokenised by the target before verification (:mod:`sparsebench.specdec.crosstok`).
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.mass import block_attention_mass
from sparsebench.selection import n_blocks_for
from sparsebench.specattn.capture import Draft


@dataclass(frozen=True)
class Tokenization:
    """Token ids of a text and each token's character span ``(start, end)`` in it."""

    ids: list[int]
    offsets: list[tuple[int, int]]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.offsets):
            raise ValueError(f"{len(self.ids)} token ids but {len(self.offsets)} offsets")
        for start, end in self.offsets:
            if not 0 <= start <= end:
                raise ValueError(f"bad character span ({start}, {end})")

    def __len__(self) -> int:
        return len(self.ids)


def tokenize_with_offsets(tokenizer: Any, text: str, *, add_special_tokens: bool = True) -> Tokenization:
    """``text`` tokenized with character offsets, under the tokenizer's own special-token convention.

    Raises ``UsageError`` naming the tokenizer class when it cannot give offsets (Python "slow" Hugging
    Face tokenizers, custom tokenizers): the mapping cannot be built without them. The project's
    :class:`~sparsebench.models.tokenizers.ByteTokenizer` is handled here (each byte spans its character),
    so tiny models can take part in cross-tokenizer tests.
    """
    from sparsebench.models.tokenizers import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return _byte_offsets(text)
    name = type(tokenizer).__name__
    hint = ("cross-tokenizer SpecAttn maps attention through character offsets; use a fast (Rust-backed) "
            "Hugging Face tokenizer, or a draft that shares the target's tokenizer")
    try:
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    except (NotImplementedError, TypeError, ValueError) as exc:
        raise UsageError(f"tokenizer {name} cannot give character offsets ({exc}); {hint}") from exc
    offsets = enc.get("offset_mapping") if hasattr(enc, "get") else None
    if offsets is None:
        raise UsageError(f"tokenizer {name} does not support return_offsets_mapping; {hint}")
    ids = enc["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else ids
    return Tokenization([int(i) for i in ids], [(int(s), int(e)) for s, e in offsets])


def _byte_offsets(text: str) -> Tokenization:
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for pos, ch in enumerate(text):
        for byte in ch.encode("utf-8"):
            ids.append(byte)
            offsets.append((pos, pos + 1))
    return Tokenization(ids, offsets)


@dataclass
class TokenAlignment:
    """Sparse ``[draft tokens x target tokens]`` weights: how a draft token's mass splits over the target's.

    Stored as entries ``(draft_index, target_index, weight)`` sorted by draft index, so the attention of
    a draft prefix (a draft that has read only part of the text) uses a prefix of the entries.
    """

    draft: Tokenization
    target: Tokenization
    draft_index: torch.Tensor
    """``[E]`` int64, non-decreasing."""
    target_index: torch.Tensor
    """``[E]`` int64."""
    weight: torch.Tensor
    """``[E]`` float32; the weights of each covered draft token sum to 1."""
    covered: torch.Tensor
    """``[T_draft]`` bool: draft tokens whose mass is mapped (see the module docstring for the others)."""
    _on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False)

    @classmethod
    def build(cls, draft_tokenizer: Any, target_tokenizer: Any, text: str) -> TokenAlignment:
        """Tokenize ``text`` with both tokenizers (offsets required) and align them."""
        return cls.from_tokenizations(tokenize_with_offsets(draft_tokenizer, text),
                                      tokenize_with_offsets(target_tokenizer, text))

    @classmethod
    def from_tokenizations(cls, draft: Tokenization, target: Tokenization) -> TokenAlignment:
        """Align two tokenizations of the same text (spans must start in non-decreasing order)."""
        t_starts = [s for s, _ in target.offsets]
        if any(b < a for a, b in itertools.pairwise(t_starts)):
            raise ValueError("target token spans must start in non-decreasing order")
        end_max = _prefix_max([e for _, e in target.offsets])
        zero_width: dict[int, list[int]] = {}
        for t, (s, e) in enumerate(target.offsets):
            if s == e:
                zero_width.setdefault(s, []).append(t)
        d_idx: list[int] = []
        t_idx: list[int] = []
        weights: list[float] = []
        covered = [False] * len(draft)
        for d, (ds, de) in enumerate(draft.offsets):
            if ds == de:
                hits = [(t, 1) for t in zero_width.get(ds, [])]
            else:
                hits = []
                # Targets before `lo` all end at or before the draft token's start.
                for t in range(bisect.bisect_right(end_max, ds), len(target)):
                    ts, te = target.offsets[t]
                    if ts >= de:
                        break
                    overlap = min(de, te) - max(ds, ts)
                    if overlap > 0:
                        hits.append((t, overlap))
            total = sum(n for _, n in hits)
            if total == 0:
                continue
            covered[d] = True
            for t, n in hits:
                d_idx.append(d)
                t_idx.append(t)
                weights.append(n / total)
        return cls(draft, target, torch.tensor(d_idx, dtype=torch.long), torch.tensor(t_idx, dtype=torch.long),
                   torch.tensor(weights, dtype=torch.float32), torch.tensor(covered, dtype=torch.bool))

    def dense(self) -> torch.Tensor:
        """The weights as a dense ``[T_draft, T_target]`` matrix (for inspection and tests)."""
        out = torch.zeros(len(self.draft), len(self.target))
        out[self.draft_index, self.target_index] = self.weight
        return out

    def to_target_tokens(self, draft_attention: torch.Tensor, n_target_tokens: int | None = None) -> torch.Tensor:
        """``[..., K]`` attention over the first ``K`` draft tokens -> ``[..., n_target_tokens]`` (fp32).

        ``n_target_tokens`` (default: all) is the target's current length; mass that would land past it
        goes to its last token (it cannot happen for a draft fed by :class:`CrossTokenizerDraft`'s rule).
        """
        k = draft_attention.shape[-1]
        if k > len(self.draft):
            raise ValueError(f"attention over {k} draft tokens, but the text has {len(self.draft)}")
        n = len(self.target) if n_target_tokens is None else n_target_tokens
        if not 0 < n <= len(self.target):
            raise ValueError(f"n_target_tokens={n} outside 1..{len(self.target)}")
        d_idx, t_idx, w = self._tensors(draft_attention.device)
        cut = int(torch.searchsorted(d_idx, k))  # entries of draft tokens < k
        src = draft_attention.float().index_select(-1, d_idx[:cut]) * w[:cut]
        out = torch.zeros(*draft_attention.shape[:-1], n, dtype=torch.float32, device=draft_attention.device)
        return out.index_add_(-1, t_idx[:cut].clamp(max=n - 1), src)

    def to_target_blocks(self, draft_attention: torch.Tensor, block_size: int,
                         n_target_tokens: int | None = None) -> torch.Tensor:
        """``[..., K]`` draft-token attention -> ``[..., N]`` mass per target KV block of ``block_size``."""
        tokens = self.to_target_tokens(draft_attention, n_target_tokens)
        n = tokens.shape[-1]
        n_blocks = n_blocks_for(n, block_size)
        padded = torch.nn.functional.pad(tokens, (0, n_blocks * block_size - n))
        return padded.unflatten(-1, (n_blocks, block_size)).sum(-1)

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Moved once per device: the mapping runs every decode step.
        if device not in self._on_device:
            self._on_device[device] = (self.draft_index.to(device), self.target_index.to(device),
                                       self.weight.to(device))
        return self._on_device[device]


def _prefix_max(values: list[int]) -> list[int]:
    out: list[int] = []
    best = -1
    for v in values:
        best = max(best, v)
        out.append(best)
    return out


class CrossTokenizerDraft:
    """The teacher-forced feeding schedule of a draft that tokenizes the document differently.

    ``draft_fed(t)`` is how many draft tokens the draft has read once target token ``t`` is fed: the
    longest draft prefix whose spans end at or before the end of target tokens ``0..t`` (see the module
    docstring, step 2). Draft tokens past the end of the text's last target token are never fed.
    """

    def __init__(self, draft_tokenizer: Any, target_tokenizer: Any, text: str) -> None:
        self.alignment = TokenAlignment.build(draft_tokenizer, target_tokenizer, text)
        target_end = _prefix_max([e for _, e in self.alignment.target.offsets])
        draft_end = _prefix_max([e for _, e in self.alignment.draft.offsets])
        self._fed = [bisect.bisect_right(draft_end, end) for end in target_end]

    @property
    def target_ids(self) -> list[int]:
        """The target's token ids of the text (the sequence the engine evaluates, cut to its length)."""
        return self.alignment.target.ids

    @property
    def draft_ids(self) -> list[int]:
        return self.alignment.draft.ids

    def draft_fed(self, target_token: int) -> int:
        """Draft tokens read once target token ``target_token`` (0-based) has been fed."""
        return self._fed[target_token]

    def prefill_ids(self, n_target_tokens: int) -> list[int]:
        """Draft ids to prefill alongside a target prefill of ``n_target_tokens`` tokens."""
        return self.draft_ids[: self._fed[n_target_tokens - 1]] if n_target_tokens > 0 else []

    def step_ids(self, target_token: int) -> list[int]:
        """Draft ids to feed before target token ``target_token`` runs (possibly none)."""
        start = self._fed[target_token - 1] if target_token > 0 else 0
        return self.draft_ids[start: self._fed[target_token]]


@dataclass
class CrossTokenizerCapture:
    """Attention router for a draft with its own tokenizer: keeps the draft's per-token attention.

    Unlike :class:`~sparsebench.specattn.capture.DraftAttentionCapture` (which sums per block in the
    shared token space and captures single-token steps only), it records, for each mapped draft layer,
    the attention of the *last* query row of every forward (a chunk of several draft tokens, or the
    prefill) over the draft's own tokens, and maps it to target blocks on demand: a target step that
    feeds the draft nothing reuses the last capture, mapped onto the target's grown block count.
    """

    alignment: TokenAlignment | None
    """The document's alignment (teacher-forced runs); None when the caller maps the captures itself (speculative
    decoding, whose text grows every round: :mod:`sparsebench.specdec.crosstok`)."""
    block_size: int
    layers: frozenset[int]
    n_draft_tokens: int = 0
    """Draft tokens in the draft's cache after this forward's append (set before each draft forward)."""
    per_token: dict[int, torch.Tensor] = field(default_factory=dict)
    """Draft layer -> ``[B, H_draft, n_draft_tokens]`` attention of the last fed draft token."""
    device: torch.device | str = "cpu"
    """Where the uniform guide of a draft that has read nothing yet is made (the target's device)."""

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                  scaling: float, sliding_window: int | None, softcap: float | None) -> torch.Tensor | None:
        if layer in self.layers:
            last = torch.tensor([self.n_draft_tokens - 1], device=query.device)
            self.per_token[layer] = block_attention_mass(
                query[:, :, -1:], key, scaling, 1, query_positions=last,
                key_offset=self.n_draft_tokens - key.shape[2],  # a sliding-window cache holds only the window
                total_tokens=self.n_draft_tokens, sliding_window=sliding_window, softcap=softcap,
            )[:, :, 0]
        return None  # the draft itself attends densely

    def target_blocks(self, n_target_tokens: int) -> dict[int, torch.Tensor]:
        """Draft layer -> ``[B, H_draft, N]`` mass per target block, ``N`` covering ``n_target_tokens``.

        Before the draft has read any token (a target prefix whose text ends inside the draft's first
        token), every mapped layer gets a uniform ``[1, 1, N]``: the draft knows nothing yet, and a
        uniform guide makes top-p keep nearly every block rather than fail.
        """
        if not self.per_token:
            return uniform_guide(self.layers, n_target_tokens, self.block_size, self.device)
        if self.alignment is None:
            raise ValueError("this capture has no alignment: map its per_token attention with a TokenAlignment")
        return {layer: self.alignment.to_target_blocks(att, self.block_size, n_target_tokens)
                for layer, att in self.per_token.items()}


def uniform_guide(layers: frozenset[int], n_target_tokens: int, block_size: int,
                  device: torch.device | str) -> dict[int, torch.Tensor]:
    """Every layer's ``[1, 1, N]`` uniform block mass: the guide of a draft that has read nothing yet (top-p of it
    keeps nearly every block rather than failing)."""
    n = n_blocks_for(n_target_tokens, block_size)
    return {layer: torch.full((1, 1, n), 1.0 / n, device=device) for layer in layers}


@torch.inference_mode()
def mapped_draft_block_attention(draft: torch.nn.Module, schedule: CrossTokenizerDraft, n_target_tokens: int,
                                 block_size: int, rows: int) -> list[torch.Tensor]:
    """Per draft layer, ``[rows, H_draft, N]``: the draft's attention mapped onto the target's blocks for the
    last ``rows`` of the first ``n_target_tokens`` target positions (the calibration rows of
    :func:`~sparsebench.specattn.calibrate.collect_block_attention` on the target, so ``kl_matrix`` can
    compare them directly).

    Target row ``t`` is paired with draft row ``draft_fed(t) - 1`` of one causal pass over the draft's ids
    (module docstring, step 4); ``N`` covers ``n_target_tokens`` like the target's rows.
    """
    from sparsebench.specattn.calibrate import collect_block_attention

    if not 0 < rows <= n_target_tokens <= len(schedule.target_ids):
        raise ValueError(f"need 0 < rows={rows} <= n_target_tokens={n_target_tokens} <= "
                         f"{len(schedule.target_ids)} target tokens")
    draft_rows = torch.tensor([schedule.draft_fed(t) - 1 for t in range(n_target_tokens - rows, n_target_tokens)])
    if int(draft_rows[0]) < 0:
        raise ValueError(f"target token {n_target_tokens - rows} ends before the draft's first token: "
                         "take fewer calibration rows")
    n_draft = int(draft_rows[-1]) + 1
    first = int(draft_rows[0])
    device = next(draft.parameters()).device
    ids = torch.tensor([schedule.draft_ids[:n_draft]], device=device)
    per_layer = collect_block_attention(draft, ids, 1, n_draft - first)  # [draft rows first.., H, n_draft]
    picked = (draft_rows - first).to(per_layer[0].device)
    return [schedule.alignment.to_target_blocks(att.index_select(0, picked), block_size, n_target_tokens)
            for att in per_layer]


@dataclass
class CrossTokenizerDraftModel(Draft):
    """A separate draft model that reads the text through its own tokenizer.

    Why a subclass rather than a flag on :class:`~sparsebench.specattn.capture.Draft`: everything that
    handles a draft keeps working on the shared fields (model, layer map, name), and the code paths that
    must feed the draft its own tokens (the teacher-forced session, speculative decoding) recognise it by
    type and fail loudly if they cannot.
    """

    tokenizer: Any = None
    """The draft's own tokenizer (with character offsets)."""
    target_tokenizer: Any = None
    """The target's tokenizer: the other side of every alignment."""

    def schedule(self, text: str, seq_len: int) -> CrossTokenizerDraft:
        """The feeding schedule of a document whose first ``seq_len`` target tokens are evaluated."""
        return document_schedule(self.tokenizer, self.target_tokenizer, text, seq_len)


def document_schedule(draft_tokenizer: Any, target_tokenizer: Any, text: str, seq_len: int) -> CrossTokenizerDraft:
    """:class:`CrossTokenizerDraft` over a prefix of ``text`` holding more than ``seq_len`` target tokens.

    Only a prefix is tokenized (grown by doubling from ``8 * seq_len`` characters, the rule of
    :func:`sparsebench.data.tokenize_documents`), so a whole book costs little; ending past target token
    ``seq_len`` keeps the cut from splitting a token that is evaluated. Callers compare
    ``target_ids[:seq_len]`` with the ids they evaluate (:func:`check_schedule`).
    """
    chars = seq_len * 8
    while True:
        schedule = CrossTokenizerDraft(draft_tokenizer, target_tokenizer, text[:chars])
        if len(schedule.target_ids) > seq_len or chars >= len(text):
            return schedule
        chars *= 2


def check_schedule(schedule: CrossTokenizerDraft, ids: list[int], what: str) -> None:
    """Raise unless the schedule's target ids start with ``ids`` (the sequence being evaluated)."""
    if schedule.target_ids[: len(ids)] != list(ids):
        raise RuntimeError(f"{what}: the target's offset tokenization differs from its plain tokenization; "
                           "cross-tokenizer mapping would be misaligned")


def check_offsets(tokenizer: Any, role: str, name: str) -> None:
    """``UsageError`` naming the tokenizer when it cannot give character offsets (checked before any
    slow work, so a bad pairing fails at once)."""
    try:
        tokenize_with_offsets(tokenizer, "Offsets probe: naïve café, x = 3.")
    except UsageError as exc:
        raise UsageError(f"the {role} {name!r}: {exc}") from exc


@torch.inference_mode()
def cross_tokenizer_kl(target: torch.nn.Module, draft: torch.nn.Module, schedules: list[CrossTokenizerDraft],
                       *, seq_len: int, block_size: int, rows: int, progress: bool = True) -> torch.Tensor:
    """KL matrix ``[L_target, L_draft]`` between the target's block attention and the draft's mapped onto
    the target's blocks, over the last ``rows`` positions of each schedule's first ``seq_len`` target
    tokens (the cross-tokenizer counterpart of :func:`~sparsebench.specattn.calibrate.compute_layer_map`)."""
    from tqdm.auto import tqdm

    from sparsebench.specattn.calibrate import collect_block_attention
    from sparsebench.specattn.layermap import kl_matrix

    device = next(target.parameters()).device
    target_rows: list[list[torch.Tensor]] = []
    draft_rows: list[list[torch.Tensor]] = []
    for schedule in tqdm(schedules, desc="layer map: calibration (cross-tokenizer)", unit="seq",
                         disable=not progress):
        ids = torch.tensor([schedule.target_ids[:seq_len]], device=device)
        target_rows.append(collect_block_attention(target, ids, block_size, rows))
        draft_rows.append([r.float().cpu()
                           for r in mapped_draft_block_attention(draft, schedule, seq_len, block_size, rows)])

    def cat(per_seq: list[list[torch.Tensor]]) -> list[torch.Tensor]:  # same seq_len: same block count
        return [torch.cat([layers[i] for layers in per_seq]) for i in range(len(per_seq[0]))]

    return kl_matrix(cat(target_rows), cat(draft_rows))
