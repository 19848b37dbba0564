"""The fused attention step: top-k + compaction in one launch, the one-launch split-K merge, Quest's kernels.

CPU: every kernel under Triton's interpreter in one child process (tests/interpreted.py), on fresh random
inputs (``SPARSEBENCH_TEST_SEED`` replays one), against the exact torch references: the selected set and
its lists (:func:`sparsebench.kernels.topk.topk_select`), Quest's scores (bit for bit on integer-valued
inputs, where every sum is exact whatever its order) and selection, the newest block's summaries, and the
whole step score -> select -> plan -> run with both merge paths; and Quest's kernels compiled for sm_90
as their wrappers launch them (sparsebench.kernels.compile_check: the GPU compiler's dtype checks, which
the interpreter lacks). GPU (skipped without CUDA): the same
against the torch backend in bfloat16, CUDA-graph replays (the merge's counters reset themselves), and
many back-to-back launches of the one-launch merge.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest
import torch
from interpreted import HAVE_TRITON, SEED, run_interpreted

from sparsebench.kernels.capture import capture
from sparsebench.kernels.compact import CompactSelection, compacted
from sparsebench.kernels.compile_check import Launch, LaunchRecorder, compile_launch, nvidia_compiler_available
from sparsebench.kernels.topk import topk_mask_reference
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.kernels.triton_backend import TritonBackend
from sparsebench.kvcache import LayerSummaries
from sparsebench.policies.quest import Quest, quest_upper_bound
from sparsebench.policy import SelectionContext, reduce_groups
from sparsebench.selection import Selection

HAVE_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not (HAVE_TRITON and HAVE_CUDA), reason="needs a CUDA device and triton")


def expected_selection(scores: torch.Tensor, k: int | torch.Tensor, keep_newest: bool) -> torch.Tensor:
    """The reference top-k set (lowest index wins a tie) plus, optionally, the newest block."""
    mask = topk_mask_reference(scores, k)
    if keep_newest:
        mask[..., -1] = True
    return mask


def check_lists(mask: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor, what: str) -> None:
    """``indices``/``counts`` are exactly the ascending compaction of ``mask``."""
    assert torch.equal(counts.long(), mask.sum(-1)), what
    flat = mask.reshape(-1, mask.shape[-1])
    for row in range(flat.shape[0]):
        want = torch.nonzero(flat[row]).flatten()
        assert torch.equal(indices.reshape(-1, mask.shape[-1])[row, : len(want)].long(), want), (what, row)


def torch_quest_scores(q: torch.Tensor, key_min: torch.Tensor, key_max: torch.Tensor, how: str) -> torch.Tensor:
    """Quest's float32 torch path: the bound of every query head, reduced over its group."""
    b, hq, _, d = q.shape
    grouped = q.reshape(b, key_min.shape[1], hq // key_min.shape[1], d).float()
    return reduce_groups(quest_upper_bound(grouped, key_min.float(), key_max.float()), how)


def quest_inputs(gen: torch.Generator, *, b: int, hkv: int, group: int, d: int, n: int, integer: bool,
                 dtype: torch.dtype, spare: int = 0) -> dict:
    """A query and block summaries; ``spare`` > 0 gives summaries that are views into a larger cache."""
    def draw(*shape: int) -> torch.Tensor:
        return torch.randint(-4, 5, shape, generator=gen).float() if integer else torch.randn(*shape, generator=gen)

    low = draw(b, hkv, n + spare, d)
    high = low + (torch.randint(0, 4, low.shape, generator=gen).float() if integer else torch.rand(low.shape))
    return dict(q=draw(b, hkv * group, 1, d).to(dtype), key_min=low.to(dtype)[:, :, :n],
                key_max=high.to(dtype)[:, :, :n])


# ---------------------------------------------------------------------------------------------
# the kernels under the interpreter, in one child process

CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.fastdecode.cache import StaticKVCache
    from sparsebench.kernels.compact import CompactSelection
    from sparsebench.kernels.quest_kernels import quest_scores
    from sparsebench.kernels.topk import topk_select
    from sparsebench.kernels.topp import interpreter_enabled
    from sparsebench.kernels.triton_backend import TritonBackend
    from sparsebench.kernels.triton_decode import KernelConfig
    from sparsebench.policies.quest import Quest
    from sparsebench.policy import SelectionContext
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    out = []
    for c in torch.load(sys.argv[1]):
        if c["fn"] == "select":
            sel = topk_select(c["scores"], c["k"], keep_newest=c["keep_newest"])
            out.append(dict(compact=isinstance(sel, CompactSelection), mask=sel.mask, indices=sel.indices,
                            counts=sel.counts, newest=sel.includes_newest))
        elif c["fn"] == "quest":
            scores = quest_scores(c["q"], c["key_min"], c["key_max"], c["how"])
            ctx = SelectionContext(**c["ctx"])
            sel = Quest(budget_frac=c["frac"], group_reduce=c["how"]).select(ctx)
            out.append(dict(scores=scores, mask=sel.mask, compact=isinstance(sel, CompactSelection)))
        elif c["fn"] == "summaries":
            keys = c["keys"]
            b, h, t, d = keys.shape
            cache = StaticKVCache(layers=1, batch=b, kv_heads=h, head_dim=d, capacity=t + 5, block_size=c["block"],
                                  dtype=keys.dtype, device="cpu", summaries=frozenset({"minmax", "mean"}),
                                  summary_layers=[0])
            cache.write(0, keys[:, :, : c["start"]], keys[:, :, : c["start"]], torch.arange(c["start"]))
            cache.refresh_summaries(0, 0, c["start"])
            views = []
            for n in range(c["start"] + 1, t + 1):
                pos = torch.tensor([n - 1])
                cache.write(0, keys[:, :, n - 1 : n], keys[:, :, n - 1 : n], pos)
                cache.update_summaries(0, pos)
                cache.update_summaries(0, pos)  # idempotent: a replayed step changes nothing
                view = cache.summary_view(0, -(-n // c["block"]), torch.full((b,), n, dtype=torch.int32))
                views.append({name: t.clone() for name, t in view.items()})  # views of the live cache: copy
            out.append(dict(views=views, kernel=cache._use_kernel))
        else:  # the whole fused step, and the same selection through both merge paths
            sel = topk_select(c["scores"], c["k"])
            res = {}
            for fused in (True, False):
                backend = TritonBackend("indices", KernelConfig(splits=c["splits"], fused_merge=fused))
                plan = backend.plan(sel, block_size=c["block"], n_tokens=c["k_cache"].shape[2], kv_len=c["kv_len"])
                r = backend.run(plan, c["q"], c["k_cache"], c["v_cache"], scaling=c["scaling"])
                res[fused] = dict(out=r.out, tokens=r.tokens_read, reused=plan.indices is sel.indices)
            again = backend.run(plan, c["q"], c["k_cache"], c["v_cache"], scaling=c["scaling"])
            out.append(dict(mask=sel.mask, fused=res[True], separate=res[False],
                            repeat_equal=bool(torch.equal(again.out, res[False]["out"]))))
    torch.save(out, sys.argv[2])
    """
)


def make_cases(gen: torch.Generator) -> list[dict]:
    """Tiny problems (the interpreter takes ~2 ms an operation): all kernels' branches in ~15 s."""
    cases: list[dict] = []
    ties = torch.randint(0, 3, (2, 2, 37), generator=gen).float()
    odd = torch.randn(1, 3, 20, generator=gen)
    odd[0, 0, 3], odd[0, 1, :5], odd[0, 2, -1] = float("nan"), float("-inf"), float("nan")
    for scores, k, newest in ((ties, 9, True), (ties, 9, False), (odd, 4, True), (odd, 20, True),
                              (torch.randn(2, 1, 33, generator=gen).half(), torch.tensor([[0], [32]]), True),
                              (torch.randn(1, 2, 1, generator=gen), 1, True)):
        cases.append(dict(fn="select", scores=scores, k=k, keep_newest=newest))
    for i, (group, how, integer, dtype) in enumerate(((4, "max", True, torch.float32), (2, "sum", True, torch.float16),
                                                       (1, "mean", True, torch.float32),
                                                       (4, "mean", False, torch.float32),
                                                       (2, "max", False, torch.float16))):
        n = (20, 70, 9, 33, 80)[i]
        x = quest_inputs(gen, b=1 + i % 2, hkv=2, group=group, d=(16, 32)[i % 2], n=n, integer=integer, dtype=dtype,
                         spare=3 * (i % 2))
        ctx = dict(layer=0, query=x["q"], n_tokens=n * 16 - 5, block_size=16, n_blocks=n, num_kv_heads=2,
                   scaling=1.0, step=0, summaries={"key_min": x["key_min"], "key_max": x["key_max"]})
        cases.append(dict(fn="quest", how=how, integer=integer, ctx=ctx, frac=0.3, **x))
    for dtype, block, start in ((torch.float32, 8, 5), (torch.float16, 16, 14)):
        cases.append(dict(fn="summaries", keys=torch.randn(2, 2, start + 21, 16, generator=gen).to(dtype),
                          block=block, start=start))
    for b, hkv, group, n_tokens, splits, lens in ((1, 2, 4, 70, 3, False), (2, 1, 2, 95, 2, True),
                                                  (1, 1, 1, 40, 1, False)):
        n_blocks = -(-n_tokens // 16)
        kv_len = torch.randint(n_tokens - 12, n_tokens + 1, (b,), generator=gen).to(torch.int32) if lens else None
        cases.append(dict(fn="step", scores=torch.randn(b, hkv, n_blocks, generator=gen), k=2, splits=splits,
                          block=16, q=torch.randn(b, hkv * group, 1, 32, generator=gen),
                          k_cache=torch.randn(b, hkv, n_tokens, 32, generator=gen),
                          v_cache=torch.randn(b, hkv, n_tokens, 32, generator=gen), kv_len=kv_len, scaling=32**-0.5))
    return cases


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, dict]]:
    cases = make_cases(torch.Generator().manual_seed(SEED))
    return list(zip(cases, run_interpreted(CHILD, cases, tmp_path_factory.mktemp("fused")), strict=True))


def _of(interpreted: list[tuple[dict, dict]], fn: str) -> list[tuple[dict, dict]]:
    found = [(c, o) for c, o in interpreted if c["fn"] == fn]
    assert found, fn
    return found


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_topk_select_interpreted(interpreted: list[tuple[dict, dict]]) -> None:
    """One launch: the reference top-k set (ties to the lowest index, NaN last) plus the newest block, and
    its ascending block lists and counts."""
    for c, o in _of(interpreted, "select"):
        what = f"topk_select {tuple(c['scores'].shape)} k={c['k']} newest={c['keep_newest']} seed={SEED}"
        assert o["compact"] and o["newest"] == c["keep_newest"], what
        assert torch.equal(o["mask"], expected_selection(c["scores"], c["k"], c["keep_newest"])), what
        check_lists(o["mask"], o["indices"], o["counts"], what)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_quest_kernels_interpreted(interpreted: list[tuple[dict, dict]]) -> None:
    """Quest's scoring kernel gives the torch path's float32 scores (bit for bit on integer inputs), and the
    policy selects the reference top-k of them plus the newest block."""
    for c, o in _of(interpreted, "quest"):
        what = f"quest {c['how']} {c['q'].dtype} integer={c['integer']} q {tuple(c['q'].shape)} seed={SEED}"
        ref = torch_quest_scores(c["q"], c["key_min"], c["key_max"], c["how"])
        assert o["compact"], what
        if c["integer"]:
            assert torch.equal(o["scores"], ref), what
            ctx = SelectionContext(**c["ctx"])
            want = expected_selection(ref, ctx.budget_blocks(None, c["frac"]), True)
            assert torch.equal(o["mask"], want), what
        else:
            torch.testing.assert_close(o["scores"], ref, rtol=1e-5, atol=1e-5, msg=what)
            ctx = SelectionContext(**c["ctx"])  # sums in another order: exact against the kernel's own scores
            assert torch.equal(o["mask"], expected_selection(o["scores"], ctx.budget_blocks(None, c["frac"]), True))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_block_summaries_kernel_interpreted(interpreted: list[tuple[dict, dict]]) -> None:
    """The one-launch summary update gives sparsebench.kvcache's summaries after every token."""
    for c, o in _of(interpreted, "summaries"):
        assert o["kernel"], "the cache did not use the kernel under the interpreter"
        keys, block = c["keys"], c["block"]
        ref = LayerSummaries(frozenset({"minmax", "mean"}), block)
        for i, got in enumerate(o["views"]):
            n = c["start"] + 1 + i
            ref.update(keys[:, :, :n].float())
            for name, value in ref.view().items():
                if name == "key_mean":
                    torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6, msg=f"{name} at {n}")
                else:  # min and max are exact (and in the keys' dtype)
                    assert torch.equal(got[name].float(), value), f"{name} at {n} tokens ({keys.dtype})"


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_fused_step_interpreted(interpreted: list[tuple[dict, dict]]) -> None:
    """score -> topk_select -> plan (reusing the lists) -> run: the torch backend's output and token counts,
    with the merge in the split kernel and in a second kernel; the merge counters leave no trace."""
    for c, o in _of(interpreted, "step"):
        what = f"step {tuple(c['q'].shape)} splits={c['splits']} seed={SEED}"
        ref = TorchBackend().attend(c["q"], c["k_cache"], c["v_cache"], Selection(o["mask"]), block_size=c["block"],
                                    scaling=c["scaling"], kv_len=c["kv_len"])
        for path in ("fused", "separate"):
            assert o[path]["reused"], f"{what}: plan() compacted a selection that carried its lists"
            torch.testing.assert_close(o[path]["out"], ref.out, rtol=1e-4, atol=1e-4, msg=f"{what} {path}")
            assert torch.equal(o[path]["tokens"], ref.tokens_read), f"{what} {path}"
        assert o["repeat_equal"], what


# ---------------------------------------------------------------------------------------------
# compiled for the GPU (sm_90) without one: the checks the interpreter skips

#: (query, summaries) dtypes: the fast engine's bf16/fp16 caches, float32 kvcache summaries with a half
#: query (the HF engine) and float32 throughout (CPU-like runs), each with another group and reduction.
QUEST_COMPILE_CASES = [(torch.bfloat16, torch.bfloat16, 4, "max"), (torch.float16, torch.float16, 8, "sum"),
                       (torch.bfloat16, torch.float32, 4, "mean"), (torch.float32, torch.bfloat16, 1, "max"),
                       (torch.float32, torch.float32, 2, "max")]


@pytest.fixture
def quest_launches(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Launch]]:
    """Quest's kernel wrappers, run on CPU tensors with their launches recorded instead of run."""
    from sparsebench.kernels import quest_kernels

    if not (HAVE_TRITON and nvidia_compiler_available()):
        pytest.skip("needs triton with its NVIDIA backend (compiles for sm_90 without a GPU)")
    recorder = LaunchRecorder()
    monkeypatch.setattr(quest_kernels, "_jit", recorder)
    monkeypatch.setattr(quest_kernels, "triton_usable", lambda device: True)
    yield recorder.launches


