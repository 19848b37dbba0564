"""The ``cuda`` attention backend: the Triton backend's planning, with the NVRTC-compiled cp.async kernel.

Why a separate backend: it is a measured alternative to the Triton kernel for plain decode (see
:mod:`sparsebench.kernels.cuda_decode`), benchmarked side by side with it (``sparsebench bench attention
--methods triton-indices,cuda-indices``). It shares the Triton backend's plan (the compacted block lists,
carried by the selection or compacted on the device), and hands a call outside the CUDA kernel's scope
(several query rows, float32, GQA groups other than 1/2/4/8) to the Triton kernel, so it serves every call
the Triton backend serves. Registered as ``--backend cuda`` but not in ``--backend auto``'s preference order:
on the H200 it measured within 3% of the Triton kernel, not faster (``benchmarks/RESULTS.md``), so ``auto``
keeps Triton.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from sparsebench.kernels.base import AttendResult, AttentionPlan
from sparsebench.kernels.triton_backend import TritonBackend

if TYPE_CHECKING:
    from sparsebench.kernels.cuda_decode import CudaKernelConfig


class CudaBackend(TritonBackend):
    """Block-sparse decode with explicit multi-stage asynchronous copies (``indices`` mode only)."""

    name = "cuda"

    def __init__(self, cuda_config: CudaKernelConfig | None = None) -> None:
        super().__init__(selection_mode="indices")
        self.cuda_config = cuda_config

    @classmethod
    def unavailable_reason(cls) -> str | None:
        from sparsebench.kernels.cuda_decode import cuda_unavailable_reason

        return super().unavailable_reason() or cuda_unavailable_reason()

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
        from sparsebench.kernels import cuda_decode

        per_row = plan.selection.mask.dim() == 4 and plan.selection.mask.shape[2] > 1
        if cuda_decode.unsupported_reason(query, key, value, block_size=plan.block_size, per_row=per_row):
            return super().run(plan, query, key, value, scaling=scaling, softcap=softcap)
        indices, counts = self._plan_lists(plan)
        assert indices is not None and counts is not None  # indices mode always has lists
        out, tokens_read = cuda_decode.sparse_decode_cuda(
            query, key, value, indices, counts, block_size=plan.block_size, scaling=scaling, softcap=softcap,
            kv_len=plan.kv_len, config=self.cuda_config, check_scope=False)
        return AttendResult(out, tokens_read)
