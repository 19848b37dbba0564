"""Training text for distillation: a token stream, a held-out split, and a resumable window order.

Held-out split. Of each corpus, the first ``holdout`` documents in the order ``sparsebench run`` and
``compare`` pick documents (:func:`~sparsebench.data.select_documents` with seed 0) are kept out of
training, so the books a Table-1 row is measured on (``--docs N`` with N <= holdout, default seed) were
never seen by the draft. Perplexity and acceptance are measured on the first corpus's held-out
documents. A corpus with no more than ``holdout`` documents (a single file) gives up its last tenth of
tokens instead.

Window order. The training stream is cut into non-overlapping windows of ``seq_len`` tokens (each
starting with the special tokens the tokenizer puts at the start of a text, e.g. Gemma's ``<bos>``, so
the draft trains on sequences shaped like the ones it will decode). Epoch ``e`` visits them in a
permutation drawn from ``seed`` and ``e`` alone, so batch ``k`` is a pure function of ``k``: resuming
needs only the number of batches consumed, and an interrupted run sees exactly the data an
uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsebench.data import load_corpus, select_documents
from sparsebench.distill.store import save_atomic
from sparsebench.errors import UsageError

HOLDOUT_SEED = 0
"""The document order the held-out split follows: ``run``/``compare``'s default ``--seed``."""


def start_tokens(tokenizer: Any) -> list[int]:
    """The ids a tokenizer puts before a text's own tokens (``[<bos>]`` for Gemma, ``[]`` for SmolLM2)."""
    with_special = list(tokenizer.encode("a", add_special_tokens=True))
    plain = list(tokenizer.encode("a", add_special_tokens=False))
    if len(with_special) > len(plain) and with_special[-len(plain):] == plain:
        return with_special[: len(with_special) - len(plain)]
    return []


