"""Fixed-capacity selections and the FlashInfer backend that plans once for them.

CPU: ``topk_select(..., newest_in_budget=True)`` keeps exactly k blocks per row, newest included, and says so
(``capacity``), under Triton's interpreter against the sort-based reference; the page-table kernel
(:func:`sparsebench.kernels.bind_pages.bind_pages`) against its torch definition; the backend refuses
selections of varying size with a reason. GPU (skipped without CUDA and flashinfer): the backend against the
torch backend, eagerly and replayed in a CUDA graph while the selection changes in place.
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from interpreted import SEED, run_interpreted

from sparsebench.errors import UsageError
from sparsebench.kernels.bind_pages import bind_pages, bind_pages_reference
from sparsebench.kernels.compact import CompactSelection
from sparsebench.kernels.flashinfer_backend import FlashInferFixedBackend
from sparsebench.kernels.topk import topk_mask_reference, topk_select
from sparsebench.selection import Selection

REASON = FlashInferFixedBackend.unavailable_reason()
needs_flashinfer = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def fixed_reference(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The newest block plus the top k - 1 of the older ones (lowest index wins a tie)."""
    mask = torch.zeros(scores.shape, dtype=torch.bool)
    mask[..., :-1] = topk_mask_reference(scores[..., :-1], k - 1)
    mask[..., -1] = True
    return mask


CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.kernels.bind_pages import bind_pages
    from sparsebench.kernels.topk import topk_select
    from sparsebench.kernels.topp import interpreter_enabled
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    out = []
    for c in torch.load(sys.argv[1]):
        if c["fn"] == "select":
            sel = topk_select(c["scores"], c["k"], newest_in_budget=True)
            out.append(dict(mask=sel.mask, indices=sel.indices, counts=sel.counts, capacity=sel.capacity,
                            newest=sel.includes_newest))
        else:
            rows = c["indices"].shape[0] * c["indices"].shape[1]
            pages = torch.full((rows * c["capacity"],), -1, dtype=torch.int32)
            last = torch.full((rows,), -1, dtype=torch.int32)
            tokens = bind_pages(c["indices"], c["capacity"], c["ppr"], pages, last, block_size=c["bs"],
                                n_tokens=c["n_tokens"], kv_len=c["kv_len"])
            out.append(dict(pages=pages, last=last, tokens=tokens))
    torch.save(out, sys.argv[2])
    """
)


def make_cases(gen: torch.Generator) -> list[dict]:
    ties = torch.randint(0, 3, (2, 2, 37), generator=gen).float()
    odd = torch.randn(1, 3, 20, generator=gen)
    odd[0, 0, 3], odd[0, 1, :5], odd[0, 2, -1] = float("nan"), float("-inf"), float("nan")
    big = torch.randn(1, 2, 70, generator=gen)
    big[..., -1] = -1e30  # the newest block scores lowest and is still kept
    cases = [dict(fn="select", scores=s, k=k) for s, k in ((ties, 9), (odd, 4), (odd, 20), (odd, 1), (big, 16),
                                                             (torch.randn(1, 2, 1, generator=gen), 1))]
    for b, hkv, n_cols, capacity, kv in ((1, 2, 40, 9, False), (2, 3, 1100, 1030, True), (1, 1, 5, 0, False)):
        indices = torch.stack([torch.sort(torch.randperm(n_cols, generator=gen)[:capacity]).values.int()
                               for _ in range(b * hkv)]) if capacity else torch.zeros(b * hkv, 0, dtype=torch.int32)
        indices = torch.nn.functional.pad(indices, (0, n_cols - capacity), value=7).view(b, hkv, n_cols)
        n_tokens = n_cols * 16 - int(torch.randint(0, 16, (1,), generator=gen))
        kv_len = torch.randint(n_tokens - 20, n_tokens + 1, (b,), generator=gen).int() if kv else None
        cases.append(dict(fn="bind", indices=indices, capacity=capacity, ppr=n_cols + 3, bs=16, n_tokens=n_tokens,
                          kv_len=kv_len))
    return cases


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, dict]]:
    cases = make_cases(torch.Generator().manual_seed(SEED))
    return list(zip(cases, run_interpreted(CHILD, cases, tmp_path_factory.mktemp("fixed")), strict=True))


def test_topk_select_newest_in_budget_interpreted(interpreted: list[tuple[dict, dict]]) -> None:
    """Exactly min(k, N) blocks per row, the newest among them, the rest the reference top-(k - 1); the host
    knows the count (``capacity``) and the lists are the mask's ascending compaction."""
    found = [(c, o) for c, o in interpreted if c["fn"] == "select"]
    assert found
    for c, o in found:
        what = f"topk_select newest_in_budget {tuple(c['scores'].shape)} k={c['k']} seed={SEED}"
        want = fixed_reference(c["scores"], c["k"])
        assert torch.equal(o["mask"], want), what
        assert o["capacity"] == min(c["k"], c["scores"].shape[-1]) and o["newest"], what
        assert torch.equal(o["counts"].long(), want.sum(-1)), what
        flat_mask, flat_idx = o["mask"].reshape(-1, want.shape[-1]), o["indices"].reshape(-1, want.shape[-1])
        for row in range(flat_mask.shape[0]):
            listed = torch.nonzero(flat_mask[row]).flatten()
            assert torch.equal(flat_idx[row, : len(listed)].long(), listed), (what, row)


