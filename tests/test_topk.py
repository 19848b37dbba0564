"""Tests of the top-k masks: the reference against a brute-force definition, the Triton kernel against the
reference (bit for bit: same tie and NaN rules), the dispatch the policies use, and input checks.

How the kernel runs on a CPU-only CI: as in tests/test_topp.py, Triton's interpreter must be chosen before
``triton`` is first imported, so the kernel cases run in one child process started with
``TRITON_INTERPRET=1`` and this process checks the masks it sends back. Inputs are fresh each run; set
``SPARSEBENCH_TEST_SEED`` to replay a failure.
"""

from __future__ import annotations

import itertools
import math
import textwrap

import pytest
import torch
from interpreted import HAVE_TRITON, SEED, run_interpreted

from sparsebench.errors import UsageError
from sparsebench.kernels.capture import capture
from sparsebench.kernels.topk import (
    MAX_N,
    TopKConfig,
    default_config,
    pass_bound,
    topk_mask,
    topk_mask_reference,
    topk_mask_torch,
    topk_mask_triton,
)
from sparsebench.policies.quest import Quest, quest_upper_bound
from sparsebench.policies.specattn import SpecAttn, heads_to_kv_groups
from sparsebench.policy import SelectionContext, reduce_groups
from sparsebench.selection import Selection

needs_cuda = pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available()),
                                reason="needs a CUDA device and triton")


# ---------------------------------------------------------------------------------------------
# inputs


