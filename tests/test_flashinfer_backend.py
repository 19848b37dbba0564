"""FlashInfer backend against the exact torch backend (GPU only; skips elsewhere)."""

from __future__ import annotations

import pytest
import torch

from sparsebench.kernels.flashinfer_backend import FlashInferBackend
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.selection import Selection

REASON = FlashInferBackend.unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_unavailable_reason_is_a_sentence_without_cuda() -> None:
    """Runs only where the backend is available; the CPU side is covered by test_backend_reasons."""
    assert FlashInferBackend.reasons_to_reject(device="cuda", dtype=torch.bfloat16, head_dim=128) == []


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


# Each distinct (dtype, head dim, group >= 4, soft-cap) JIT-compiles a kernel (10-20 s on first use), so
# shapes vary freely on the common bf16/128 configuration and the other dtypes/head dims get one case each.
CASES = [(torch.bfloat16, 128, None)] * 12 + [
    (torch.float16, 128, None), (torch.bfloat16, 64, None), (torch.bfloat16, 256, None), (torch.bfloat16, 128, 30.0),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_torch_backend_on_random_inputs(case: int) -> None:
    gen = torch.Generator(device="cuda").manual_seed(case)
    dtype, d, softcap = CASES[case]
    b = (1, 2, 3)[case % 3]
    hkv = (1, 2, 8)[(case // 3) % 3]
    group = (1, 4, 8)[(case // 2) % 3] if case < 12 else 4
    static = case % 4 < 2  # static block-aligned cache with kv_len, or an exact-length HF-style cache
    n_tokens = int(torch.randint(1, 9000 if case % 5 else 300, (1,), generator=gen, device="cuda"))
    bs = 16
    n_blocks = -(-n_tokens // bs)
    capacity = n_blocks * bs + 64 if static else n_tokens  # static: slots past kv_len hold garbage
    q = torch.randn(b, hkv * group, 1, d, generator=gen, device="cuda", dtype=dtype)
    k = torch.randn(b, hkv, capacity, d, generator=gen, device="cuda", dtype=dtype)
    v = torch.randn(b, hkv, capacity, d, generator=gen, device="cuda", dtype=dtype)
    keep = (0.05, 0.22, 0.6, 1.0)[case % 4]
    mask = torch.rand(b, hkv, n_blocks, generator=gen, device="cuda") < keep
    mask[..., -1] = True
    sel = Selection(mask)
    kv_len = torch.full((b,), n_tokens, dtype=torch.int32, device="cuda") if static else None
    key = k[:, :, : n_blocks * bs] if static else k
    value = v[:, :, : n_blocks * bs] if static else v
    fi = FlashInferBackend().attend(q, key, value, sel, block_size=bs, scaling=d**-0.5, softcap=softcap,
                                    kv_len=kv_len)
    ref = TorchBackend().attend(q.float(), k[:, :, :n_tokens].float(), v[:, :, :n_tokens].float(), sel,
                                block_size=bs, scaling=d**-0.5, softcap=softcap)
    assert _relative_error(fi.out, ref.out) < 1e-2
    assert torch.equal(fi.tokens_read.long().cpu(), ref.tokens_read.long().cpu())


def test_repeated_page_counts_skip_the_host_plan() -> None:
    backend = FlashInferBackend()
    q = torch.randn(1, 8, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 1024, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    outs = []
    for seed in range(3):  # same count per (sequence, head), different blocks
        gen = torch.Generator(device="cuda").manual_seed(seed)
        idx = torch.randperm(63, generator=gen, device="cuda")[:10].view(1, 1, 10).expand(1, 2, 10)
        sel = Selection.from_indices(idx, 64).with_blocks(63)
        res = backend.attend(q, k, v, sel, block_size=16, scaling=0.1)
        ref = TorchBackend().attend(q.float(), k.float(), v.float(), sel, block_size=16, scaling=0.1)
        assert _relative_error(res.out, ref.out) < 1e-2
        outs.append(res.out)
    assert backend.plans_skipped == 2
    assert not torch.equal(outs[0], outs[1])
