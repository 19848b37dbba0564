"""A frequency-ranked reduced output vocabulary for a distilled draft (``sparsebench distill --head-vocab K``).

Why: a few-layer draft of smollm2-135m still carries the target's whole 49152 x 576 output head, which
then costs more than its decoder layers (a 4-layer draft is 3.2x cheaper than the target, not 7.5x), so a
deeper, better draft is unaffordable. Following FR-Spec (Zhao et al., 2025), the draft's head computes
logits only for the ``K`` token ids that occur most often in its training text; a token outside them can
never be proposed. Greedy verification only accepts the target's argmax, and the target's argmax is
rarely a rare token, so little acceptance is lost; what a proposal costs drops by ``(V - K) * hidden``
multiply-adds per token.

The chosen ids: the tokenizer's special ids (beginning/end of sequence, padding: a draft must be able to
propose the end of a text) and then the most frequent ids of the training windows (never the held-out
documents), ties broken by the lower id, sorted ascending. ``K`` is the number of rows in all, specials
included, so that it is exactly the head size the cost is counted with (and a round ``K`` keeps the
matmul's shape friendly to tensor cores).

Saving: the draft's weights keep the full head, so ``from_pretrained`` loads the directory as an ordinary
full-vocabulary model; the ids live in ``head_vocab.json`` beside them, with how they were chosen, and
:func:`sparsebench.distill.store.load_distilled` installs the reduced head (:class:`SubsetHead`) on the
loaded model. Speculative decoding and the fast engine's :class:`~sparsebench.fastdecode.model.FastModel`
(``from_hf``) pick it up from there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsebench.errors import UsageError

HEAD_VOCAB_FILE = "head_vocab.json"
FORMAT = 1
SPECIAL_ATTRIBUTES = ("bos_token_id", "eos_token_id", "pad_token_id")


def special_ids(tokenizer: Any, vocab_size: int) -> list[int]:
    """The tokenizer's beginning/end-of-sequence and padding ids that exist and fit the vocabulary, sorted."""
    found = set()
    for attribute in SPECIAL_ATTRIBUTES:
        value = getattr(tokenizer, attribute, None)
        if isinstance(value, int) and 0 <= value < vocab_size:
            found.add(value)
    return sorted(found)


def check_head_vocab(k: int, vocab_size: int, specials: Sequence[int] = ()) -> None:
    """A ``UsageError`` unless ``len(specials) <= k <= vocab_size``."""
    if k < max(1, len(specials)):
        need = f"the {len(specials)} special ids ({', '.join(map(str, specials))})" if specials else "one row"
        raise UsageError(f"--head-vocab must be at least {max(1, len(specials))} (room for {need}), got {k}")
    if k > vocab_size:
        raise UsageError(f"--head-vocab {k} exceeds the target's vocabulary of {vocab_size} tokens; give at most "
                         f"{vocab_size} (or leave it out for the full head)")


def choose_head_vocab(tokens: torch.Tensor, vocab_size: int, k: int, specials: Sequence[int] = ()) -> list[int]:
    """``k`` ids, sorted: ``specials`` first, then the ids most frequent in ``tokens`` (ties: lower id first).

    ``tokens`` are the training windows only: held-out text must not decide what the draft can propose.
    Ids that never occur fill the remaining rows in id order when ``k`` exceeds the ids seen.
    """
    check_head_vocab(k, vocab_size, specials)
    flat = tokens.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= vocab_size):
        raise ValueError(f"token ids outside 0 .. {vocab_size - 1} in the training windows")
    counts = torch.bincount(flat, minlength=vocab_size)
    order = torch.sort(counts, descending=True, stable=True).indices  # stable: equal counts keep id order
    chosen = set(specials)
    for token in order.tolist():
        if len(chosen) >= k:
            break
        chosen.add(token)
    return sorted(chosen)


def coverage(tokens: torch.Tensor, ids: Sequence[int], vocab_size: int) -> float:
    """Fraction of ``tokens`` whose id is among ``ids``."""
    if tokens.numel() == 0:
        return float("nan")
    member = torch.zeros(vocab_size, dtype=torch.bool)
    member[torch.as_tensor(list(ids), dtype=torch.long)] = True
    return float(member[tokens.reshape(-1).long()].float().mean())


