"""Speculative decoding with a draft that has its own tokenizer: the draft proposes text, the target verifies
its own tokens of that text.

Why: no pretrained draft/target pair available offline shares a vocabulary (issue 8), so a draft's token
ids mean nothing to the target. What the two share is text. One greedy round, for a committed target
sequence whose last token ``x`` the target has not yet seen:

1. **Draft.** Decode the committed target ids to text and tokenize it with the draft's tokenizer. The
   draft's KV cache is cropped to the longest common prefix of what it holds and these ids (the text of a
   committed token may merge with the draft's last token, so the draft can need to re-read a little), it
   reads the rest, then proposes ``gamma`` tokens greedily in its own vocabulary (stopping at any of its
   special tokens, which carry no text).
2. **Re-tokenise.** The proposal's text (the draft's decoding of everything minus that of the committed
   part) is tokenised by the target: when the target's tokenization of the committed text plus the proposal
   starts with the committed ids, the candidates are its remaining ids (the canonical split, so a word
   the proposal completes is not cut at the seam); otherwise the proposal's text alone. At most ``gamma``
   target tokens are verified per round, a trailing incomplete UTF-8 character (decoded as U+FFFD) is
   dropped.
3. **Verify and accept** exactly as :class:`~sparsebench.specdec.decoder.SpeculativeDecoder` does, on
   target tokens (greedy): the longest prefix of candidates equal to the target's argmax, then the
   target's own token. The output is therefore the target's greedy decoding whatever the draft proposes;
   the draft only changes how many target tokens each verification commits.

Acceptance is counted in target tokens (proposed = candidates verified). Greedy only: rejection sampling
needs the draft's probability of each *target* token, which a draft of another vocabulary does not give.

SpecAttn-guided verification (a policy that reads the draft's attention, e.g. ``--policy specattn``). The draft
also reads its last proposal, and each of its forwards keeps the attention of its last query row over its own
tokens (:class:`~sparsebench.specattn.crosstok.CrossTokenizerCapture`). Verified row ``r`` (target token ``i``)
takes the capture of the latest forward whose tokens all end within target token ``i``'s text (the teacher-forced
rule, :class:`~sparsebench.specattn.crosstok.CrossTokenizerDraft`), mapped onto the target's blocks through
character offsets of the round's text: the committed text plus the proposal. Offsets of the target's tokens are
the lengths of its decoded prefixes (its generated tokens need not be the canonical split of their text), those of
the draft's the tokenizer's own offsets of the committed text, then its decoded proposals. At ``p = 1`` the output
is the target's greedy decoding, as with dense verification.
"""

from __future__ import annotations

import bisect
from typing import Any

import torch

from sparsebench.engine import EngineConfig, PhaseClock
from sparsebench.errors import UsageError
from sparsebench.hf_attention import use_router
from sparsebench.kernels.base import AttentionBackend
from sparsebench.policy import Policy
from sparsebench.specattn.crosstok import (
    CrossTokenizerCapture,
    CrossTokenizerDraftModel,
    TokenAlignment,
    Tokenization,
    _prefix_max,
    tokenize_with_offsets,
    uniform_guide,
)
from sparsebench.specdec.acceptance import accept_greedy
from sparsebench.specdec.decoder import SpeculationConfig, SpeculativeDecoder, _crop

_REPLACEMENT = "\ufffd"  # what decoding an incomplete UTF-8 byte sequence gives


