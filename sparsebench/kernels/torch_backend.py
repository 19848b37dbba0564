"""Exact block-sparse attention in PyTorch: the reference every other backend is tested against."""

from __future__ import annotations

from typing import ClassVar

import torch

from sparsebench.kernels.base import AttendResult, AttentionBackend, AttentionPlan, Capabilities


class TorchBackend(AttentionBackend):
    """Gathers the selected blocks, then fp32 ``softmax(q K^T * scaling) V`` per (sequence, kv head).

    Runs anywhere torch runs. It materialises only the selected keys and values (padded to the
    largest selection in the batch, padding masked out), so what it counts as read is what it read.

    Several query rows (speculative verification of ``Q`` tokens) are the last ``Q`` positions of the
    cache: row ``r`` sits at position ``len - Q + r`` and sees only keys up to it (causal). With a
    per-row selection ``[B, Hkv, Q, N]`` the union of the rows' blocks is gathered once and each row is
    masked to its own blocks, so the tokens read are the union's: what a kernel reading every block
    once for all rows reads.
    """

    name = "torch"
    capabilities: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cpu", "cuda", "mps", "xpu"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64}),
        head_dims=None,
        multi_row_queries=True,
        cuda_graph_safe=False,
        softcap=True,
    )

    def run(
        self,
        plan: AttentionPlan,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        *,
        scaling: float,
        softcap: float | None = None,
    ) -> AttendResult:
        selection, block_size, kv_len = plan.selection, plan.block_size, plan.kv_len
        b, hq, q_rows, d = query.shape
        hkv, n_tokens = key.shape[1], key.shape[2]
        row_mask = selection.mask if selection.per_row else selection.mask.unsqueeze(2)  # [B, Hkv, R, N]
        if row_mask.shape[2] not in (1, q_rows):
            raise ValueError(f"torch backend: a selection of {row_mask.shape[2]} rows for {q_rows} query rows")
        mask = row_mask.any(2)  # [B, Hkv, N]: the union of the rows' blocks
        counts = mask.sum(-1)  # [B, Hkv]
        width = int(counts.max())  # host sync: fine for the reference backend
        # Selected block ids first, in ascending order (a stable sort of "not selected").
        order = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True)[..., :width]
        slot_ok = torch.arange(width, device=mask.device) < counts.unsqueeze(-1)  # [B, Hkv, W]
        tokens = order.unsqueeze(-1) * block_size + torch.arange(block_size, device=mask.device)
        limit = n_tokens if kv_len is None else kv_len.to(tokens.device).view(b, 1, 1, 1)
        token_ok = (slot_ok.unsqueeze(-1) & (tokens < limit)).reshape(b, hkv, width * block_size)
        # Which rows read each gathered token: its block is in the row's selection and it is not in the
        # row's future. One row (plain decode) sees every token below the limit, as before.
        row_blocks = row_mask.gather(-1, order.unsqueeze(2).expand(-1, -1, row_mask.shape[2], -1))  # [B, Hkv, R, W]
        row_pos = (limit - q_rows) + torch.arange(q_rows, device=mask.device).view(1, 1, q_rows, 1)
        visible = (row_blocks.unsqueeze(-1) & (tokens.unsqueeze(2) <= row_pos.unsqueeze(-1))).reshape(
            b, hkv, q_rows, width * block_size) & token_ok.unsqueeze(2)  # [B, Hkv, Q, W*bs]
        tokens = tokens.clamp(max=n_tokens - 1).reshape(b, hkv, width * block_size, 1).expand(-1, -1, -1, d)
        k_sel = key.gather(2, tokens).float()
        v_sel = value.gather(2, tokens).float()
        q = query.reshape(b, hkv, hq // hkv, q_rows, d).float()
        scores = (q @ k_sel.transpose(-1, -2).unsqueeze(2)) * scaling  # [B, Hkv, G, Q, W*bs]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~visible.unsqueeze(2), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v_sel.unsqueeze(2)
        return AttendResult(out.reshape(b, hq, q_rows, d).to(query.dtype), token_ok.sum(-1))
