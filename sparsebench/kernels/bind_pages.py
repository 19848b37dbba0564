"""Turn fixed-capacity block lists into a paged kernel's page table, in one launch.

Why: FlashInfer's paged decode reads global page ids (``request * pages_per_request + block``), the length of
each request's last page, and we report the tokens each (sequence, kv head) read. With torch ops that is three
to four launches per layer (an add, a subtraction and clamp for the lengths, the token count), each ~2 µs
inside a CUDA graph: as much as a tenth of the sparse attention step at 32K. One Triton program per request
writes all three.

Inputs are a :class:`~sparsebench.kernels.compact.CompactSelection`'s lists, ``indices`` ``[R, N]`` whose first
``capacity`` entries of every row are that row's ascending blocks, newest block last (``R = B * Hkv``).
"""

from __future__ import annotations

import torch

from sparsebench.kernels.triton_support import HAVE_TRITON, interpreter_enabled, jit, tl

#: Entries one program copies per loop iteration.
CHUNK = 1024


def _bind_pages_kernel(idx_ptr, page_ptr, last_ptr, tokens_ptr, kv_len_ptr, n_cols, capacity, pages_per_request,
                       kv_heads, newest_start, newest_const, block_size,
                       HAS_KV_LEN: tl.constexpr, CHUNK: tl.constexpr):  # pragma: no cover - traced by Triton
    """Request ``program_id(0)``: page ids of its ``capacity`` blocks, its last page's length, its tokens read."""
    r = tl.program_id(0)
    for start in range(0, capacity, CHUNK):
        offs = start + tl.arange(0, CHUNK)
        keep = offs < capacity
        block = tl.load(idx_ptr + r.to(tl.int64) * n_cols + offs, mask=keep, other=0)
        tl.store(page_ptr + r.to(tl.int64) * capacity + offs, block + r * pages_per_request, mask=keep)
    if HAS_KV_LEN:  # noqa: SIM108 - a constexpr branch, which Triton resolves at compile time
        newest = tl.load(kv_len_ptr + r // kv_heads).to(tl.int32) - newest_start
    else:
        newest = newest_const + 0 * r
    newest = tl.minimum(tl.maximum(newest, 1), block_size)
    tl.store(last_ptr + r, newest)
    tl.store(tokens_ptr + r, tl.where(capacity > 0, capacity * block_size - (block_size - newest), 0))


def bind_pages_reference(indices: torch.Tensor, capacity: int, pages_per_request: int, *, block_size: int,
                         n_tokens: int, kv_len: torch.Tensor | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(page ids [R * capacity], last-page lengths [R], tokens read [R])`` by torch ops (the definition)."""
    rows, n_cols = indices.shape[0] * indices.shape[1], indices.shape[-1]
    flat = indices.reshape(rows, n_cols)[:, :capacity]
    request = torch.arange(rows, device=indices.device, dtype=torch.int32).unsqueeze(1)
    pages = (flat + request * pages_per_request).reshape(-1)
    start = (n_cols - 1) * block_size
    if kv_len is None:
        newest = torch.full((rows,), n_tokens - start, dtype=torch.int32, device=indices.device)
    else:
        newest = kv_len.to(device=indices.device, dtype=torch.int32).repeat_interleave(indices.shape[1]) - start
    newest = newest.clamp(1, block_size)
    tokens = (capacity * block_size - (block_size - newest)) * int(capacity > 0)
    return pages.to(torch.int32), newest.to(torch.int32), tokens.to(torch.int32)


def bind_pages(indices: torch.Tensor, capacity: int, pages_per_request: int, pages_out: torch.Tensor,
               last_out: torch.Tensor, *, block_size: int, n_tokens: int,
               kv_len: torch.Tensor | None = None) -> torch.Tensor:
    """Write :func:`bind_pages_reference`'s page ids into ``pages_out`` (int32, ``R * capacity``) and last-page
    lengths into ``last_out`` (int32 ``[R]``); return the tokens read ``[R]``.

    ``indices`` ``[B, Hkv, N]`` (int32) are the lists; ``kv_len`` ``[B]`` the valid tokens per sequence (a
    static cache), else ``n_tokens`` for all. No host synchronisation: CUDA-graph safe.
    """
    b, hkv, n_cols = indices.shape
    rows = b * hkv
    tokens = torch.empty(rows, dtype=torch.int32, device=indices.device)
    usable = HAVE_TRITON and (indices.is_cuda or (indices.device.type == "cpu" and interpreter_enabled()))
    if not usable:
        pages, last, count = bind_pages_reference(indices, capacity, pages_per_request, block_size=block_size,
                                                  n_tokens=n_tokens, kv_len=kv_len)
        pages_out.copy_(pages)
        last_out.copy_(last)
        return tokens.copy_(count)
    idx = indices if indices.is_contiguous() else indices.contiguous()
    lens = kv_len if kv_len is not None else tokens  # any int tensor: not read without HAS_KV_LEN
    jit(_bind_pages_kernel)[(rows,)](
        idx, pages_out, last_out, tokens, lens, n_cols, capacity, pages_per_request, hkv,
        (n_cols - 1) * block_size, n_tokens - (n_cols - 1) * block_size, block_size,
        HAS_KV_LEN=kv_len is not None, CHUNK=CHUNK,
    )
    return tokens