class SubsetHead(nn.Module):
    """An output head computing logits only for ``ids`` (``[K]``, sorted) of a full head's ``weight`` ``[V, H]``.

    ``vocab_size=None`` (training): returns ``[..., K]``, the logits of ``ids`` in order, differentiable in
    ``weight`` (its rows are gathered on every call, so a trained head stays in step). ``vocab_size=V``
    (inference): returns ``[..., V]`` with ``-inf`` outside ``ids``, so the code that reads a draft's logits
    (argmax, softmax for speculative sampling, vocabulary checks) works unchanged and never picks an id
    outside the head; the ``K`` rows are copied once (an inference head is frozen), so each call is one
    ``[K, H]`` matmul plus filling the ``V`` outputs.

    ``weight`` stays registered under its name, so the model's state dict keeps its usual keys (and the
    fast engine's weight conversion still finds ``lm_head.weight``); the ids are a non-persistent buffer.
    """

    def __init__(self, weight: nn.Parameter | torch.Tensor, ids: torch.Tensor, bias: torch.Tensor | None = None, *,
                 vocab_size: int | None = None) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.vocab_size = vocab_size
        self.register_buffer("head_ids", ids.to(device=weight.device, dtype=torch.long), persistent=False)
        rows = weight.detach().index_select(0, self.head_ids) if vocab_size is not None else None
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("row_bias", bias.detach().index_select(0, self.head_ids)
                             if vocab_size is not None and bias is not None else None, persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.vocab_size is None:
            bias = self.bias.index_select(0, self.head_ids) if self.bias is not None else None
            return F.linear(hidden, self.weight.index_select(0, self.head_ids), bias)
        assert self.rows is not None
        sub = F.linear(hidden, self.rows.to(hidden.dtype), None if self.row_bias is None else
                       self.row_bias.to(hidden.dtype))
        out = sub.new_full((*sub.shape[:-1], self.vocab_size), float("-inf"))
        return out.index_copy_(-1, self.head_ids, sub)


def head_ids_of(model: nn.Module) -> torch.Tensor | None:
    """The ids a model's installed :class:`SubsetHead` computes, or None for an ordinary head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head.head_ids if isinstance(head, SubsetHead) else None


def head_rows(model: nn.Module) -> int:
    """Rows of the output head a forward pass computes (``K`` with a :class:`SubsetHead`, else ``V``)."""
    ids = head_ids_of(model)
    return int(ids.numel()) if ids is not None else int(model.get_output_embeddings().weight.shape[0])


def install_head(model: nn.Module, ids: Sequence[int] | torch.Tensor, *, expand: bool) -> nn.Module:
    """Replace ``model``'s output head by a :class:`SubsetHead` over ``ids``; returns the head it replaced.

    ``expand``: full-vocabulary logits with ``-inf`` outside ``ids`` (inference), else ``[..., K]`` logits
    (training). The model's own forward still applies whatever follows its head (e.g. Gemma's logit
    soft-capping), elementwise, so it is the same on the subset.
    """
    head = model.get_output_embeddings()
    if isinstance(head, SubsetHead):
        raise ValueError("the model already has a reduced head")
    if not isinstance(head, nn.Linear):
        raise UsageError(f"a reduced head needs an nn.Linear output head; {type(model).__name__} has "
                         f"{type(head).__name__}")
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    vocab = int(head.weight.shape[0])
    if ids_t.ndim != 1 or ids_t.numel() == 0 or int(ids_t.min()) < 0 or int(ids_t.max()) >= vocab:
        raise UsageError(f"head ids must be a non-empty list of ids in 0 .. {vocab - 1}")
    model.set_output_embeddings(SubsetHead(head.weight, ids_t, head.bias, vocab_size=vocab if expand else None))
    return head


@contextlib.contextmanager
def installed_head(model: nn.Module, ids: Sequence[int] | torch.Tensor | None, *, expand: bool) -> Iterator[None]:
    """:func:`install_head` for the duration of the block (nothing when ``ids`` is None); the original head
    is put back afterwards, so the model saves as an ordinary full-vocabulary model."""
    if ids is None:
        yield
        return
    original = install_head(model, ids, expand=expand)
    try:
        yield
    finally:
        model.set_output_embeddings(original)


def write_head_vocab(directory: Path, ids: Sequence[int], info: dict[str, Any]) -> None:
    """``head_vocab.json``: the ids and how they were made (``info``)."""
    payload = {"format": FORMAT, "rows": len(ids), **info, "ids": [int(i) for i in ids]}
    directory.joinpath(HEAD_VOCAB_FILE).write_text(json.dumps(payload))


def read_head_vocab(directory: Path, vocab_size: int) -> list[int]:
    """The ids of ``directory``'s ``head_vocab.json``, checked (sorted, unique, inside the vocabulary)."""
    path = directory / HEAD_VOCAB_FILE
    try:
        data = json.loads(path.read_text())
        ids = [int(i) for i in data["ids"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"cannot read the draft's reduced-head ids {path} ({exc}); retrain the draft") from exc
    if data.get("format") != FORMAT:
        raise UsageError(f"{path} was written by another sparsebench version; retrain the draft")
    if not ids or ids != sorted(set(ids)) or ids[0] < 0 or ids[-1] >= vocab_size:
        raise UsageError(f"{path} must hold sorted, distinct ids in 0 .. {vocab_size - 1}; retrain the draft")
    return ids
