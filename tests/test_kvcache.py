from __future__ import annotations

import torch

from sparsebench.kvcache import LayerSummaries


def test_incremental_summaries_match_recomputation() -> None:
    """Appends of varying sizes (prefill, single tokens, chunks) give exactly the from-scratch summaries."""
    gen = torch.Generator().manual_seed(0)
    for block_size in (1, 4, 16):
        keys = torch.randn(2, 3, 97, 8, generator=gen)
        store = LayerSummaries(frozenset({"minmax", "mean"}), block_size)
        lengths = [13, 14, 15, 31, 32, 33, 50, 97]
        for n in lengths:
            store.update(keys[:, :, :n])
            view = store.view()
            n_blocks = -(-n // block_size)
            assert view["key_min"].shape == (2, 3, n_blocks, 8)
            for j in range(n_blocks):
                blk = keys[:, :, j * block_size : min(n, (j + 1) * block_size)]
                assert torch.equal(view["key_min"][:, :, j], blk.amin(2))
                assert torch.equal(view["key_max"][:, :, j], blk.amax(2))
                torch.testing.assert_close(view["key_mean"][:, :, j], blk.mean(2))


def test_update_touches_only_the_tail() -> None:
    """An append recomputes only from the partial block on: earlier blocks are left as they were."""
    keys = torch.randn(1, 1, 40, 4)
    store = LayerSummaries(frozenset({"minmax"}), 8)
    store.update(keys[:, :, :33])
    store.tensors["key_min"][:, :, 0] = -123.0  # poison a finished block
    store.update(keys[:, :, :34])
    assert torch.all(store.view()["key_min"][:, :, 0] == -123.0)
