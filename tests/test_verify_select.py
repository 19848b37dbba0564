"""The fused verification selection (sparsebench.kernels.verify_select): the kernel against the torch reference
pipeline under Triton's interpreter (bitmaps, union lists, the decode kernel fed with them, SpecAttn's top-k
through topk_select), the reference against SpecAttn's own policy path, input checks, and on a GPU (skipped
without CUDA) the 8B shapes, a CUDA-graph capture and the speculator with and without the fused path.

Kernel cases run in one child process with TRITON_INTERPRET=1 (tests/interpreted.py says why); inputs are
fresh each run (SPARSEBENCH_TEST_SEED replays a failure).
"""

from __future__ import annotations

import itertools
import math
import textwrap

import pytest
import torch
from interpreted import SEED, run_interpreted

from sparsebench.errors import UsageError
from sparsebench.kernels.capture import capture
from sparsebench.kernels.compact import CompactSelection, compacted
from sparsebench.kernels.topp import triton_usable
from sparsebench.kernels.verify_select import verify_select, verify_select_reference
from sparsebench.policies import SpecAttn
from sparsebench.policies.specattn import heads_to_kv_groups
from sparsebench.policy import SelectionContext
from sparsebench.selection import Selection

CUDA = torch.cuda.is_available()
#: Relative margin within which the reference's kept prefix "nearly" reaches p; the kernel's own is ~1e-12.
NEAR = 1e-9


# ---------------------------------------------------------------------------------------------
# inputs and checks