def _encode_many(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens (one batched call: fast tokenizers parallelise it)."""
    if not texts:
        return []
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(map(int, row)) for row in ids]


@dataclass
class TokenData:
    """The training and held-out token streams of one or more corpora."""

    train: torch.Tensor
    """1-D long: every training document's tokens, each followed by the end-of-sequence id (if any)."""
    heldout: torch.Tensor
    """1-D long: the held-out text of the first corpus, laid out the same way."""
    start: list[int]
    """Special tokens each window starts with (see :func:`start_tokens`)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Corpora, their origins, the held-out document ids and token counts (goes into the report)."""

    def fingerprint(self) -> str:
        """A short hash of the training stream: a resumed run must see the same data."""
        digest = hashlib.sha256()
        digest.update(str((self.train.numel(), self.start)).encode())
        digest.update(self.train[:4096].numpy().tobytes())
        digest.update(self.train[-4096:].numpy().tobytes())
        return digest.hexdigest()[:16]


def load_token_data(datasets: Sequence[str], tokenizer: Any, *, holdout: int, data_dir: str | None,
                    data_source: str, log: Callable[[str], None], cache_dir: Path | None = None) -> TokenData:
    """Tokenize ``datasets`` (names or paths, see :func:`~sparsebench.data.load_corpus`) and split them.

    With ``cache_dir`` the result is cached there, keyed by the corpora (name, origin, document ids), the
    hold-out count and the tokenizer's behaviour on a probe text: tokenizing PG-19 takes tens of seconds,
    which a resumed run or a second draft of the same target should not pay again.
    """
    corpora = [load_corpus(name, data_dir=data_dir, source=data_source, log=log) for name in datasets]
    key = _cache_key(corpora, holdout, tokenizer)
    cached = cache_dir / f"tokens-{key}.pt" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        saved = torch.load(cached, weights_only=False)
        return TokenData(saved["train"], saved["heldout"], saved["start"], saved["info"])
    eos = getattr(tokenizer, "eos_token_id", None)
    sep = [eos] if isinstance(eos, int) else []

    def stream_of(docs: Sequence[Any]) -> list[int]:
        return [t for ids in _encode_many(tokenizer, [d.text for d in docs]) for t in [*ids, *sep]]

    train: list[int] = []
    heldout: list[int] = []
    info: dict[str, Any] = {"corpora": [], "holdout_documents": holdout, "holdout_seed": HOLDOUT_SEED}
    for n, (name, corpus) in enumerate(zip(datasets, corpora, strict=True)):
        docs = select_documents(corpus.documents, HOLDOUT_SEED)
        entry: dict[str, Any] = {"name": name, "origin": corpus.origin, "documents": len(docs)}
        if len(docs) > holdout:
            stream, held_stream = stream_of(docs[holdout:]), stream_of(docs[:holdout])
            entry["heldout_ids"] = [d.id for d in docs[:holdout]]
        else:
            whole = stream_of(docs)
            cut = len(whole) - max(1, len(whole) // 10)
            stream, held_stream = whole[:cut], whole[cut:]
            entry["heldout_ids"] = []
            entry["heldout_note"] = f"{len(docs)} document(s), not more than --holdout-docs; last tenth held out"
        entry["train_tokens"], entry["heldout_tokens"] = len(stream), len(held_stream)
        info["corpora"].append(entry)
        train.extend(stream)
        if n == 0:
            heldout = held_stream
    info["train_tokens"], info["heldout_tokens"] = len(train), len(heldout)
    data = TokenData(torch.tensor(train, dtype=torch.long), torch.tensor(heldout, dtype=torch.long),
                     start_tokens(tokenizer), info)
    if cached is not None:
        save_atomic({"train": data.train, "heldout": data.heldout, "start": data.start, "info": data.info}, cached)
    return data


def _cache_key(corpora: Sequence[Any], holdout: int, tokenizer: Any) -> str:
    from sparsebench.models.tokenizers import PROBE

    blob = json.dumps({"format": 1, "holdout": holdout, "holdout_seed": HOLDOUT_SEED,
                       "corpora": [[c.name, c.origin, sorted(d.id for d in c.documents)] for c in corpora],
                       "tokenizer": [type(tokenizer).__name__, len(tokenizer), start_tokens(tokenizer),
                                     getattr(tokenizer, "eos_token_id", None), _encode_many(tokenizer, [PROBE])]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cut_windows(stream: torch.Tensor, seq_len: int, start: Sequence[int], limit: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows ``[W, seq_len]`` of ``stream``, each led by ``start``."""
    body = seq_len - len(start)
    if body < 1:
        raise UsageError(f"--seq-len {seq_len} leaves no room after the {len(start)} start token(s)")
    count = stream.numel() // body if limit is None else min(limit, stream.numel() // body)
    windows = stream[: count * body].view(count, body)
    if start:
        windows = torch.cat([torch.tensor([list(start)] * count, dtype=torch.long).view(count, -1), windows], 1)
    return windows


class WindowSampler:
    """Batch ``k`` of training windows, as a pure function of ``k`` (see the module docstring)."""

    def __init__(self, data: TokenData, seq_len: int, batch_size: int, seed: int) -> None:
        self.windows = cut_windows(data.train, seq_len, data.start)
        self.batch_size = batch_size
        self.seed = seed
        if self.windows.shape[0] < batch_size:
            raise UsageError(f"the training text gives {self.windows.shape[0]} window(s) of --seq-len {seq_len} "
                             f"tokens ({data.train.numel()} tokens), fewer than --batch-size {batch_size}; "
                             "give more text (--dataset) or lower --seq-len / --batch-size")
        self._orders: dict[int, torch.Tensor] = {}

    @property
    def per_epoch(self) -> int:
        """Training windows in one pass over the text."""
        return int(self.windows.shape[0])

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders = {epoch: torch.randperm(self.per_epoch, generator=generator)}
        return self._orders[epoch]

    def batch(self, k: int) -> torch.Tensor:
        """``[batch_size, seq_len]`` token ids of batch ``k`` (0-based)."""
        rows = []
        for position in range(k * self.batch_size, (k + 1) * self.batch_size):
            epoch, index = divmod(position, self.per_epoch)
            rows.append(self.windows[self._order(epoch)[index]])
        return torch.stack(rows)
