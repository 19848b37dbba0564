"""Exact attention probabilities aggregated to KV blocks.

Used wherever a distribution over blocks is needed rather than an attention output: the draft model's
attention for SpecAttn, the oracle policy's exact scores, and layer-map calibration. Computed inside
the attention function from ``q`` and ``K``, never through ``output_attentions`` (which materialises
every layer's full ``[H, T, T]`` matrix).
"""

from __future__ import annotations

import torch

from sparsebench.selection import n_blocks_for


def block_attention_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    block_size: int,
    *,
    query_positions: torch.Tensor | None = None,
    key_offset: int = 0,
    total_tokens: int | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention probabilities of each query row, summed per KV block: ``[B, Hq, R, N]`` (fp32).

    ``query`` is ``[B, Hq, R, D]``, ``key`` ``[B, Hkv, T, D]`` holding tokens ``key_offset ..
    key_offset + T - 1`` (a sliding-window cache holds only its window). ``N`` covers ``total_tokens``
    (default ``key_offset + T``). With ``query_positions`` (``[R]``, absolute) each row sees only keys at
    or before its position (causal), and within ``sliding_window`` of it when given; without, every key
    is visible (a decode step's single query).
    """
    groups = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(groups, dim=1).float()
    scores = (query.float() @ k.transpose(-1, -2)) * scaling  # [B, Hq, R, T]
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    n_keys = key.shape[2]
    if query_positions is not None:
        key_pos = torch.arange(key_offset, key_offset + n_keys, device=key.device)
        visible = key_pos[None, :] <= query_positions[:, None]
        if sliding_window is not None:
            visible &= query_positions[:, None] - key_pos[None, :] < sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    total = total_tokens if total_tokens is not None else key_offset + n_keys
    n_blocks = n_blocks_for(total, block_size)
    padded = torch.nn.functional.pad(probs, (key_offset, n_blocks * block_size - key_offset - n_keys))
    return padded.unflatten(-1, (n_blocks, block_size)).sum(-1)
