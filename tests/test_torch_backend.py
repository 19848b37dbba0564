"""The torch backend against an exact dense reference on random inputs."""

from __future__ import annotations

import pytest
import torch

from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.selection import Selection


def masked_reference(q, k, v, token_mask, scaling, softcap=None):
    """Dense attention with unselected tokens masked out, computed head by head in float64."""
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    out = torch.empty(b, hq, 1, d, dtype=torch.float64)
    for bi in range(b):
        for h in range(hq):
            g = h // (hq // hkv)
            keep = token_mask[bi, g]
            s = (q[bi, h, 0].double() @ k[bi, g, keep].double().T) * scaling
            if softcap is not None:
                s = torch.tanh(s / softcap) * softcap
            out[bi, h, 0] = torch.softmax(s, -1) @ v[bi, g, keep].double()
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_selections_match_reference(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    b = 1 + seed % 2
    hkv = 1 + seed % 3
    group = 1 + (seed * 7) % 4
    d = (16, 32, 64)[seed % 3]
    block = (1, 4, 16)[seed % 3]
    n_tokens = int(torch.randint(1, 90, (1,), generator=gen))
    n_blocks = -(-n_tokens // block)
    q = torch.randn(b, hkv * group, 1, d, generator=gen)
    k = torch.randn(b, hkv, n_tokens, d, generator=gen)
    v = torch.randn(b, hkv, n_tokens, d, generator=gen)
    mask = torch.rand(b, hkv, n_blocks, generator=gen) < 0.5
    mask[..., -1] = True
    softcap = 30.0 if seed % 2 else None
    res = TorchBackend().attend(q, k, v, Selection(mask), block_size=block, scaling=d**-0.5, softcap=softcap)
    token_mask = mask.repeat_interleave(block, dim=-1)[..., :n_tokens]
    ref = masked_reference(q, k, v, token_mask, d**-0.5, softcap)
    torch.testing.assert_close(res.out.double(), ref, rtol=1e-5, atol=1e-5)
    assert res.tokens_read.tolist() == token_mask.sum(-1).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_kv_len_masks_static_cache_slots(seed: int) -> None:
    """A static cache holds garbage past ``kv_len``; the result must equal the sliced cache's."""
    gen = torch.Generator().manual_seed(100 + seed)
    b, hkv, group, d, block = 2, 2, 2, 32, 16
    lens = torch.tensor([17 + seed, 40 - seed], dtype=torch.int32)
    capacity = 48  # 3 blocks of slots
    q = torch.randn(b, hkv * group, 1, d, generator=gen)
    k = torch.randn(b, hkv, capacity, d, generator=gen) * 50  # garbage slots would dominate if read
    v = torch.randn(b, hkv, capacity, d, generator=gen)
    mask = torch.rand(b, hkv, 3, generator=gen) < 0.6
    mask[0, :, 1] = True  # sequence 0's newest block
    mask[0, :, 2] = False  # and nothing past it
    mask[1, :, 2] = True
    res = TorchBackend().attend(q, k, v, Selection(mask), block_size=block, scaling=d**-0.5, kv_len=lens)
    for bi in range(b):
        n = int(lens[bi])
        token_mask = mask[bi : bi + 1].repeat_interleave(block, dim=-1)[..., :n]
        ref = masked_reference(q[bi : bi + 1], k[bi : bi + 1, :, :n], v[bi : bi + 1, :, :n], token_mask, d**-0.5)
        torch.testing.assert_close(res.out[bi : bi + 1].double(), ref, rtol=1e-5, atol=1e-5)
        assert res.tokens_read[bi].tolist() == token_mask[0].sum(-1).tolist()


def test_full_selection_equals_sdpa() -> None:
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 8, 1, 32, generator=gen)
    k = torch.randn(2, 2, 77, 32, generator=gen)
    v = torch.randn(2, 2, 77, 32, generator=gen)
    res = TorchBackend().attend(q, k, v, Selection.full(2, 2, 5, "cpu"), block_size=16, scaling=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(res.out, ref, rtol=1e-5, atol=1e-6)
    assert res.tokens_read.tolist() == [[77, 77], [77, 77]]


def test_capabilities_give_reasons() -> None:
    assert TorchBackend.reasons_to_reject(device="cpu", dtype=torch.float32, head_dim=64) == []
    reasons = TorchBackend.reasons_to_reject(device="meta", dtype=torch.int8, head_dim=64)
    assert any("device" in r for r in reasons) and any("dtype" in r for r in reasons)