def row_kinds(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One float32 row of each kind the kernel must rank exactly, length ``n``."""
    rows = {
        "randn": torch.randn(n, generator=gen),
        "ties": torch.randint(-2, 3, (n,), generator=gen).float(),  # five levels: ties straddle every k
        "negative": -torch.rand(n, generator=gen) * 1e30,
        "positive": torch.rand(n, generator=gen) * 3.0,  # one sign: the narrow-bracket count from pass 0
    }
    inf = torch.randn(n, generator=gen)
    inf[torch.rand(n, generator=gen) < 0.3] = -math.inf
    inf[0] = math.inf
    rows["inf"] = inf
    nan = torch.randn(n, generator=gen)
    nan[torch.rand(n, generator=gen) < 0.3] = math.nan
    rows["nan"] = nan
    # -0.0 and +0.0 are one value (ties by index), next to the smallest subnormals of both signs.
    zeros = torch.tensor([-0.0, 0.0, 1e-45, -1e-45])[torch.randint(0, 4, (n,), generator=gen)]
    rows["signed_zeros"] = zeros
    return rows


def brute_force(row: list[float], k: int) -> list[bool]:
    """The documented rule spelled out: rank by value (NaN lowest, -0.0 == 0.0), ties by lower index."""
    order = sorted(range(len(row)), key=lambda i: (not math.isnan(row[i]), 0.0 if math.isnan(row[i]) else row[i], -i),
                   reverse=True)
    keep = set(order[: max(0, min(k, len(row)))])
    return [i in keep for i in range(len(row))]


def check_exact(scores: torch.Tensor, mask: torch.Tensor, k: int | torch.Tensor, where: str) -> None:
    """``mask`` is the reference's mask, with exactly ``clamp(k, 0, N)`` entries a row."""
    assert mask.dtype == torch.bool and mask.shape == scores.shape, (where, mask.dtype, mask.shape)
    ref = topk_mask_reference(scores, k)
    bad = (mask != ref).reshape(-1, scores.shape[-1]).any(-1)
    assert not bad.any(), f"{where}: rows {torch.nonzero(bad).flatten().tolist()} differ (seed {SEED})"
    want = torch.as_tensor(k).expand(scores.shape[:-1]).clamp(0, scores.shape[-1])
    assert torch.equal(mask.sum(-1), want.to(torch.int64)), where


# ---------------------------------------------------------------------------------------------
# the reference and the torch.topk path


def test_reference_matches_brute_force() -> None:
    gen = torch.Generator().manual_seed(SEED)
    for n in (1, 2, 7, 30):
        x = torch.stack(list(row_kinds(n, gen).values()))
        for k in range(n + 2):
            got = topk_mask_reference(x, k)
            for r in range(x.shape[0]):
                assert got[r].tolist() == brute_force(x[r].tolist(), k), (n, k, r, x[r].tolist())
        per_row = torch.randint(-1, n + 2, (x.shape[0],), generator=gen)
        got = topk_mask_reference(x, per_row)
        for r in range(x.shape[0]):
            assert got[r].tolist() == brute_force(x[r].tolist(), int(per_row[r])), (n, r)


def test_reference_float64_and_half() -> None:
    """float64 is ranked in float64 (not through float32); bf16 equals its float32 conversion."""
    x = torch.tensor([[1.0, 1.0 + 1e-12, 1.0]], dtype=torch.float64)
    assert topk_mask_reference(x, 1).tolist() == [[False, True, False]]
    gen = torch.Generator().manual_seed(SEED)
    h = torch.randn(3, 50, generator=gen).bfloat16()
    assert torch.equal(topk_mask_reference(h, 9), topk_mask_reference(h.float(), 9))


def test_torch_path_is_the_previous_policy_path() -> None:
    """On distinct scores, topk_mask's CPU path (torch.topk) selects what the policies selected before."""
    gen = torch.Generator().manual_seed(SEED)
    scores = torch.randn(2, 3, 50, generator=gen)
    for k in (1, 11, 49, 50):
        before = Selection.from_indices(scores.topk(min(k, 50), dim=-1).indices, 50).mask
        assert torch.equal(topk_mask_torch(scores, k), before)
        assert torch.equal(topk_mask(scores, k), before)  # auto on CPU: torch.topk
        check_exact(scores, topk_mask(scores, k), k, f"cpu auto k={k}")


def test_auto_on_cpu_uses_no_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside the interpreter, CPU tensors never reach the kernel (per-row k takes the reference)."""
    import sparsebench.kernels.topk as topk_module

    def refuse(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("the Triton kernel was called for a CPU tensor")

    monkeypatch.setattr(topk_module, "topk_mask_triton", refuse)
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(4, 30, generator=gen)
    per_row = torch.tensor([0, 3, 30, 31])
    check_exact(x, topk_mask(x, per_row), per_row, "cpu auto per-row k")
    check_exact(x, topk_mask(x, 5, "reference"), 5, "reference backend")
    x3 = torch.randn(2, 3, 10, generator=gen)
    for k in (torch.tensor([[0, 4, 10], [11, 1, -1]]), torch.tensor([[3], [7]])):  # per row, and broadcast
        check_exact(x3, topk_mask(x3, k), k, f"cpu auto per-row k {k.tolist()}")


def test_trivial_budgets_on_every_backend() -> None:
    x = torch.randn(2, 3, 9)
    for backend in ("auto", "torch", "reference"):
        assert topk_mask(x, 9, backend).all() and topk_mask(x, 100, backend).all()
        assert not topk_mask(x, 0, backend).any()
    assert topk_mask(torch.zeros(0, 5), 2).shape == (0, 5)
    assert topk_mask(torch.zeros(3, 0), 2).shape == (3, 0)
    assert topk_mask(torch.zeros(4, 0), torch.tensor(1)).shape == (4, 0)


def _ctx(gen: torch.Generator, **extra: object) -> SelectionContext:
    b, hkv, group, d, n_tokens = 2, 2, 3, 8, 600
    n_blocks = -(-n_tokens // 16)
    return SelectionContext(layer=0, query=torch.randn(b, hkv * group, 1, d, generator=gen), n_tokens=n_tokens,
                            block_size=16, n_blocks=n_blocks, num_kv_heads=hkv, scaling=d**-0.5, step=0,
                            **extra)  # type: ignore[arg-type]


def test_policies_select_as_before_on_cpu() -> None:
    """Quest and SpecAttn --select-by topk on CPU give the selections of the former topk + from_indices code."""
    gen = torch.Generator().manual_seed(SEED)
    key_min = torch.randn(2, 2, 38, 8, generator=gen)
    summaries = {"key_min": key_min, "key_max": key_min + torch.rand(2, 2, 38, 8, generator=gen)}
    ctx = _ctx(gen, summaries=summaries, draft_attention=torch.softmax(torch.randn(2, 6, 38, generator=gen), -1))
    quest = Quest(budget_frac=0.3)
    k = ctx.budget_blocks(None, 0.3)
    scores = reduce_groups(quest_upper_bound(ctx.grouped_query(), summaries["key_min"], summaries["key_max"]), "max")
    assert torch.equal(quest.select(ctx).mask, Selection.from_indices(scores.topk(k).indices, ctx.n_blocks).mask)
    spec = SpecAttn(select_by="topk", budget_frac=0.3)
    mass = heads_to_kv_groups(ctx.draft_attention.float(), 2, "mean")  # type: ignore[union-attr]
    assert torch.equal(spec.select(ctx).mask, Selection.from_indices(mass.topk(k).indices, ctx.n_blocks).mask)


# ---------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize(("k", "match"), [(-1, "k must be >= 0"), (2.0, "int or an integer tensor"),
                                          (True, "int or an integer tensor"), ("3", "int or an integer tensor"),
                                          (torch.tensor([1.0, 2.0]), "integer tensor"),
                                          (torch.tensor([1, 2, 3]), "does not broadcast")])
def test_bad_k(k: object, match: str) -> None:
    for backend in ("auto", "torch", "reference"):
        with pytest.raises(UsageError, match=match):
            topk_mask(torch.randn(2, 5), k, backend)  # type: ignore[arg-type]


@pytest.mark.parametrize(("scores", "match"), [(torch.tensor(1.0), "at least one dimension"),
                                               (torch.tensor([[1, 2, 3]]), "floating-point"),
                                               ([1.0, 2.0], "torch.Tensor")])
def test_bad_scores(scores: object, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        topk_mask(scores, 1)  # type: ignore[arg-type]


def test_bad_backend_and_kernel_limits() -> None:
    with pytest.raises(UsageError, match="unknown top-k backend"):
        topk_mask(torch.randn(2, 5), 1, "cuda")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="one int k"):
        topk_mask_torch(torch.randn(2, 5), torch.tensor([1, 2]))  # type: ignore[arg-type]
    if HAVE_TRITON:
        with pytest.raises(UsageError, match="float32, bfloat16 or float16"):
            topk_mask_triton(torch.randn(2, 5, dtype=torch.float64), 1)
        with pytest.raises(UsageError, match=f"at most {MAX_N}"):
            topk_mask_triton(torch.randn(1, MAX_N + 1), 1)
        with pytest.raises(UsageError, match="power of two"):
            topk_mask_triton(torch.randn(1, 8), 1, config=TopKConfig(num_candidates=3))
    if HAVE_TRITON and not torch.cuda.is_available():
        with pytest.raises(UsageError, match="runs on CUDA tensors"):
            topk_mask_triton(torch.randn(1, 8), 1)
    if torch.cuda.is_available():
        with pytest.raises(UsageError, match="scores' device"):
            topk_mask(torch.randn(2, 5, device="cuda"), torch.tensor([1, 2]))


@pytest.mark.parametrize("n", [1, 16, 100, 512, 513, 2048, 4096, 8192, MAX_N])
def test_default_config(n: int) -> None:
    """Powers of two, at most 32 entries a thread (registers), and a pass bound the search respects."""
    cfg = default_config(n)
    for v in (cfg.num_warps, cfg.num_candidates):
        assert v is not None and v & (v - 1) == 0, cfg
    block = 1 << (max(n, 16) - 1).bit_length()
    assert block <= 32 * 32 * cfg.num_warps, cfg  # type: ignore[operator]
    assert pass_bound(cfg.num_candidates) <= 12  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# the Triton kernel, under the interpreter in a child process

CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.kernels.topk import TopKConfig, topk_mask, topk_mask_triton
    from sparsebench.kernels.topp import interpreter_enabled
    from sparsebench.kernels.quest_kernels import quest_scores
    from sparsebench.policies.quest import Quest, quest_upper_bound
    from sparsebench.policies.specattn import SpecAttn, heads_to_kv_groups
    from sparsebench.policy import SelectionContext, reduce_groups
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    out = []
    for c in torch.load(sys.argv[1]):
        if c["fn"] == "policies":
            ctx = SelectionContext(**c["ctx"])
            bound = quest_upper_bound(ctx.grouped_query(), ctx.summaries["key_min"], ctx.summaries["key_max"])
            kernel_scores = quest_scores(ctx.query, ctx.summaries["key_min"], ctx.summaries["key_max"], "max")
            quest = Quest(budget_frac=c["frac"]).select(ctx).mask
            spec = SpecAttn(select_by="topk", budget_frac=c["frac"]).select(ctx).mask
            mass = heads_to_kv_groups(ctx.draft_attention.float(), ctx.num_kv_heads, "mean")
            out.append(dict(quest=quest, quest_scores=kernel_scores, quest_torch=reduce_groups(bound, "max"),
                            spec=spec, spec_scores=mass,
                            k=ctx.budget_blocks(None, c["frac"])))
        elif c["fn"] == "auto":
            out.append(dict(mask=topk_mask(c["scores"], c["k"]), passes=None))
        else:
            rows = c["scores"].numel() // max(c["scores"].shape[-1], 1)
            passes = torch.zeros(rows, dtype=torch.int32)
            mask = topk_mask_triton(c["scores"], c["k"], config=TopKConfig(**c["kw"]), passes_out=passes)
            out.append(dict(mask=mask, passes=passes))
    torch.save(out, sys.argv[2])
    """
)