class CrossTokenizerSpeculativeDecoder(SpeculativeDecoder):
    """Greedy speculative decoding where the draft reads and proposes in its own vocabulary."""

    reads_own_tokens = True

    def __init__(self, model: torch.nn.Module, draft: CrossTokenizerDraftModel, policy: Policy,
                 backend: AttentionBackend, config: EngineConfig | None = None,
                 speculation: SpeculationConfig | None = None) -> None:
        if not isinstance(draft, CrossTokenizerDraftModel):
            raise TypeError(f"expected a CrossTokenizerDraftModel, got {type(draft).__name__}")
        if speculation is not None and speculation.sampling:
            raise UsageError(f"draft {draft.name!r} has its own tokenizer: speculative sampling needs the draft's "
                             "probability of each target token, so only greedy decoding is supported (drop --sampling)")
        super().__init__(model, draft, policy, backend, config, speculation)
        self.cross_draft = draft
        self.draft_tokens: list[int] = []
        """The draft's ids in its KV cache (its tokenization of a prefix of the committed text)."""
        self.draft_proposed = 0
        """Draft tokens proposed over the last generation (in the draft's vocabulary)."""
        tok = draft.tokenizer
        specials = getattr(tok, "all_special_ids", None) or [getattr(tok, f"{k}_token_id", None)
                                                            for k in ("bos", "eos", "pad")]
        self._draft_specials = {int(i) for i in specials if i is not None}
        self.cross_capture: CrossTokenizerCapture | None = None
        """With a draft-attention policy: the draft's per-token attention of each forward's last row."""
        if self.capture is not None:  # the shared-vocabulary capture sums blocks of the draft's own tokens
            self.cross_capture = CrossTokenizerCapture(None, self.config.block_size, self.capture.layers,
                                                       device=self.device)
            self.capture = None
        self._snapshots: list[tuple[int, dict[int, torch.Tensor]]] = []
        """This round's captures: (draft tokens read after the forward, draft layer -> attention over them)."""
        self._target_ends: list[int] = []
        """Character end of each committed target token in the decoded text (prefix maxima)."""

    # ------------------------------------------------------------------------------------------------

    def _text(self, target_ids: list[int]) -> str:
        return self.cross_draft.target_tokenizer.decode(target_ids, skip_special_tokens=True)

    def _draft_encode(self, text: str) -> list[int]:
        return [int(i) for i in self.cross_draft.tokenizer.encode(text, add_special_tokens=True)]

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """The draft reads ``ids`` (non-empty); returns its last logits ``[1, V_draft]`` (and, with a
        draft-attention policy, keeps the last row's attention as this round's next snapshot)."""
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        capture = self.cross_capture
        if capture is None:
            logits = self._draft_step(tokens)
        else:
            assert self.draft_cache is not None
            capture.n_draft_tokens = len(self.draft_tokens) + len(ids)
            capture.per_token = {}
            with use_router(capture):
                logits = self._forward(self.draft.model, tokens, self.draft_cache, **self._keep_last)[-1:]
            self._snapshots.append((capture.n_draft_tokens, dict(capture.per_token)))
        self.draft_tokens.extend(ids)
        return logits

    def _prefill_draft(self, prompt: torch.Tensor) -> None:
        """The draft reads its own tokenization of the prompt's text."""
        self.draft_tokens = []
        self.draft_proposed = 0
        self._target_ends = []
        ids = self._draft_encode(self._text(prompt[0].tolist()))
        if ids:
            self._feed(ids)

    def propose_text(self, committed: list[int], gamma: int) -> str:
        """Roll the draft back to what still matches the committed text, let it propose ``gamma`` tokens,
        and return their text (empty when it proposes none)."""
        assert self.draft_cache is not None
        want = self._draft_encode(self._text(committed))
        if not want:
            return ""
        keep = 0
        for a, b in zip(self.draft_tokens, want, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(want) - 1)  # the draft must read at least one token to have logits
        _crop(self.draft_cache, keep)
        del self.draft_tokens[keep:]
        self._snapshots = []
        logits = self._feed(want[keep:])
        proposals: list[int] = []
        for index in range(gamma):
            token = int(logits.argmax(dim=-1))
            if token in self._draft_specials:
                break
            proposals.append(token)
            # The last proposal is read next round if it is kept, or now when its attention guides a row.
            if index + 1 < gamma or self.cross_capture is not None:
                logits = self._feed([token])
        self.draft_proposed += len(proposals)
        if not proposals:
            return ""
        decode = self.cross_draft.tokenizer.decode
        base, full = decode(want, skip_special_tokens=True), decode(want + proposals, skip_special_tokens=True)
        text = full[len(base):] if full.startswith(base) else decode(proposals, skip_special_tokens=True)
        return text.rstrip(_REPLACEMENT)

    def candidates(self, committed: list[int], text: str, limit: int) -> list[int]:
        """At most ``limit`` target tokens continuing ``committed`` with ``text`` (see the module docstring)."""
        if not text or limit < 1:
            return []
        tokenizer = self.cross_draft.target_tokenizer
        whole = [int(i) for i in tokenizer.encode(self._text(committed) + text, add_special_tokens=True)]
        if whole[: len(committed)] == committed and len(whole) > len(committed):
            return whole[len(committed): len(committed) + limit]
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)][:limit]

    def _round(self, sequence: list[int], gamma: int, clock: PhaseClock, n_prompt: int) -> tuple[list[int], int]:
        assert self.cache is not None
        router = self.router
        n_cached = len(sequence) - 1  # the target has seen every committed token but the last
        with clock.span("round"):
            with clock.span("draft"):
                proposed = self.candidates(sequence, self.propose_text(sequence, gamma), gamma)
                router.row_draft_attention = (self._row_attention(sequence, proposed)
                                              if self.cross_capture is not None else [])
            tokens = torch.tensor([[sequence[-1], *proposed]], dtype=torch.long, device=self.device)
            router.step = n_cached - n_prompt
            router.decoding = True
            with use_router(router):
                logits = self._forward(self.model, tokens, self.cache)  # [len(proposed) + 1, V]
            accepted, nxt = accept_greedy(logits, tokens[0, 1:])
            keep = n_cached + 1 + accepted
            _crop(self.cache, keep)
            router.summaries.crop(keep)
            new = [*proposed[:accepted], int(nxt)]
        return new, len(proposed)

    # ------------------------------------------------------------------------------------------------
    # SpecAttn-guided verification

    def _ends(self, ids: list[int], start: int, known: list[int], decode: Any) -> list[int]:
        """``known`` extended to the character ends of ``ids[start:]``: the lengths of the decoded prefixes,
        kept non-decreasing (a prefix ending inside a UTF-8 character decodes to a replacement character)."""
        ends = list(known[:start])
        for i in range(start, len(ids)):
            ends.append(max(len(decode(ids[: i + 1], skip_special_tokens=True)), ends[-1] if ends else 0))
        return ends

    def _draft_tokenization(self, text: str, n_committed: int) -> Tokenization:
        """The draft's tokens in its cache (its split of the committed ``text``, then its proposals) with spans."""
        tok, ids = self.cross_draft.tokenizer, self.draft_tokens
        committed = ids[:n_committed]
        mine = tokenize_with_offsets(tok, text)
        if mine.ids == committed:
            ends = _prefix_max([e for _, e in mine.offsets])
        else:  # the tokenizer's offsets describe another split: fall back to decoded lengths
            ends = self._ends(committed, 0, [], tok.decode)
        base = tok.decode(committed, skip_special_tokens=True)
        for i in range(n_committed, len(ids)):
            full = tok.decode(ids[: i + 1], skip_special_tokens=True)
            grown = len(full) - len(base) if full.startswith(base) else len(tok.decode(ids[n_committed: i + 1],
                                                                                    skip_special_tokens=True))
            ends.append(max(len(text) + grown, ends[-1] if ends else 0))
        return _spans(ids, ends)

    def _row_attention(self, sequence: list[int], proposed: list[int]) -> list[dict[int, torch.Tensor]]:
        """Per verified row (the committed last token, then each candidate): draft layer -> ``[1, H_draft, N_row]``
        mass over the target's blocks (see the module docstring)."""
        capture = self.cross_capture
        assert capture is not None
        decode = self.cross_draft.target_tokenizer.decode
        self._target_ends = self._ends(sequence, len(self._target_ends), self._target_ends, decode)
        target_ids = [*sequence, *proposed]
        target_ends = self._ends(target_ids, len(sequence), self._target_ends, decode)
        text = self._text(sequence)
        n_committed = self._snapshots[0][0] if self._snapshots else len(self.draft_tokens)
        draft = self._draft_tokenization(text, n_committed)
        alignment = TokenAlignment.from_tokenizations(draft, _spans(target_ids, target_ends))
        draft_end = [e for _, e in draft.offsets]
        positions = [n for n, _ in self._snapshots]
        rows = []
        for r in range(len(proposed) + 1):
            i = len(sequence) - 1 + r
            fed = bisect.bisect_right(draft_end, target_ends[i])  # draft tokens ending within target token i
            pick = max(0, bisect.bisect_right(positions, fed) - 1)
            if not self._snapshots or not self._snapshots[pick][1]:
                rows.append(uniform_guide(capture.layers, i + 1, capture.block_size, self.device))
                continue
            rows.append({layer: alignment.to_target_blocks(att, capture.block_size, i + 1)
                         for layer, att in self._snapshots[pick][1].items()})
        return rows


def _spans(ids: list[int], ends: list[int]) -> Tokenization:
    """A tokenization whose token ``i`` spans from the previous token's end to its own (ends non-decreasing)."""
    return Tokenization(list(ids), [(ends[i - 1] if i else 0, end) for i, end in enumerate(ends)])
