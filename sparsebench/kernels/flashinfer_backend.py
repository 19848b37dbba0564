"""Block-sparse decode through FlashInfer's paged-KV decode kernel, one kv head per request.

Layout. FlashInfer's ``BatchDecodeWithPagedKVCacheWrapper`` reads pages listed per request. A page here
is one KV block (page size = block size), and every (sequence, kv head) pair is its own request with
one kv head and the GQA group's query heads as its query heads. So each pair reads its own page list,
which is exactly a :class:`~sparsebench.selection.Selection` row. The keys of a ``[B, Hkv, T, D]`` cache
whose token axis is a whole number of blocks already *are* such pages (page ``j`` of pair ``r`` starts
at ``r * T/bs + j``): no copy. A cache that is not block-aligned (the teacher-forced engine's Hugging Face
cache grows one token at a time) is copied into padded pages first, which is correct but slow, so the
speed benchmarks use the static cache of :mod:`sparsebench.fastdecode`.

Why planning is expensive, and where it happens. ``wrapper.plan()`` schedules the split-KV work on the
host from the page counts, so the counts must be copied to the host: one synchronisation per call. It
also needs the softmax scale, soft-cap and dtypes, which the backend contract hands to :meth:`run`; so
:meth:`plan` builds the page lists on the device and copies the counts to the host, and :meth:`run`
calls ``wrapper.plan()`` then the kernel. ``last_host_plan_seconds`` reports the host part so the
benchmarks can show it apart. A plan whose page counts equal the previous call's (fixed-capacity
selections: every pair the same number of blocks, as top-k policies give) skips ``wrapper.plan()``: the
kernel reads the page lists from buffers we own, so only their contents change.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.base import (
    AttendResult,
    AttentionBackend,
    AttentionPlan,
    Capabilities,
    cuda_package_unavailable,
)
from sparsebench.kernels.bind_pages import bind_pages
from sparsebench.kernels.compact import compacted
from sparsebench.selection import Selection

#: FlashInfer's recommended float workspace for split-KV partial results.
WORKSPACE_BYTES = 128 * 1024 * 1024


@dataclass(frozen=True)
class FlashInferPlan(AttentionPlan):
    """Page lists in CSR form on the device, plus the page counts on the host."""

    indptr_host: torch.Tensor | None = None
    """``[R + 1]`` int32 on the CPU, ``R = B * Hkv`` requests."""
    request: torch.Tensor | None = None
    """``[nnz]`` int32: the request each listed page belongs to."""
    block: torch.Tensor | None = None
    """``[nnz]`` int32: the block index within its request (ascending, so the newest block is last)."""
    last_len: torch.Tensor | None = None
    """``[R]`` int32: valid tokens in each request's last (newest) page."""
    tokens_read: torch.Tensor | None = None
    """``[B, Hkv]`` tokens the kernel will read."""


