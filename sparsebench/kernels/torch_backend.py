"""Exact block-sparse attention in PyTorch: the reference every other backend is tested against."""

from __future__ import annotations

from typing import ClassVar

import torch

from sparsebench.kernels.base import AttendResult, AttentionBackend, AttentionPlan, Capabilities


class TorchBackend(AttentionBackend):
    """Gathers the selected blocks, then fp32 ``softmax(q K^T * scaling) V`` per (sequence, kv head).

    Runs anywhere torch runs. It materialises only the selected keys and values (padded to the
    largest selection in the batch, padding masked out), so what it counts as read is what it read.
    """

    name = "torch"
    capabilities: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cpu", "cuda", "mps", "xpu"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16, torch.float64}),
        head_dims=None,
        multi_row_queries=False,
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
        if q_rows != 1:
            raise ValueError("torch backend: one query row per sequence (multi-row selections come later)")
        mask = selection.mask
        counts = mask.sum(-1)  # [B, Hkv]
        width = int(counts.max())  # host sync: fine for the reference backend
        # Selected block ids first, in ascending order (a stable sort of "not selected").
        order = torch.argsort((~mask).to(torch.uint8), dim=-1, stable=True)[..., :width]
        slot_ok = torch.arange(width, device=mask.device) < counts.unsqueeze(-1)  # [B, Hkv, W]
        tokens = order.unsqueeze(-1) * block_size + torch.arange(block_size, device=mask.device)
        limit = n_tokens if kv_len is None else kv_len.to(tokens.device).view(b, 1, 1, 1)
        token_ok = (slot_ok.unsqueeze(-1) & (tokens < limit)).reshape(b, hkv, width * block_size)
        tokens = tokens.clamp(max=n_tokens - 1).reshape(b, hkv, width * block_size, 1).expand(-1, -1, -1, d)
        k_sel = key.gather(2, tokens).float()
        v_sel = value.gather(2, tokens).float()
        q = query.reshape(b, hkv, (hq // hkv) * q_rows, d).float()
        scores = (q @ k_sel.transpose(-1, -2)) * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        scores = scores.masked_fill(~token_ok.unsqueeze(2), float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v_sel
        return AttendResult(out.reshape(b, hq, q_rows, d).to(query.dtype), token_ok.sum(-1))
