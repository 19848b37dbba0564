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
SpecAttn-guided verification (the draft's attention per verified target row) is not offered here.
"""

from __future__ import annotations

import torch

from sparsebench.engine import EngineConfig, PhaseClock
from sparsebench.errors import UsageError
from sparsebench.hf_attention import use_router
from sparsebench.kernels.base import AttentionBackend
from sparsebench.policy import Policy
from sparsebench.specattn.crosstok import CrossTokenizerDraftModel
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
        if policy.requires.draft_attention:
            raise UsageError(f"policy {policy.name!r} reads the draft's attention for every verified row, which is "
                             f"not implemented for a draft with its own tokenizer ({draft.name!r}); measure "
                             "acceptance with --policy dense, and SpecAttn's quality with run/compare")
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

    # ------------------------------------------------------------------------------------------------

    def _text(self, target_ids: list[int]) -> str:
        return self.cross_draft.target_tokenizer.decode(target_ids, skip_special_tokens=True)

    def _draft_encode(self, text: str) -> list[int]:
        return [int(i) for i in self.cross_draft.tokenizer.encode(text, add_special_tokens=True)]

    def _feed(self, ids: list[int]) -> torch.Tensor:
        """The draft reads ``ids`` (non-empty); returns its last logits ``[1, V_draft]``."""
        logits = self._draft_step(torch.tensor([ids], dtype=torch.long, device=self.device))
        self.draft_tokens.extend(ids)
        return logits

    def _prefill_draft(self, prompt: torch.Tensor) -> None:
        """The draft reads its own tokenization of the prompt's text."""
        self.draft_tokens = []
        self.draft_proposed = 0
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
        logits = self._feed(want[keep:])
        proposals: list[int] = []
        for index in range(gamma):
            token = int(logits.argmax(dim=-1))
            if token in self._draft_specials:
                break
            proposals.append(token)
            if index + 1 < gamma:  # the last proposal is read next round, if it is kept
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
            tokens = torch.tensor([[sequence[-1], *proposed]], dtype=torch.long, device=self.device)
            router.row_draft_attention = []
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