def test_quest_kernels_compile_for_gpu(quest_launches: list[Launch]) -> None:
    """What the wrappers launch compiles with Triton's GPU compiler, which checks what the interpreter does
    not: the H200 run rejected the scoring kernel's fp32 x bf16 tl.dot (Triton 3.6 promotes bfloat16
    tl.maximum operands to float32). Scores: every (query, summaries) dtype pair the engines and `bench
    attention` use; summaries: min/max and the float32 sum, together and alone, for each key dtype."""
    from sparsebench.kernels.quest_kernels import quest_scores, refresh_block

    for q_dtype, summary_dtype, group, how in QUEST_COMPILE_CASES:
        key_min, key_max = torch.zeros(2, 1, 2, 70, 128, dtype=summary_dtype)[:, :, :, :67]  # the cache's views
        quest_scores(torch.zeros(1, 2 * group, 1, 128, dtype=q_dtype), key_min, key_max, how)
    pos = torch.tensor([5])
    for dtype, minmax, mean in ((torch.bfloat16, True, True), (torch.float16, True, True),
                                (torch.float32, True, False), (torch.bfloat16, False, True)):
        summary = torch.zeros(2, 2, 2, 3, 128, dtype=dtype) if minmax else (None, None)
        refresh_block(torch.zeros(2, 2, 40, 128, dtype=dtype), pos, 16, key_min=summary[0], key_max=summary[1],
                      key_sum=torch.zeros(2, 2, 3, 128) if mean else None)
    assert len(quest_launches) == len(QUEST_COMPILE_CASES) + 4
    for launch in quest_launches:
        compile_launch(launch)