def test_bind_pages_interpreted(interpreted: list[tuple[dict, dict]]) -> None:
    """The one-launch page table equals its torch definition (with and without per-sequence lengths)."""
    found = [(c, o) for c, o in interpreted if c["fn"] == "bind"]
    assert found
    for c, o in found:
        pages, last, tokens = bind_pages_reference(c["indices"], c["capacity"], c["ppr"], block_size=c["bs"],
                                                   n_tokens=c["n_tokens"], kv_len=c["kv_len"])
        what = f"bind_pages capacity={c['capacity']} kv_len={c['kv_len'] is not None} seed={SEED}"
        assert torch.equal(o["pages"], pages) and torch.equal(o["last"], last), what
        assert torch.equal(o["tokens"], tokens), what


def test_bind_pages_reference_by_hand() -> None:
    """Request r's block j is page r * pages_per_request + j; the last page holds the newest block's tokens."""
    indices = torch.tensor([[[0, 2, 3, 9], [1, 3, 9, 9]]], dtype=torch.int32)  # capacity 3, N = 4 blocks
    pages = torch.empty(6, dtype=torch.int32)
    last = torch.empty(2, dtype=torch.int32)
    tokens = bind_pages(indices, 3, 10, pages, last, block_size=16, n_tokens=3 * 16 + 5)
    assert pages.tolist() == [0, 2, 3, 11, 13, 19]
    assert last.tolist() == [5, 5] and tokens.tolist() == [37, 37]


def test_fixed_topk_select_without_kernel_matches_reference() -> None:
    """The torch fallback (no kernel for these scores) keeps the same set as the kernel."""
    scores = torch.randn(2, 3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(SEED))
    sel = topk_select(scores, 7, newest_in_budget=True)
    assert torch.equal(sel.mask, fixed_reference(scores, 7))
    with pytest.raises(UsageError, match="newest_in_budget=True\\) needs an int k >= 1"):
        topk_select(scores, 0, newest_in_budget=True)


def test_fixed_backend_refuses_selections_of_varying_size() -> None:
    """A bitmap, or lists without a host-known capacity, would need the counts read back: refused, with what
    to use instead."""
    mask = torch.zeros(1, 2, 8, dtype=torch.bool)
    mask[..., -1] = True
    lists = CompactSelection(mask, indices=torch.full((1, 2, 8), 7, dtype=torch.int32),
                             counts=torch.ones(1, 2, dtype=torch.int32), includes_newest=True)
    for sel in (Selection(mask), lists):
        with pytest.raises(UsageError, match="newest_in_budget=True"):
            FlashInferFixedBackend().plan(sel, block_size=16, n_tokens=120)


# ---------------------------------------------------------------------------------------------
# GPU


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


@needs_flashinfer
@pytest.mark.parametrize(("b", "hkv", "group", "n_tokens", "keep", "static"),
                         [(1, 8, 4, 8192 + 5, 0.22, False), (2, 2, 8, 3000, 0.05, True), (3, 1, 1, 700, 1.0, True),
                          (1, 4, 4, 131072, 0.22, False)])
def test_fixed_backend_matches_torch_backend_eager_and_in_a_graph(b: int, hkv: int, group: int, n_tokens: int,
                                                                   keep: float, static: bool) -> None:
    from sparsebench.kernels.capture import capture
    from sparsebench.kernels.torch_backend import TorchBackend

    gen = torch.Generator(device="cuda").manual_seed(SEED)
    d, bs = 128, 16
    n_blocks = -(-n_tokens // bs)
    cap_tokens = n_blocks * bs + (64 if static else 0)
    q = torch.randn(b, hkv * group, 1, d, generator=gen, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, hkv, cap_tokens, d, generator=gen, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, hkv, cap_tokens, d, generator=gen, device="cuda", dtype=torch.bfloat16)
    kv_len = torch.full((b,), n_tokens, dtype=torch.int32, device="cuda") if static else None
    scores = torch.randn(b, hkv, n_blocks, generator=gen, device="cuda")
    budget = max(1, round(keep * n_blocks))
    backend = FlashInferFixedBackend()
    key, value = k[:, :, : n_blocks * bs], v[:, :, : n_blocks * bs]

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        sel = topk_select(scores, budget, newest_in_budget=True)
        res = backend.run(backend.plan(sel, block_size=bs, n_tokens=n_tokens, kv_len=kv_len), q, key, value,
                          scaling=d**-0.5)
        return res.out, sel.mask

    def reference(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ref = TorchBackend().attend(q.float(), k[:, :, :n_tokens].float(), v[:, :, :n_tokens].float(),
                                    Selection(mask), block_size=bs, scaling=d**-0.5)
        return ref.out, ref.tokens_read

    out, mask = step()
    ref_out, ref_tokens = reference(mask)
    assert _relative_error(out, ref_out) < 1e-2
    sel = topk_select(scores, budget, newest_in_budget=True)
    tokens = backend.run(backend.plan(sel, block_size=bs, n_tokens=n_tokens, kv_len=kv_len), q, key, value,
                         scaling=d**-0.5).tokens_read
    assert torch.equal(tokens.long().cpu(), ref_tokens.long().cpu())
    graph, (g_out, g_mask) = capture(step)
    for _ in range(2):  # new scores in place: the replay selects and attends to other blocks
        scores.copy_(torch.randn(scores.shape, generator=gen, device="cuda"))
        graph.replay()
        ref_out, _ = reference(g_mask.clone())
        assert torch.equal(g_mask, fixed_reference(scores.cpu(), budget).cuda())
        assert _relative_error(g_out, ref_out) < 1e-2
    assert backend.plans_skipped >= 3