def make_cases(gen: torch.Generator) -> list[dict]:
    """Kernel cases for the interpreter (~2 ms an operation there, so rows are short and few)."""
    kinds = torch.stack(list(row_kinds(40, gen).values()))
    cases: list[dict] = []

    def add(name: str, scores: torch.Tensor, k: int | torch.Tensor, fn: str = "triton", **kw: int) -> None:
        cases.append(dict(name=name, scores=scores, k=k, fn=fn, kw=kw))

    for k in (1, 39):  # k = 1 and k = N - 1 on ties, NaN, +-inf, signed zeros...
        add(f"kinds k={k}", kinds, k)
    add("kinds 2 candidates", kinds, 13, num_candidates=2)  # ...k in between, long searches: the pass bound
    add("kinds 32 candidates", kinds[:4], 8, num_candidates=32, num_warps=1)
    add("k = N through the kernel", kinds[:2], 40)
    add("k > N through the kernel", kinds[:2], 45)
    add("k = 0 through the kernel", kinds[:2], 0)
    add("per-row k", kinds, torch.tensor([0, 1, 20, 39, 40, -3, 100], dtype=torch.int32))
    add("per-row k broadcast, dispatched", kinds[:4].reshape(2, 2, 40), torch.tensor([[5], [39]]), fn="auto")
    add("3-d", torch.randn(2, 3, 17, generator=gen), 5)
    add("bfloat16", torch.randn(2, 2, 17, generator=gen).bfloat16(), 4)
    add("float16 ties", torch.randint(0, 3, (2, 33), generator=gen).half(), 10)
    add("strided rows", torch.randn(17, 3, generator=gen).t(), 4)
    add("one entry", torch.randn(2, 1, generator=gen), 1)
    add("n=300", torch.stack([torch.randn(300, generator=gen), torch.randint(0, 4, (300,), generator=gen).float()]),
        66)
    add("auto dispatch", kinds, 7, fn="auto")
    key_min = torch.randn(1, 2, 20, 16, generator=gen)  # head dim 16: the smallest the Quest kernel takes
    ctx = dict(layer=0, query=torch.randn(1, 4, 1, 16, generator=gen), n_tokens=320, block_size=16, n_blocks=20,
               num_kv_heads=2, scaling=16**-0.5, step=0,
               summaries={"key_min": key_min, "key_max": key_min + torch.rand(1, 2, 20, 16, generator=gen)},
               draft_attention=torch.softmax(torch.randn(1, 4, 20, generator=gen), -1))
    cases.append(dict(name="policies", fn="policies", ctx=ctx, frac=0.3))
    return cases


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict]]:
    """Run every kernel case once in a child with TRITON_INTERPRET=1; return (cases, outputs)."""
    cases = make_cases(torch.Generator().manual_seed(SEED))
    return cases, run_interpreted(CHILD, cases, tmp_path_factory.mktemp("topk"))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_kernel_matches_reference_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    cases, outs = interpreted
    for case, out in zip(cases, outs, strict=True):
        if case["fn"] == "policies":
            continue
        check_exact(case["scores"], out["mask"], case["k"], case["name"])


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_kernel_pass_bound_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    """The sample pass, then passes that each divide the 32-bit bracket by at least NUM_CAND + 1."""
    cases, outs = interpreted
    for case, out in zip(cases, outs, strict=True):
        if out.get("passes") is None:
            continue
        cand = case["kw"].get("num_candidates") or default_config(case["scores"].shape[-1]).num_candidates
        assert int(out["passes"].max()) <= pass_bound(cand), (case["name"], out["passes"].tolist())


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_policies_use_the_kernel_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    """Where the kernel serves the tensors, Quest and SpecAttn --select-by topk select its exact top-k plus the
    newest block (Quest: of its scoring kernel's bound, the torch bound up to summation order)."""
    cases, outs = interpreted
    (out,) = [o for c, o in zip(cases, outs, strict=True) if c["fn"] == "policies"]
    # SpecAttn's top-k runs topk_select, which adds the newest block (always attended) in the same launch.
    spec_want = topk_mask_reference(out["spec_scores"], out["k"])
    spec_want[..., -1] = True
    assert torch.equal(out["spec"], spec_want), f"spec under the interpreter (seed {SEED})"
    torch.testing.assert_close(out["quest_scores"], out["quest_torch"], rtol=1e-5, atol=1e-5)
    want = topk_mask_reference(out["quest_scores"], out["k"])
    want[..., -1] = True
    assert torch.equal(out["quest"], want), f"quest under the interpreter (seed {SEED})"


