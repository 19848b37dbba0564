"""A byte-level tokenizer for the tiny random models, and the target/draft tokenizer check.

Why a tokenizer of our own: the tiny models (``tiny:*``) have no trained vocabulary, and tests must not
download one. UTF-8 bytes map to ids 0-255, so any text round-trips and any tiny vocabulary of at least
259 ids can embed it. It implements the subset of the Hugging Face tokenizer interface that sparsebench
uses (``encode``/``decode``/``__call__``/``convert_*``), so code paths need no special case for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from sparsebench.errors import UsageError

#: Text whose token ids must agree between a target and its draft: prose, code, digits, whitespace
#: runs and non-ASCII, where vocabularies of different model families part ways.
PROBE = "The quick brown fox, 3.14159 and 42!\n\tdef f(x): return x ** 2  # naïve café 東京 🙂"


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, plus ``<bos>``=256, ``<eos>``=257 and ``<pad>``=258.

    ``encode`` adds no special tokens (there is no trained convention to follow), so a text of N bytes
    gives N tokens. Ids past 258 that a random model may emit decode to U+FFFD.
    """

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    bos_token = "<bos>"
    eos_token = "<eos>"
    pad_token = "<pad>"
    _SPECIAL: ClassVar[dict[int, str]] = {256: "<bos>", 257: "<eos>", 258: "<pad>"}

    def __init__(self, vocab_size: int = 512, name_or_path: str = "bytes") -> None:
        if vocab_size < 259:
            raise ValueError(f"a byte tokenizer needs at least 259 ids, got vocab_size={vocab_size}")
        self.vocab_size = vocab_size
        self.name_or_path = name_or_path

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, name_or_path={self.name_or_path!r})"

    def encode(self, text: str, add_special_tokens: bool = True, **_: Any) -> list[int]:
        """Token ids of ``text``: its UTF-8 bytes (``add_special_tokens`` is accepted and adds nothing)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int] | Any, skip_special_tokens: bool = False, **_: Any) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); invalid UTF-8 and unused ids become U+FFFD."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        out: list[str] = []
        buf = bytearray()
        for i in ids:
            i = int(i)
            if i < 256:
                buf.append(i)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf.clear()
            if i in self._SPECIAL:
                if not skip_special_tokens:
                    out.append(self._SPECIAL[i])
            else:
                out.append("\ufffd")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def batch_decode(self, batch: Iterable[Any], **kwargs: Any) -> list[str]:
        """``decode`` for each row."""
        return [self.decode(ids, **kwargs) for ids in batch]

    def __call__(self, text: str | Sequence[str], return_tensors: str | None = None,
                 add_special_tokens: bool = True, **_: Any) -> Any:
        """``{"input_ids", "attention_mask"}`` like a Hugging Face tokenizer; ``return_tensors="pt"`` pads.

        A single string gives flat lists (or a 1 x N tensor with ``"pt"``); a list gives one row each.
        """
        from transformers import BatchEncoding

        single = isinstance(text, str)
        rows = [self.encode(t) for t in ([text] if single else text)]
        if return_tensors is None:
            ids: Any = rows[0] if single else rows
            mask: Any = [1] * len(rows[0]) if single else [[1] * len(r) for r in rows]
            return BatchEncoding({"input_ids": ids, "attention_mask": mask})
        if return_tensors != "pt":
            raise ValueError(f"ByteTokenizer supports return_tensors='pt' only, not {return_tensors!r}")
        import torch

        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, r in enumerate(rows):
            ids[n, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[n, : len(r)] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask}, tensor_type="pt")

    def convert_ids_to_tokens(self, ids: int | Iterable[int]) -> str | list[str]:
        """Token strings: ``<0x41>`` for a byte, ``<bos>`` etc. for specials, ``<unused:N>`` past them."""
        if isinstance(ids, int):
            return self._token(ids)
        return [self._token(int(i)) for i in ids]

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]) -> int | list[int]:
        """Inverse of ``convert_ids_to_tokens``."""
        if isinstance(tokens, str):
            return self._id(tokens)
        return [self._id(t) for t in tokens]

    def get_vocab(self) -> dict[str, int]:
        """Token string to id, for all ``vocab_size`` ids."""
        return {self._token(i): i for i in range(self.vocab_size)}

    def _token(self, i: int) -> str:
        if 0 <= i < 256:
            return f"<0x{i:02X}>"
        if i in self._SPECIAL:
            return self._SPECIAL[i]
        if 0 <= i < self.vocab_size:
            return f"<unused:{i}>"
        raise IndexError(f"token id {i} is outside the vocabulary of {self.vocab_size}")

    def _id(self, token: str) -> int:
        for i, name in self._SPECIAL.items():
            if token == name:
                return i
        if token.startswith("<0x") and token.endswith(">"):
            return int(token[3:-1], 16)
        if token.startswith("<unused:") and token.endswith(">"):
            return int(token[8:-1])
        raise KeyError(f"{token!r} is not a ByteTokenizer token")


def _vocab_size(tok: Any) -> int:
    # len() counts added tokens (chat markers etc.), which the embedding must cover; vocab_size alone
    # does not for Hugging Face tokenizers.
    try:
        return len(tok)
    except TypeError:
        return int(tok.vocab_size)


def _probe_ids(tok: Any) -> list[int]:
    enc = tok(PROBE, add_special_tokens=False)
    ids = enc["input_ids"]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]


def check_same_tokenizer(target_tok: Any, draft_tok: Any, target_name: str, draft_name: str) -> None:
    """Raises ``UsageError`` unless the draft's tokenizer matches the target's.

    Why: speculative decoding and draft-guided attention feed the draft the target's token ids; with a
    different vocabulary the draft silently reads other words. Checked: vocabulary size and the ids
    of a probe string covering prose, code, digits and non-ASCII text.
    """
    tv, dv = _vocab_size(target_tok), _vocab_size(draft_tok)
    if tv != dv:
        raise UsageError(
            f"draft {draft_name!r} has a tokenizer of {dv} tokens but target {target_name!r} has {tv}; "
            "a draft must share the target's tokenizer: use a model of the same family or a self-draft "
            "(self:first-half)"
        )
    t_ids, d_ids = _probe_ids(target_tok), _probe_ids(draft_tok)
    if t_ids != d_ids:
        at = next((i for i, (a, b) in enumerate(zip(t_ids, d_ids, strict=False)) if a != b),
                  min(len(t_ids), len(d_ids)))
        raise UsageError(
            f"draft {draft_name!r} tokenizes text differently from target {target_name!r} (first "
            f"difference at token {at}: {t_ids[at:at + 3]} vs {d_ids[at:at + 3]}); a draft must share the "
            "target's tokenizer: use a model of the same family or a self-draft (self:first-half)"
        )