# ---------------------------------------------------------------------------------------------
# no kernel


def test_compact_selection_contract() -> None:
    """A CompactSelection is a Selection (policies, metrics and the torch backend read its mask) whose lists
    must match its shape; set operations return plain selections."""
    mask = torch.tensor([[[True, False, True]]])
    sel = CompactSelection(mask, indices=torch.tensor([[[0, 2, 0]]], dtype=torch.int32),
                           counts=torch.tensor([[2]], dtype=torch.int32))
    assert isinstance(sel, Selection) and compacted(sel) is not None and compacted(Selection(mask)) is None
    assert type(sel.union(Selection(mask))) is Selection and type(sel.with_blocks(1)) is Selection
    with pytest.raises(TypeError, match="int32"):
        CompactSelection(mask, indices=torch.zeros(1, 1, 3, dtype=torch.int64), counts=torch.zeros(1, 1))
    with pytest.raises(TypeError, match="indices and counts"):
        CompactSelection(mask)


def test_topk_select_falls_back_on_cpu() -> None:
    """Without the kernel (plain CPU) the same set comes back as a plain Selection the backend compacts."""
    from sparsebench.kernels.topk import topk_select

    scores = torch.randn(2, 3, 40, generator=torch.Generator().manual_seed(SEED))
    sel = topk_select(scores, 7)
    assert type(sel) is Selection
    assert torch.equal(sel.mask, expected_selection(scores, 7, True))