# ---------------------------------------------------------------------------------------------
# the compiled kernel on a GPU (skipped in CPU CI)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n", [1, 100, 512, 2047, 2048, 4096, 8192, MAX_N])
def test_cuda_matches_reference(n: int) -> None:
    gen = torch.Generator().manual_seed(SEED)
    rows = torch.stack(list(row_kinds(n, gen).values()))
    x = torch.cat([rows, torch.randn(9, n, generator=gen)]).cuda()  # 16 rows: several programs per launch
    for dtype in (torch.float32, torch.bfloat16):
        xs = x.to(dtype)
        for k in sorted({1, max(1, n // 5), max(1, n - 1), n}):
            passes = torch.zeros(x.shape[0], dtype=torch.int32, device="cuda")
            mask = topk_mask_triton(xs, k, passes_out=passes)
            check_exact(xs.cpu(), mask.cpu(), k, f"cuda n={n} {dtype} k={k}")
            assert int(passes.max()) <= pass_bound(default_config(n).num_candidates), (n, k)  # type: ignore[arg-type]
        per_row = torch.randint(-1, n + 2, (x.shape[0],), generator=gen).cuda()
        check_exact(xs.cpu(), topk_mask(xs, per_row).cpu(), per_row.cpu(), f"cuda n={n} {dtype} per-row k")


@pytest.mark.gpu
@needs_cuda
def test_cuda_fallback_beyond_max_n() -> None:
    """Rows too long for the kernel: torch.topk for an int k, the reference for a per-row k."""
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(3, MAX_N + 5, generator=gen).cuda()
    assert topk_mask(x, 77).sum(-1).tolist() == [77] * 3
    per_row = torch.tensor([0, 5, MAX_N + 9], device="cuda")
    check_exact(x.cpu(), topk_mask(x, per_row).cpu(), per_row.cpu(), "cuda fallback per-row k")


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_capture() -> None:
    """The call is captured once and replays correctly for new scores and a per-row k updated in place."""
    gen = torch.Generator().manual_seed(SEED)
    scores = torch.randn(8, 2048, generator=gen).cuda()
    per_row = torch.full((8,), 300, dtype=torch.int64, device="cuda")
    graph, (fixed, varying) = capture(lambda: (topk_mask(scores, 450), topk_mask(scores, per_row)))
    for trial in range(3):
        scores.copy_(torch.randint(0, 50, (8, 2048), generator=gen).float() if trial == 1 else
                     torch.randn(8, 2048, generator=gen))
        per_row.copy_(torch.randint(0, 2100, (8,), generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        check_exact(scores.cpu(), fixed.cpu(), 450, f"graph replay {trial}")
        check_exact(scores.cpu(), varying.cpu(), per_row.cpu(), f"graph replay {trial} per-row k")


@pytest.mark.gpu
@needs_cuda
def test_cuda_quest_uses_the_kernel() -> None:
    """Quest on CUDA selects the exact top-k of its kernel's bound (the reference's tie rule) plus the newest
    block; the kernel's bound is the torch one up to float32 summation order."""
    from sparsebench.kernels.quest_kernels import quest_scores

    gen = torch.Generator().manual_seed(SEED)
    key_min = torch.randn(2, 8, 2048, 128, generator=gen).cuda()
    summaries = {"key_min": key_min, "key_max": key_min + torch.rand(2, 8, 2048, 128, generator=gen).cuda()}
    ctx = SelectionContext(layer=0, query=torch.randn(2, 32, 1, 128, generator=gen).cuda(), n_tokens=2048 * 16,
                           block_size=16, n_blocks=2048, num_kv_heads=8, scaling=128**-0.5, step=0,
                           summaries=summaries)
    k = ctx.budget_blocks(None, 0.2)
    scores = quest_scores(ctx.query, key_min, summaries["key_max"], "max")
    torch.testing.assert_close(scores, reduce_groups(quest_upper_bound(ctx.grouped_query(), key_min,
                                                                       summaries["key_max"]), "max"))
    want = topk_mask_reference(scores.cpu(), k)
    want[..., -1] = True  # the fused top-k adds the newest block, which the engine always attends
    assert torch.equal(Quest(budget_frac=0.2).select(ctx).mask.cpu(), want), "quest on cuda"


# ---------------------------------------------------------------------------------------------
# the CUDA radix-selection kernel behind topk_select (sparsebench.kernels.cuda_topk)


def check_lists(scores: torch.Tensor, sel: object, k: int | torch.Tensor, *, newest: str, where: str) -> None:
    """``sel`` (a CompactSelection) holds the reference's set plus or within ``newest`` handling, its ids in
    ascending order and their count."""
    n = scores.shape[-1]
    if newest == "in_budget":  # top-(k - 1) of the older blocks, then the newest
        want = torch.zeros(scores.shape, dtype=torch.bool)
        want[..., : n - 1] = topk_mask_reference(scores[..., : n - 1].cpu(), max(int(k) - 1, 0))
        want[..., n - 1] = int(k) >= 1
    else:
        want = topk_mask_reference(scores.cpu(), k.cpu() if isinstance(k, torch.Tensor) else k)
        if newest == "extra":
            want[..., n - 1] = True
    mask = sel.mask.cpu()  # type: ignore[attr-defined]
    bad = (mask != want).reshape(-1, n).any(-1)
    assert not bad.any(), f"{where}: rows {torch.nonzero(bad).flatten().tolist()} differ (seed {SEED})"
    counts = sel.counts.cpu().reshape(-1)  # type: ignore[attr-defined]
    indices = sel.indices.cpu().reshape(-1, n)  # type: ignore[attr-defined]
    for r, row in enumerate(want.reshape(-1, n)):
        ids = torch.nonzero(row).flatten().to(torch.int32)
        assert int(counts[r]) == ids.numel() and torch.equal(indices[r, : ids.numel()], ids), (where, r)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("n", [1, 7, 33, 256, 257, 1000, 1024, 2048, 3001, 8192, MAX_N])
def test_cuda_radix_select_matches_reference(n: int) -> None:
    """Every row kind, dtype, newest-block rule and k (int, per-row tensor, out of range) against the reference."""
    from sparsebench.kernels.topk import topk_select

    gen = torch.Generator().manual_seed(SEED)
    rows = torch.stack(list(row_kinds(n, gen).values()))
    x = torch.cat([rows, torch.randn(8, n, generator=gen), torch.full((1, n), 0.5)]).reshape(2, 8, n).cuda()
    cfg = TopKConfig(kernel="cuda")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        xs = x.to(dtype)
        ref = xs.float() if dtype != torch.float32 else xs  # the conversion is exact
        for k in sorted({0, 1, max(1, n // 5), max(1, n - 1), n, n + 3}):
            check_lists(ref, topk_select(xs, k, keep_newest=False, config=cfg), k, newest="none",
                        where=f"n={n} {dtype} k={k}")
            check_lists(ref, topk_select(xs, k, keep_newest=True, config=cfg), k, newest="extra",
                        where=f"n={n} {dtype} k={k} newest")
            if k >= 1:
                check_lists(ref, topk_select(xs, k, newest_in_budget=True, config=cfg), k, newest="in_budget",
                            where=f"n={n} {dtype} k={k} newest in budget")
        per_row = torch.randint(-1, n + 2, (2, 8), generator=gen).cuda()
        check_lists(ref, topk_select(xs, per_row, keep_newest=False, config=cfg), per_row.clamp(0, n),
                    newest="none", where=f"n={n} {dtype} per-row k")


@pytest.mark.gpu
@needs_cuda
def test_cuda_radix_select_in_a_graph() -> None:
    """Captured once, the CUDA kernel replays correctly on new scores (ties, then Gaussian) in place."""
    from sparsebench.kernels.topk import topk_select

    gen = torch.Generator().manual_seed(SEED)
    scores = torch.randn(1, 8, 8192, generator=gen).cuda()
    graph, sel = capture(lambda: topk_select(scores, 1802, config=TopKConfig(kernel="cuda")))
    for trial in range(3):
        scores.copy_(torch.randint(0, 50, (1, 8, 8192), generator=gen).float() if trial == 1 else
                     torch.randn(1, 8, 8192, generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        check_lists(scores, sel, 1802, newest="extra", where=f"graph replay {trial}")


@pytest.mark.gpu
@needs_cuda
def test_cuda_radix_select_many_rows() -> None:
    """More rows than multiprocessors (every layer's selection at once) take the 16-entries-a-thread blocks."""
    from sparsebench.kernels.topk import topk_select

    gen = torch.Generator().manual_seed(SEED)
    for n in (2048, 8192):
        scores = torch.randn(30, 8, n, generator=gen).cuda()
        scores[3] = torch.randint(0, 4, (8, n), generator=gen).float().cuda()  # ties straddle the k-th
        k = round(0.22 * n)
        check_lists(scores, topk_select(scores, k, config=TopKConfig(kernel="cuda")), k, newest="extra",
                    where=f"240 rows of {n}")


def test_cuda_kernel_choice_on_cpu() -> None:
    """``auto`` keeps the Triton/torch path off CUDA; asking for the CUDA kernel there says why it cannot run."""
    from sparsebench.kernels.topk import _use_cuda

    scores = torch.randn(2, 4096)
    assert not _use_cuda(None, scores, 4096)
    assert not _use_cuda(TopKConfig(kernel="triton"), scores, 4096)
    with pytest.raises(UsageError, match="CUDA top-k kernel cannot run here: the scores are not on a CUDA device"):
        _use_cuda(TopKConfig(kernel="cuda"), scores, 4096)
    with pytest.raises(UsageError, match="'auto', 'triton' or 'cuda'"):
        _use_cuda(TopKConfig(kernel="fast"), scores, 4096)  # type: ignore[arg-type]


def test_cuda_radix_launch_shape() -> None:
    """About 8 entries a thread, a power-of-two block (the 2048 bins split evenly), every entry covered."""
    from sparsebench.kernels.cuda_topk import MAX_ITEMS, launch_shape

    for n, rows in itertools.product((1, 8, 9, 255, 256, 257, 2048, 8191, 8192, MAX_N), (8, 240)):
        threads, items = launch_shape(n, rows, sms=132)
        assert threads & (threads - 1) == 0 and 256 <= threads <= 1024 and 2048 % threads == 0, n
        assert threads * items >= n and items <= MAX_ITEMS, n
    assert launch_shape(8192, 8) == (1024, 8) and launch_shape(8192, 240) == (512, 16)  # one wave for many rows
