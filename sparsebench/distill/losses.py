"""What the draft is trained to match: the target's next-token distribution and, optionally, its attention.

Both terms are KL(target || draft), the direction that makes the draft cover every token (or KV block)
the target puts mass on: for speculative decoding a draft that misses the target's choice is rejected,
and for SpecAttn a block the draft ignores is never read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sparsebench.kernels.mass import block_attention_mass


def logits_kl(target_logits: torch.Tensor, draft_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(softmax(target) || softmax(draft)) at temperature 1, in fp32 (nats/token).

    Written as ``sum p log p - sum p log q`` with the first term and ``p`` computed without gradients: a
    [batch, seq, vocab] fp32 tensor is gigabytes at 49k vocabulary, and this form keeps two of them
    (``p`` and ``log q``) for the backward pass instead of four.
    """
    with torch.no_grad():
        log_p = torch.log_softmax(target_logits.float(), dim=-1)
        p = log_p.exp()
        neg_entropy = (p * log_p).sum(-1)
        del log_p
    log_q = torch.log_softmax(draft_logits.float(), dim=-1)
    return (neg_entropy - (p * log_q).sum(-1)).mean()


def block_kl(target_mass: torch.Tensor, draft_mass: torch.Tensor) -> torch.Tensor:
    """Mean KL between block-attention distributions ``[..., N]`` (blocks a causal row cannot see hold 0
    on both sides and contribute 0)."""
    p, q = target_mass.float(), draft_mass.float()
    tiny = torch.finfo(torch.float32).tiny
    return (torch.xlogy(p, p) - torch.xlogy(p, q.clamp_min(tiny))).sum(-1).mean()


class AttentionTap:
    """An attention router recording, for chosen layers, the block attention mass of a few query rows.

    Why a router and not ``output_attentions``: the latter materialises every layer's full ``[H, T, T]``
    matrix; this computes ``[B, H, R, N]`` for ``R`` rows of the tapped layers only, from the query and
    keys the layer already has, and lets the model attend as usual (it returns None: dense SDPA). The
    computation is differentiable, so a tap on the draft carries gradients.
    """

    def __init__(self, layers: Sequence[int], rows: int, block_size: int) -> None:
        self.layers = frozenset(layers)
        self.rows = rows
        self.block_size = block_size
        self.mass: dict[int, torch.Tensor] = {}

    def positions(self, n_tokens: int, device: torch.device) -> torch.Tensor:
        """``rows`` query positions spread evenly from the end of the first block to the last token."""
        first = min(self.block_size, n_tokens - 1)
        return torch.linspace(first, n_tokens - 1, self.rows, device=device).round().long().unique()

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                  scaling: float, sliding_window: int | None, softcap: float | None) -> torch.Tensor | None:
        if layer in self.layers:
            pos = self.positions(key.shape[2], query.device)
            self.mass[layer] = block_attention_mass(query[:, :, pos], key, scaling, self.block_size,
                                                    query_positions=pos, sliding_window=sliding_window,
                                                    softcap=softcap)
        return None


def attention_kl(target: Mapping[int, torch.Tensor], draft: Mapping[int, torch.Tensor],
                 pairs: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Mean over ``(draft layer, target layer)`` pairs of their block-attention KL."""
    return torch.stack([block_kl(target[t], draft[d]) for d, t in pairs]).mean()