# ---------------------------------------------------------------------------------------------
# GPU


def gpu_problem(gen: torch.Generator, *, b: int, hkv: int, group: int, n_tokens: int, d: int = 128,
                dtype: torch.dtype = torch.bfloat16) -> dict:
    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to("cuda", dtype)

    return dict(q=draw(b, hkv * group, 1, d), k=draw(b, hkv, n_tokens, d) * 1.5, v=draw(b, hkv, n_tokens, d),
                scores=torch.randn(b, hkv, -(-n_tokens // 16), generator=gen).cuda(), scaling=d**-0.5)


GPU_STEPS = [(1, 8, 4, 8192), (1, 8, 4, 32768), (2, 4, 8, 12345), (8, 8, 4, 4096), (1, 1, 16, 1000), (1, 2, 2, 17)]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("shape", GPU_STEPS, ids=[f"B{s[0]}-H{s[1]}x{s[2]}-T{s[3]}" for s in GPU_STEPS])
def test_gpu_fused_step_matches_torch(shape: tuple[int, int, int, int]) -> None:
    from sparsebench.kernels.topk import topk_select
    from sparsebench.kernels.triton_decode import KernelConfig

    b, hkv, group, n_tokens = shape
    pb = gpu_problem(torch.Generator().manual_seed(SEED + n_tokens), b=b, hkv=hkv, group=group, n_tokens=n_tokens)
    k = max(1, round(0.22 * pb["scores"].shape[-1]))
    sel = topk_select(pb["scores"], k)
    assert isinstance(sel, CompactSelection)
    assert torch.equal(sel.mask.cpu(), expected_selection(pb["scores"].cpu(), k, True))
    check_lists(sel.mask.cpu(), sel.indices.cpu(), sel.counts.cpu(), f"gpu {shape}")  # type: ignore[union-attr]
    ref = TorchBackend().attend(pb["q"], pb["k"], pb["v"], sel, block_size=16, scaling=pb["scaling"])
    for fused in (True, False):
        backend = TritonBackend("indices", KernelConfig(fused_merge=fused))
        for _ in range(3):  # repeated launches: the merge counters must be back at zero each time
            res = backend.attend(pb["q"], pb["k"], pb["v"], sel, block_size=16, scaling=pb["scaling"])
            err = float((res.out.float() - ref.out.float()).norm() / ref.out.float().norm())
            assert err < 1e-2, (shape, fused, err)
            assert torch.equal(res.tokens_read, ref.tokens_read), (shape, fused)


@pytest.mark.gpu
@needs_gpu
def test_gpu_fused_merge_is_deterministic_under_load() -> None:
    """Many back-to-back one-launch merges (many splits, all racing for the tickets) give the two-launch
    result every time: a partial read before it was written would show as a difference."""
    from sparsebench.kernels.triton_decode import KernelConfig

    pb = gpu_problem(torch.Generator().manual_seed(SEED), b=4, hkv=8, group=4, n_tokens=65536)
    sel = Selection(torch.rand(pb["scores"].shape, device="cuda") < 0.3)
    want = TritonBackend("indices", KernelConfig(splits=64, fused_merge=False)).attend(
        pb["q"], pb["k"], pb["v"], sel, block_size=16, scaling=pb["scaling"])
    backend = TritonBackend("indices", KernelConfig(splits=64, fused_merge=True))
    outs = [backend.attend(pb["q"], pb["k"], pb["v"], sel, block_size=16, scaling=pb["scaling"]) for _ in range(200)]
    torch.cuda.synchronize()
    for res in outs:
        torch.testing.assert_close(res.out, want.out, rtol=1e-3, atol=1e-3)
        assert torch.equal(res.tokens_read, want.tokens_read)


@pytest.mark.gpu
@needs_gpu
def test_gpu_fused_step_graph_replay() -> None:
    """Quest's whole fused step (scores -> top-k lists -> plan -> run) captured once, replayed on new inputs."""
    gen = torch.Generator().manual_seed(SEED)
    b, hkv, group, n, d = 2, 8, 4, 2048, 128
    x = quest_inputs(gen, b=b, hkv=hkv, group=group, d=d, n=n, integer=True, dtype=torch.bfloat16)
    q, key_min, key_max = (x[name].cuda() for name in ("q", "key_min", "key_max"))
    keys = torch.randn(b, hkv, n * 16, d, generator=gen).to("cuda", torch.bfloat16)
    values = torch.randn(b, hkv, n * 16, d, generator=gen).to("cuda", torch.bfloat16)
    ctx = SelectionContext(layer=0, query=q, n_tokens=n * 16, block_size=16, n_blocks=n, num_kv_heads=hkv,
                           scaling=d**-0.5, step=0, summaries={"key_min": key_min, "key_max": key_max})
    backend, policy = TritonBackend(), Quest(budget_frac=0.22)
    holder: dict[str, Selection] = {}

    def step() -> torch.Tensor:
        holder["sel"] = policy.select(ctx)
        plan = backend.plan(holder["sel"], block_size=16, n_tokens=n * 16)
        return backend.run(plan, q, keys, values, scaling=d**-0.5).out

    graph, out = capture(step)
    assert isinstance(holder["sel"], CompactSelection)
    for _ in range(3):
        y = quest_inputs(gen, b=b, hkv=hkv, group=group, d=d, n=n, integer=True, dtype=torch.bfloat16)
        for name, target in (("q", q), ("key_min", key_min), ("key_max", key_max)):
            target.copy_(y[name])
        keys.normal_()
        graph.replay()
        torch.cuda.synchronize()
        scores = torch_quest_scores(q.cpu(), key_min.cpu(), key_max.cpu(), "max")
        want = expected_selection(scores, ctx.budget_blocks(None, 0.22), True)
        assert torch.equal(holder["sel"].mask.cpu(), want)
        ref = TorchBackend().attend(q, keys, values, holder["sel"], block_size=16, scaling=d**-0.5).out
        assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 1e-2


@pytest.mark.gpu
@needs_gpu
def test_gpu_quest_kernels_match_torch() -> None:
    """bf16 summaries at Llama-3-8B's shape: scores match the float32 torch bound; the cache's one-launch
    summary update matches the torch path (min/max exactly)."""
    from sparsebench.fastdecode.cache import StaticKVCache
    from sparsebench.kernels.quest_kernels import quest_scores

    gen = torch.Generator().manual_seed(SEED)
    x = quest_inputs(gen, b=2, hkv=8, group=4, d=128, n=8192, integer=False, dtype=torch.bfloat16, spare=100)
    q, key_min, key_max = (x[name].cuda() for name in ("q", "key_min", "key_max"))
    for how in ("max", "sum", "mean"):
        torch.testing.assert_close(quest_scores(q, key_min, key_max, how), torch_quest_scores(q, key_min, key_max, how),
                                   rtol=1e-3, atol=1e-2)
    caches = []
    for kernel in (True, False):
        cache = StaticKVCache(layers=1, batch=2, kv_heads=8, head_dim=128, capacity=4096, block_size=16,
                              dtype=torch.bfloat16, device="cuda", summaries=frozenset({"minmax", "mean"}),
                              summary_layers=[0])
        cache._use_kernel = kernel
        keys = torch.randn(2, 8, 1000, 128, generator=torch.Generator().manual_seed(SEED)).to("cuda", torch.bfloat16)
        cache.write(0, keys[:, :, :900], keys[:, :, :900], torch.arange(900, device="cuda"))
        cache.refresh_summaries(0, 0, 900)
        for n in range(900, 1000):
            pos = torch.tensor([n], device="cuda")
            cache.write(0, keys[:, :, n : n + 1], keys[:, :, n : n + 1], pos)
            cache.update_summaries(0, pos)
        caches.append(cache.summaries[0])
    for name in ("key_min", "key_max"):
        assert torch.equal(caches[0][name], caches[1][name]), name
    torch.testing.assert_close(caches[0]["key_sum"], caches[1]["key_sum"], rtol=1e-5, atol=1e-4)


def test_pdl_variants_compile_for_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The split and merge kernels with programmatic dependent launch (``KernelConfig(pdl=True)``, on a GPU only)
    compile for sm_90: the launches a CPU call records, with the PDL argument and launch option added."""
    import dataclasses

    from sparsebench.errors import UsageError
    from sparsebench.kernels import triton_decode

    if not (HAVE_TRITON and nvidia_compiler_available()):
        pytest.skip("needs triton with its NVIDIA backend (compiles for sm_90 without a GPU)")
    from triton.runtime.jit import JITFunction

    recorder = LaunchRecorder()
    monkeypatch.setattr(triton_decode, "_jit", recorder)
    monkeypatch.setattr(triton_decode, "_require_runnable", lambda device: None)
    for helper in triton_decode._HELPERS:  # as the module's own _jit wraps them for compiling (restored after)
        monkeypatch.setattr(triton_decode, helper, JITFunction(getattr(triton_decode, helper)))
    q = torch.zeros(1, 8, 1, 128, dtype=torch.bfloat16)
    k, v = torch.zeros(2, 1, 2, 256, 128, dtype=torch.bfloat16)
    mask = torch.ones(1, 2, 16, dtype=torch.bool)
    idx, cnt = torch.zeros(1, 2, 16, dtype=torch.int32), torch.full((1, 2), 16, dtype=torch.int32)
    triton_decode.sparse_decode(q, k, v, mask, block_size=16, scaling=0.1, indices=idx, counts=cnt,
                                config=triton_decode.KernelConfig(splits=4))
    assert [launch.fn.__name__ for launch in recorder.launches] == ["_split_kernel", "_merge_kernel"]
    for launch in recorder.launches:
        compile_launch(dataclasses.replace(launch, kwargs={**launch.kwargs, **triton_decode._pdl_args(True)}))
    shape = dict(head_dim=128, dtype=torch.bfloat16, block_size=16, n_blocks=16, heads=2, device="cpu")
    assert triton_decode.resolve_config(None, **shape).pdl is False  # on where it can run: not on a CPU
    with pytest.raises(UsageError, match="programmatic dependent launch"):
        triton_decode.resolve_config(triton_decode.KernelConfig(pdl=True), **shape)
    assert triton_decode.resolve_config(triton_decode.KernelConfig(merge_d_parts=8), **shape).merge_d_parts == 8
    for bad in (3, 16):  # not a power of two; fewer than 16 of the 128 values a program
        with pytest.raises(UsageError, match="merge_d_parts"):
            triton_decode.resolve_config(triton_decode.KernelConfig(merge_d_parts=bad), **shape)