class FlashInferBackend(AttentionBackend):
    """FlashInfer paged decode over each (sequence, kv head)'s selected blocks (CUDA, fp16/bf16)."""

    name = "flashinfer"
    capabilities: ClassVar[Capabilities] = Capabilities(
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16}),
        head_dims=frozenset({64, 128, 256}),
        multi_row_queries=False,
        cuda_graph_safe=False,  # plan() needs the page counts on the host
        softcap=True,
    )

    def __init__(self, use_tensor_cores: bool | None = None) -> None:
        self.use_tensor_cores = use_tensor_cores
        """None: tensor-core decode for GQA groups of 4 or more (FlashInfer's advice), CUDA cores otherwise."""
        self.last_host_plan_seconds = 0.0
        self.plans_skipped = 0
        self._wrappers: dict[tuple[Any, ...], _Wrapper] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return cuda_package_unavailable("flashinfer", "pip install 'sparsebench[gpu]' on a CUDA machine")

    def plan(
        self,
        selection: Selection,
        *,
        block_size: int,
        n_tokens: int,
        kv_len: torch.Tensor | None = None,
    ) -> FlashInferPlan:
        mask = selection.mask
        b, hkv, n_blocks = mask.shape
        device = mask.device
        counts = mask.sum(-1, dtype=torch.int32).flatten()  # [R]
        indptr = torch.zeros(b * hkv + 1, dtype=torch.int32, device=device)
        indptr[1:] = torch.cumsum(counts, 0)
        indptr_host = indptr.cpu()  # the one host synchronisation of this backend
        nnz = int(indptr_host[-1])
        flat = mask.reshape(b * hkv, n_blocks)
        # Ascending block order within a request: the stable sort puts selected blocks first.
        order = torch.argsort((~flat).to(torch.uint8), dim=-1, stable=True).to(torch.int32)
        slot = torch.arange(n_blocks, device=device, dtype=torch.int32)
        keep = slot.unsqueeze(0) < counts.unsqueeze(1)
        block = order[keep]  # row-major: request by request, ascending blocks, length nnz
        request = torch.arange(b * hkv, device=device, dtype=torch.int32).repeat_interleave(counts, output_size=nnz)
        if kv_len is None:
            newest = torch.full((b,), n_tokens - (n_blocks - 1) * block_size, dtype=torch.int32, device=device)
        else:
            newest = kv_len.to(device=device, dtype=torch.int32) - (n_blocks - 1) * block_size
        newest = newest.clamp(1, block_size).repeat_interleave(hkv)  # [R]
        # Requests are guaranteed the newest block by the engine; without it the last page is full.
        has_newest = flat[:, -1]
        last_len = torch.where(has_newest, newest, torch.full_like(newest, block_size))
        tokens = counts * block_size - (block_size - last_len) * (counts > 0)
        return FlashInferPlan(selection=selection, block_size=block_size, n_tokens=n_tokens, kv_len=kv_len,
                              indptr_host=indptr_host, request=request, block=block, last_len=last_len,
                              tokens_read=tokens.view(b, hkv))

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
        if not isinstance(plan, FlashInferPlan) or plan.indptr_host is None:
            raise TypeError(f"{type(self).__name__}.run needs the plan made by its own plan()")
        b, hq, q_rows, d = query.shape
        hkv = key.shape[1]
        if q_rows != 1:
            raise ValueError("flashinfer backend: one query row per sequence (multi-row selections come later)")
        group = hq // hkv
        bs = plan.block_size
        k_pages, v_pages, pages_per_request = _as_pages(key, value, bs, plan.selection.n_blocks)
        wrapper = self._planned_wrapper(query, plan.indptr_host, group, softcap, scaling, bs)
        tokens_read = self._bind(plan, wrapper, pages_per_request)
        out = wrapper.inner.run(query.reshape(b * hkv, group, d), (k_pages, v_pages))
        return AttendResult(out.reshape(b, hq, 1, d), tokens_read)

    def _bind(self, plan: FlashInferPlan, wrapper: _Wrapper, pages_per_request: int) -> torch.Tensor:
        """Bind the plan's page lists to this cache's memory, in the buffers the kernel reads at run time (page
        ids and last-page lengths); returns the tokens read ``[B, Hkv]``."""
        assert plan.indptr_host is not None and plan.request is not None and plan.block is not None
        assert plan.last_len is not None and plan.tokens_read is not None
        nnz = int(plan.indptr_host[-1])
        wrapper.indices[:nnz] = plan.request * pages_per_request + plan.block
        wrapper.last_len.copy_(plan.last_len)
        return plan.tokens_read

    def _planned_wrapper(self, query: torch.Tensor, indptr_host: torch.Tensor, group: int, softcap: float | None,
                         scaling: float, block_size: int) -> _Wrapper:
        """The wrapper for this shape, planned for the page counts ``indptr_host``; ``wrapper.plan()`` (host-side
        scheduling) runs only when the counts or the scale differ from the previous call's."""
        requests, d = indptr_host.numel() - 1, query.shape[-1]
        nnz = int(indptr_host[-1])
        use_tc = self.use_tensor_cores if self.use_tensor_cores is not None else group >= 4
        wkey = (query.device, requests, group, d, query.dtype, softcap, use_tc)
        wrapper = self._wrappers.get(wkey)
        if wrapper is None or wrapper.capacity < nnz:
            wrapper = _Wrapper(query.device, requests, max(nnz, 1024), use_tc)
            self._wrappers[wkey] = wrapper
        t0 = time.perf_counter()
        if wrapper.planned_for is None or not torch.equal(wrapper.planned_for, indptr_host) \
                or wrapper.planned_scale != (scaling, softcap):
            # Host-side inputs only (a device tensor here would be copied back: another sync). The
            # last-page lengths passed are approximate (full pages); they only weigh the work split,
            # and the exact ones are written to the buffer the kernel reads before it runs.
            approx_last = torch.full((requests,), block_size, dtype=torch.int32)
            wrapper.inner.plan(
                indptr_host, wrapper.indices[:nnz], approx_last,
                group, 1, d, block_size, logits_soft_cap=softcap, q_data_type=query.dtype, sm_scale=scaling,
            )
            wrapper.planned_for = indptr_host
            wrapper.planned_scale = (scaling, softcap)
        else:
            self.plans_skipped += 1
        self.last_host_plan_seconds = time.perf_counter() - t0
        return wrapper