def draft_mass(rows: int, heads: int, n: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Softmax mass per (row, head) over ``n`` blocks: peaked (a few heavy blocks), flat, or with zeroed blocks."""
    temp = {"peaked": 4.0, "flat": 0.05, "zeros": 2.0}[kind]
    x = torch.softmax(torch.randn(rows, heads, n, generator=gen) * temp, -1)
    if kind == "zeros":
        x[torch.rand(rows, heads, n, generator=gen) < 0.3] = 0.0
    return x


def row_limits(rows: int, n: int, gen: torch.Generator, *, consecutive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks each verified row sees (ascending, the last row all ``n``) and the blocks its mass covers (a reused
    last row's: its predecessor's). ``consecutive``: rows one token apart, as in a verification; otherwise
    arbitrary limits, which the kernel must honour per row just the same."""
    if consecutive:
        start = int(torch.randint(0, 16, (1,), generator=gen))  # position within the last block
        pos = torch.arange(rows) + max(0, 16 * (n - 1) + start - rows + 1)
        rb = torch.div(pos + 16, 16, rounding_mode="floor").clamp(max=n)
        rb[-1] = n
    else:
        rb = torch.sort(torch.randint(1, n + 1, (rows,), generator=gen)).values
        rb[-1] = n
    mb = rb.clone()
    if rows > 1:
        mb[-1] = rb[-2]
    return rb, mb


def near_ties(x: torch.Tensor, p: float) -> torch.Tensor:
    """Rows of ``x`` ``[M, N]`` whose sort-based top-p prefix reaches ``p`` by less than ``NEAR`` of the mass: where
    the kernel's float64 margin may keep the next lower value too (sparsebench.kernels.topp, "Exactness")."""
    xs = torch.sort(x.double(), -1, descending=True).values
    cum, total = xs.cumsum(-1), xs.sum(-1, keepdim=True)
    k = (cum < p * total).sum(-1, keepdim=True).clamp(max=x.shape[-1] - 1)
    return (cum.gather(-1, k) - p * total).squeeze(-1) <= NEAR * total.squeeze(-1)


def check_selection(args: dict, got: dict, where: str) -> None:
    """``got`` (mask, indices, counts) is the reference's bitmap, up to near-ties, and its union's compaction."""
    ref = verify_select_reference(**args).mask
    mask = got["mask"]
    assert mask.shape == ref.shape, where
    diff = (mask != ref)[0].any(-1)  # [Hkv, R]
    if diff.any():
        rows, n = args["mass"].shape[0], args["mass"].shape[-1]
        mb = args.get("mass_blocks", args["row_blocks"])
        x = args["mass"].float().masked_fill(torch.arange(n).view(1, 1, n) >= mb.view(rows, 1, 1), 0.0)
        grouped = heads_to_kv_groups(x, args["num_kv_heads"], args.get("head_reduce", "mean")).transpose(0, 1)
        tied = near_ties(grouped.reshape(-1, n), args["p"]).view(diff.shape)
        assert not (diff & ~tied).any(), f"{where}: (kv head, row) pairs differ from the reference off near-ties: " \
                                         f"{(diff & ~tied).nonzero().tolist()} (seed {SEED})"
    union = mask[0].any(1)  # [Hkv, N]
    counts, indices = got["counts"][0], got["indices"][0]
    assert torch.equal(counts, union.sum(-1).int()), where
    for h in range(union.shape[0]):
        assert torch.equal(indices[h, : counts[h]], union[h].nonzero().flatten().int()), f"{where}, kv head {h}"


# ---------------------------------------------------------------------------------------------
# the kernel under the interpreter


def make_cases(gen: torch.Generator) -> list[dict]:
    """Every (rows, kv heads, group) combination with p, distributions and sizes cycled through; then the tail
    tile, heads that do not divide into kv groups, max reduction, sinks, bfloat16 mass, arbitrary limits."""
    cases: list[dict] = []
    ps, kinds = itertools.cycle((0.5, 0.9, 0.97, 1.0)), itertools.cycle(("peaked", "flat", "zeros"))
    sizes = itertools.cycle((1, 7, 40, 129, 300))
    for rows, hkv, group in itertools.product((1, 3, 5), (1, 2), (1, 4)):
        n = next(sizes)
        rb, mb = row_limits(rows, n, gen, consecutive=rows != 3)
        mass = draft_mass(rows, hkv * group, n, next(kinds), gen)
        cases.append(dict(kind="select", args=dict(mass=mass, row_blocks=rb, mass_blocks=mb, p=next(ps),
                                                   num_kv_heads=hkv)))
    extra = [(2, 3, 2, 8195, "peaked", {}),  # main tile of 8192 plus a tail of 16
             (3, 3, 2, 50, "peaked", {}),  # 3 heads over 2 kv heads: every kv head takes all heads
             (3, 8, 2, 60, "zeros", dict(head_reduce="max")),
             (4, 4, 1, 33, "flat", dict(sink_blocks=2)),
             (3, 4, 2, 45, "peaked", dict(dtype=torch.bfloat16))]
    for rows, heads, hkv, n, kind, kw in extra:
        rb, mb = row_limits(rows, n, gen, consecutive=True)
        mass = draft_mass(rows, heads, n, kind, gen).to(kw.pop("dtype", torch.float32))
        cases.append(dict(kind="select", args=dict(mass=mass, row_blocks=rb, mass_blocks=mb, p=0.9,
                                                   num_kv_heads=hkv, **kw)))
    # The mass as a strided view of the speculator's buffer [R + 1, slots, 1, H, max_blocks].
    buf = draft_mass(6, 2 * 8, 70, "peaked", gen).view(6, 2, 1, 8, 70)
    rb, mb = row_limits(5, 64, gen, consecutive=True)
    cases.append(dict(kind="select", args=dict(mass=buf[:5, 1, 0, :, :64], row_blocks=rb, mass_blocks=mb, p=0.97,
                                               num_kv_heads=2)))
    # Every slot of the speculator's buffer in one launch (verify_select_slots), 3 slots, the last reused row.
    buf = draft_mass(6, 3 * 8, 70, "peaked", gen).view(6, 3, 1, 8, 70)
    rb, mb = row_limits(5, 66, gen, consecutive=True)
    cases.append(dict(kind="slots", args=dict(mass=buf[:5, :, 0, :, :66], row_blocks=rb, mass_blocks=mb, p=0.9,
                                              num_kv_heads=2)))
    # Decode with the fused lists: 3 rows, 2 kv heads of 2 query heads, 150 tokens in blocks of 16.
    rows, n_tokens, bs = 3, 150, 16
    n = -(-n_tokens // bs)
    pos = torch.arange(n_tokens - rows, n_tokens)
    cases.append(dict(kind="attend", args=dict(mass=draft_mass(rows, 4, n, "peaked", gen),
                                               row_blocks=torch.div(pos + bs, bs, rounding_mode="floor"), p=0.8,
                                               num_kv_heads=2),
                      q=torch.randn(1, 4, rows, 16, generator=gen), k=torch.randn(1, 2, n_tokens, 16, generator=gen),
                      v=torch.randn(1, 2, n_tokens, 16, generator=gen), block_size=bs))
    # SpecAttn's top-k from the draft mass [B=2, H=4, N=40] over 2 kv heads, budget 30% of 640 tokens.
    cases.append(dict(kind="topk", mass=draft_mass(2, 4, 40, "zeros", gen), budget_frac=0.3))
    return cases


CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.kernels.compact import CompactSelection
    from sparsebench.kernels.topp import interpreter_enabled
    from sparsebench.kernels.triton_backend import TritonBackend
    from sparsebench.kernels.verify_select import verify_select, verify_select_slots
    from sparsebench.policies import SpecAttn
    from sparsebench.policy import SelectionContext
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    out = []
    for c in torch.load(sys.argv[1]):
        if c["kind"] == "topk":
            b, h, n = c["mass"].shape
            ctx = SelectionContext(layer=0, query=torch.zeros(b, h, 1, 16), n_tokens=16 * n, block_size=16,
                                   n_blocks=n, num_kv_heads=2, scaling=0.25, step=0, draft_attention=c["mass"])
            sel = SpecAttn(select_by="topk", budget_frac=c["budget_frac"]).select(ctx)
            out.append(dict(mask=sel.mask, compact=isinstance(sel, CompactSelection)))
            continue
        if c["kind"] == "slots":
            out.append([dict(mask=s.mask, indices=s.indices, counts=s.counts, compact=isinstance(s, CompactSelection))
                        for s in verify_select_slots(**c["args"])])
            continue
        sel = verify_select(**c["args"])
        res = dict(mask=sel.mask, indices=sel.indices, counts=sel.counts, compact=isinstance(sel, CompactSelection))
        if c["kind"] == "attend":
            backend = TritonBackend("indices")
            plan = backend.plan(sel, block_size=c["block_size"], n_tokens=c["k"].shape[2])
            res["lists_reused"] = plan.indices is sel.indices and plan.counts is sel.counts
            r = backend.run(plan, c["q"], c["k"], c["v"], scaling=0.25)
            res.update(out=r.out, tokens_read=r.tokens_read)
        out.append(res)
    torch.save(out, sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict]]:
    """Every kernel case run once in a child with TRITON_INTERPRET=1: (cases, outputs)."""
    cases = make_cases(torch.Generator().manual_seed(SEED))
    return cases, run_interpreted(CHILD, cases, tmp_path_factory.mktemp("verify_select"))


def test_kernel_matches_reference_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    """Bitmaps equal the torch pipeline's (up to near-ties) and the lists are their union's compaction, for every
    shape, distribution, p, row limits, reduction, sink, dtype and a strided mass view."""
    cases, outs = interpreted
    selects = [(c, o) for c, o in zip(cases, outs, strict=True) if c["kind"] == "select"]
    assert len(selects) >= 17
    for i, (case, got) in enumerate(selects):
        args = case["args"]
        assert got["compact"], f"case {i}: the kernel did not run"
        check_selection(args, got, f"case {i} (R={args['mass'].shape[0]}, H={args['mass'].shape[1]}, "
                                   f"Hkv={args['num_kv_heads']}, N={args['mass'].shape[2]}, p={args['p']})")


def test_slots_in_one_launch_match_each_slot_alone_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    """verify_select_slots on the speculator's [R, S, H, N] view gives, per slot, the selection verify_select
    gives for that slot alone (bitmap up to near-ties, its own union lists): slots do not share tickets or lists."""
    cases, outs = interpreted
    case, got = next((c, o) for c, o in zip(cases, outs, strict=True) if c["kind"] == "slots")
    args = case["args"]
    assert len(got) == args["mass"].shape[1] == 3
    for s, sel in enumerate(got):
        assert sel["compact"], f"slot {s}: the kernel did not run"
        check_selection({**args, "mass": args["mass"][:, s]}, sel, f"slot {s}")


def test_decode_with_fused_lists_equals_torch_backend_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    """The Triton backend takes the carried union lists as they are (no compaction in plan) and attends exactly
    what the torch backend attends with the reference selection."""
    from sparsebench.kernels.torch_backend import TorchBackend

    cases, outs = interpreted
    case, got = next((c, o) for c, o in zip(cases, outs, strict=True) if c["kind"] == "attend")
    assert got["lists_reused"]
    ref = verify_select_reference(**case["args"])
    assert torch.equal(got["mask"], ref.mask)
    backend = TorchBackend()
    plan = backend.plan(ref, block_size=case["block_size"], n_tokens=case["k"].shape[2])
    want = backend.run(plan, case["q"], case["k"], case["v"], scaling=0.25)
    torch.testing.assert_close(got["out"], want.out, rtol=1e-5, atol=1e-5)
    assert torch.equal(got["tokens_read"], want.tokens_read)


def test_specattn_topk_uses_topk_select_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    """SpecAttn's top-k, where the kernel runs, is topk_select's compacted selection: the top-k set of the grouped
    mass (lowest index first among ties) plus the newest block."""
    from sparsebench.kernels.topk import topk_mask_reference

    cases, outs = interpreted
    case, got = next((c, o) for c, o in zip(cases, outs, strict=True) if c["kind"] == "topk")
    mass = case["mass"]
    n = mass.shape[-1]
    k = -(-math.ceil(case["budget_frac"] * 16 * n) // 16)  # SelectionContext.budget_blocks: 12 blocks
    want = topk_mask_reference(heads_to_kv_groups(mass, 2, "mean"), k)
    want[..., n - 1] = True
    assert got["compact"] and torch.equal(got["mask"], want)


# ---------------------------------------------------------------------------------------------
# no kernel


def test_reference_is_specattns_batched_policy_path() -> None:
    """The reference computes what the speculator's unfused path computes through SpecAttn itself: the policy on
    the rows stacked as a batch (mass zeroed past each row's mass blocks), then row limits and the newest block."""
    gen = torch.Generator().manual_seed(SEED)
    rows, hkv, n = 5, 2, 90
    mass = draft_mass(rows, 8, n, "peaked", gen)
    rb, mb = row_limits(rows, n, gen, consecutive=False)
    for policy in (SpecAttn(p=0.9), SpecAttn(p=0.8, head_reduce="max", sink_blocks=3)):
        blocks = torch.arange(n).view(1, 1, n)
        ctx = SelectionContext(layer=0, query=torch.zeros(rows, 8, 1, 16), n_tokens=16 * n, block_size=16,
                               n_blocks=n, num_kv_heads=hkv, scaling=0.25, step=0,
                               draft_attention=mass.masked_fill(blocks >= mb.view(rows, 1, 1), 0.0))
        limit = rb.view(rows, 1, 1)
        mask = (policy.select(ctx).mask & (blocks < limit)) | (blocks == limit - 1)
        ref = verify_select_reference(mass, rb, policy.p, num_kv_heads=hkv, mass_blocks=mb,
                                      head_reduce=policy.head_reduce, sink_blocks=policy.sink_blocks)
        assert torch.equal(ref.mask, mask.transpose(0, 1).unsqueeze(0)), policy.label()


@pytest.mark.skipif(triton_usable("cpu"), reason="this process runs Triton's interpreter")
def test_without_the_kernel_the_reference_comes_back() -> None:
    """On a plain CPU (or without triton) verify_select returns the reference as a plain selection."""
    gen = torch.Generator().manual_seed(SEED)
    mass = draft_mass(3, 4, 20, "peaked", gen)
    rb, mb = row_limits(3, 20, gen, consecutive=True)
    sel = verify_select(mass, rb, 0.9, num_kv_heads=2, mass_blocks=mb)
    assert type(sel) is Selection
    assert torch.equal(sel.mask, verify_select_reference(mass, rb, 0.9, num_kv_heads=2, mass_blocks=mb).mask)


@pytest.mark.parametrize(("kw", "match"), [
    (dict(mass=torch.rand(3, 20)), "rows, heads, n_blocks"),
    (dict(row_blocks=torch.ones(2, dtype=torch.long)), "row_blocks must be an integer tensor of shape"),
    (dict(row_blocks=torch.ones(3)), "row_blocks must be an integer tensor"),
    (dict(mass_blocks=torch.ones(4, dtype=torch.long)), "mass_blocks must be"),
    (dict(p=0.0), "top-p threshold"),
    (dict(num_kv_heads=0), "num_kv_heads"),
    (dict(head_reduce="sum"), "head_reduce"),
    (dict(sink_blocks=-1), "sink_blocks"),
])
def test_bad_input_is_a_usage_error(kw: dict, match: str) -> None:
    args = dict(mass=torch.rand(3, 4, 20), row_blocks=torch.full((3,), 20), p=0.9, num_kv_heads=2) | kw
    with pytest.raises(UsageError, match=match):
        verify_select(**args)


def test_per_row_compact_selection_carries_union_lists() -> None:
    """A per-row CompactSelection holds its union's lists [B, Hkv, N]; the Triton backend's plan takes them as they
    are (no compaction launch); lists shaped like the per-row mask are refused."""
    from sparsebench.kernels.triton_backend import TritonBackend

    mask = torch.tensor([[[[True, False, False], [False, False, True]]]])  # [1, 1, 2 rows, 3 blocks]
    sel = CompactSelection(mask, indices=torch.tensor([[[0, 2, 0]]], dtype=torch.int32),
                           counts=torch.tensor([[2]], dtype=torch.int32))
    assert sel.per_row and compacted(sel) is not None
    plan = TritonBackend("indices").plan(sel, block_size=16, n_tokens=40)
    assert plan.indices is sel.indices and plan.counts is sel.counts
    with pytest.raises(TypeError, match="int32"):
        CompactSelection(mask, indices=torch.zeros(1, 1, 2, 3, dtype=torch.int32),
                         counts=torch.zeros(1, 1, dtype=torch.int32))


def test_speculator_fuses_only_specattn_topp_below_one_where_the_kernel_runs() -> None:
    """The speculator's fused flag: SpecAttn top-p below p = 1 with the kernels usable (not on a plain CPU)."""
    from test_fastdecode_specdec import CFG, DRAFTS, TARGET

    from sparsebench.fastdecode.speculate import FastSpeculator
    from sparsebench.kernels.torch_backend import TorchBackend

    for policy, fused in ((SpecAttn(p=0.9), triton_usable("cpu")), (SpecAttn(p=1.0), False),
                          (SpecAttn(p=0.9, select_by="topk"), False)):
        spec = FastSpeculator(TARGET, DRAFTS["separate"], policy, TorchBackend(), CFG, gamma=2, max_tokens=48)
        assert spec.fused_select == fused, policy.label()


# ---------------------------------------------------------------------------------------------
# GPU


def _gpu_case(n: int, p: float, gen: torch.Generator) -> dict:
    """The 8B-shaped verification: 5 rows, 32 draft heads, 8 kv heads, ``n`` blocks, a reused last row."""
    rb, mb = row_limits(5, n, gen, consecutive=True)
    mass = draft_mass(5, 32, n, "peaked", gen)
    return dict(mass=mass.cuda(), row_blocks=rb.cuda(), mass_blocks=mb.cuda(), p=p, num_kv_heads=8)


def _on_cpu(args: dict) -> dict:
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("n", [2048, 2049, 8192, 8193])
@pytest.mark.parametrize("p", [0.9, 0.97])
def test_gpu_8b_shape_matches_reference(n: int, p: float) -> None:
    gen = torch.Generator().manual_seed(SEED + n)
    for _ in range(3):
        args = _gpu_case(n, p, gen)
        sel = verify_select(**args)
        assert isinstance(sel, CompactSelection)
        check_selection(_on_cpu(args), dict(mask=sel.mask.cpu(), indices=sel.indices.cpu(), counts=sel.counts.cpu()),
                        f"n={n} p={p}")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("n", [2049, 8193])
def test_gpu_cuda_graph_replays(n: int) -> None:
    """Captured once, replayed on new masses and row limits: every replay matches the reference (the union's ticket
    counters re-arm themselves between replays)."""
    gen = torch.Generator().manual_seed(SEED + 7)
    static = _gpu_case(n, 0.97, gen)
    graph, sel = capture(lambda: verify_select(**static))
    for _ in range(4):
        fresh = _gpu_case(n, 0.97, gen)
        for name in ("mass", "row_blocks", "mass_blocks"):
            static[name].copy_(fresh[name])
        graph.replay()
        torch.cuda.synchronize()
        check_selection(_on_cpu(static), dict(mask=sel.mask.cpu(), indices=sel.indices.cpu(),
                                              counts=sel.counts.cpu()), f"replay, n={n}")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("graphs", [True, False])
def test_gpu_speculator_fused_selection_equals_unfused(graphs: bool) -> None:
    """SpecAttn p=0.9 speculation on the Triton backend: the fused selection gives the same tokens and the same KV
    reads per layer as the policy path (fp32 tiny model, CUDA graphs and eager)."""
    from test_fastdecode_specdec import gpu_pair

    from sparsebench.engine import EngineConfig
    from sparsebench.fastdecode.speculate import FastSpeculator
    from sparsebench.kernels.triton_backend import TritonBackend

    target, draft, prompt = gpu_pair()
    runs = []
    for fused in (True, False):
        sp = FastSpeculator(target, draft, SpecAttn(p=0.9), TritonBackend(), EngineConfig(dense_layers=1), gamma=4,
                            max_tokens=400, cuda_graphs=graphs)
        assert sp.fused_select
        sp.fused_select = fused
        sp.prefill(prompt)
        runs.append((sp.generate(24), sp.kv_summary().per_layer))
    assert runs[0] == runs[1]
    layer = runs[0][1][1]
    assert 0 < layer[0] < layer[1], "the sparse layer read nothing or everything"


# ---------------------------------------------------------------------------------------------
# compiled for the GPU (sm_90) without one: the checks the interpreter skips


def test_kernel_compiles_for_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launches verify_select makes at the bench's verification shapes (2K, 32K, 128K contexts: one tile, and
    the 8192 + tail layout), for float32 and bfloat16 mass, mean and max, compile for sm_90."""
    from sparsebench.kernels import topp
    from sparsebench.kernels import verify_select as vs
    from sparsebench.kernels.compile_check import LaunchRecorder, compile_launch, nvidia_compiler_available

    if not (vs._HAVE_TRITON and nvidia_compiler_available()):
        pytest.skip("needs triton with its NVIDIA backend (compiles for sm_90 without a GPU)")
    recorder = LaunchRecorder()
    monkeypatch.setattr(vs, "_kernel", lambda: recorder(vs._verify_select_kernel))
    monkeypatch.setattr(vs, "triton_usable", lambda device: True)
    shapes = ((129, torch.float32, "mean"), (2049, torch.bfloat16, "max"), (8193, torch.float32, "mean"))
    for n, dtype, reduce in shapes:
        rb = torch.full((5,), n)
        verify_select(torch.zeros(5, 32, n, dtype=dtype), rb, 0.97, num_kv_heads=8, mass_blocks=rb, head_reduce=reduce)
    assert len(recorder.launches) == 3
    names = (*topp.SEARCH_HELPERS, *vs._HELPERS)
    for name in names:  # the compiler resolves helpers by name, as JIT functions: wrap them, restored afterwards
        monkeypatch.setattr(vs, name, getattr(vs, name))
    topp.jit_helpers(vars(vs), names)
    for launch in recorder.launches:
        compile_launch(launch)