class FlashInferFixedBackend(FlashInferBackend):
    """FlashInfer paged decode for selections that keep the same, host-known number of blocks in every row.

    Why a second backend: :class:`FlashInferBackend` must read the page counts back to the host before
    ``wrapper.plan()`` (one synchronisation per call, so no CUDA graph). A
    :class:`~sparsebench.kernels.compact.CompactSelection` with ``capacity`` set (top-k with the newest block
    counted in the budget: :func:`sparsebench.kernels.topk.topk_select` with ``newest_in_budget=True``) fixes
    the counts on the host, so FlashInfer plans once per shape, and every later call is device work only:
    one small Triton launch turns the selection's block lists into FlashInfer page ids and last-page lengths
    in the buffers the planned kernel reads, then FlashInfer's kernel runs. The whole call can be captured
    in a CUDA graph. Any other selection is refused with the reason (it would need the counts read back).
    """

    name = "flashinfer-fixed"
    capabilities: ClassVar[Capabilities] = dataclasses.replace(FlashInferBackend.capabilities, cuda_graph_safe=True)

    def plan(
        self,
        selection: Selection,
        *,
        block_size: int,
        n_tokens: int,
        kv_len: torch.Tensor | None = None,
    ) -> FlashInferPlan:
        lists = compacted(selection)
        capacity = getattr(selection, "capacity", None)
        if lists is None or capacity is None or selection.mask.dim() != 3 or not selection.includes_newest:
            raise UsageError(
                "backend 'flashinfer-fixed' needs a selection that keeps the same number of blocks in every row, "
                "newest block included, and says so (CompactSelection.capacity): e.g. topk_select(scores, k, "
                "newest_in_budget=True). Use backend 'flashinfer' (or 'triton') for selections of varying size.")
        rows = selection.mask.shape[0] * selection.mask.shape[1]
        indptr_host = torch.arange(rows + 1, dtype=torch.int32) * capacity
        return FlashInferPlan(selection=selection, block_size=block_size, n_tokens=n_tokens, kv_len=kv_len,
                              indptr_host=indptr_host)

    def _bind(self, plan: FlashInferPlan, wrapper: _Wrapper, pages_per_request: int) -> torch.Tensor:
        """One launch (:func:`~sparsebench.kernels.bind_pages.bind_pages`) writes the page ids, last-page lengths
        and token counts from the selection's own lists: no host work, so the call stays graph-safe."""
        assert plan.indptr_host is not None
        lists = compacted(plan.selection)
        assert lists is not None
        b, hkv = plan.selection.mask.shape[:2]
        nnz = int(plan.indptr_host[-1])
        tokens = bind_pages(lists[0], nnz // (b * hkv), pages_per_request, wrapper.indices[:nnz], wrapper.last_len,
                            block_size=plan.block_size, n_tokens=plan.n_tokens, kv_len=plan.kv_len)
        return tokens.view(b, hkv)


class _Wrapper:
    """A FlashInfer decode wrapper with buffers we own (its CUDA-graph mode), so page lists can be
    rewritten on the device without a new plan when the page counts stay the same."""

    def __init__(self, device: torch.device, requests: int, capacity: int, use_tensor_cores: bool) -> None:
        import flashinfer

        self.capacity = capacity
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.indptr = torch.zeros(requests + 1, dtype=torch.int32, device=device)
        self.indices = torch.zeros(capacity, dtype=torch.int32, device=device)
        self.last_len = torch.ones(requests, dtype=torch.int32, device=device)
        self.inner = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=use_tensor_cores,
            paged_kv_indptr_buffer=self.indptr, paged_kv_indices_buffer=self.indices,
            paged_kv_last_page_len_buffer=self.last_len,
        )
        self.planned_for: torch.Tensor | None = None
        self.planned_scale: tuple[float, float | None] | None = None


def _as_pages(key: torch.Tensor, value: torch.Tensor, block_size: int,
              n_blocks: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """View (or, when not block-aligned, copy) ``[B, Hkv, T, D]`` caches as ``[pages, bs, 1, D]`` pages."""
    b, hkv, t, d = key.shape
    views = []
    per_request = None
    for cache in (key, value):
        s0, s1, s2, s3 = cache.stride()
        aligned = s3 == 1 and s2 == d and s1 % (block_size * d) == 0 and s0 == hkv * s1 and t >= n_blocks * block_size
        if not aligned:
            padded = cache.new_zeros(b, hkv, n_blocks * block_size, d)
            padded[:, :, :t] = cache[:, :, : n_blocks * block_size]
            cache, s1 = padded, n_blocks * block_size * d
        pages = s1 // (block_size * d)
        if per_request is None:
            per_request = pages
        elif pages != per_request:  # key and value laid out differently: copy value to match key
            padded = cache.new_zeros(b, hkv, per_request * block_size, d)
            padded[:, :, : n_blocks * block_size] = cache[:, :, : n_blocks * block_size]
            cache = padded
        total = b * hkv * per_request
        views.append(torch.as_strided(cache, (total, block_size, 1, d), (block_size * d, d, d, 1),
                                      cache.storage_offset()))
    assert per_request is not None
    return views[0], views[1], per_request
