"""The Triton block-sparse decode backend against the torch backend and an exact float64 reference.

CPU: the kernels run under Triton's interpreter in one child process (``TRITON_INTERPRET=1`` must be set
before triton is first imported, for the whole process; see tests/test_topp.py), on fresh random
inputs each run (``SPARSEBENCH_TEST_SEED`` replays one): single-row decode and several query rows
(speculative verification: shared and per-row selections, causal within the window). GPU (skipped
without CUDA): bf16 against the torch backend over many shapes up to 32K tokens (static-cache slices
included), a CUDA-graph capture of plan + run replayed on changed inputs, and bf16 multi-row queries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from interpreted import HAVE_TRITON, REPO, SEED, run_interpreted
from test_torch_backend import masked_reference

from sparsebench.errors import UsageError
from sparsebench.kernels.capture import capture
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.kernels.triton_backend import TritonBackend
from sparsebench.selection import Selection

HAVE_CUDA = torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# inputs


def make_case(gen: torch.Generator, *, b: int, hkv: int, group: int, d: int, n_tokens: int, block: int = 16,
              mode: str = "indices", softcap: float | None = None, kv_len: bool = False, empty_rows: bool = False,
              layout: str = "contiguous", dtype: torch.dtype = torch.float32, config: dict | None = None,
              keep: float = 0.5, q_rows: int = 1, per_row: bool = False) -> dict:
    """One random decode problem; the selection always holds each row's newest live block.

    ``kv_len``: the cache holds garbage (large keys) past each sequence's length. ``empty_rows``: some
    rows select only their newest block. ``layout``: ``capacity`` slices a larger preallocated cache
    (stride(2) == D, the engine's static cache), ``bthd`` permutes [B, T, H, D] tensors (query too).
    ``q_rows`` query rows sit at the last positions of each sequence; ``per_row`` gives each its own
    selection ``[B, Hkv, Q, N]``, which may hold blocks in the row's future (the kernel must mask them).
    """
    n_blocks = -(-n_tokens // block)
    if layout == "bthd":
        q = torch.randn(b, q_rows, hkv * group, d, generator=gen).transpose(1, 2)
        k = torch.randn(b, n_tokens, hkv, d, generator=gen).transpose(1, 2)
        v = torch.randn(b, n_tokens, hkv, d, generator=gen).transpose(1, 2)
    else:
        q = torch.randn(b, hkv * group, q_rows, d, generator=gen)
        extra = 2 * block if layout == "capacity" else 0
        k = torch.randn(b, hkv, n_tokens + extra, d, generator=gen)[:, :, :n_tokens]
        v = torch.randn(b, hkv, n_tokens + extra, d, generator=gen)[:, :, :n_tokens]
    lens = None
    live = torch.full((b,), n_tokens)
    if kv_len:
        live = torch.randint(max(1, n_tokens - 2 * block), n_tokens + 1, (b,), generator=gen)
        lens = live.to(torch.int32)
        garbage = torch.arange(n_tokens).view(1, 1, n_tokens, 1) >= live.view(b, 1, 1, 1)
        k.copy_(torch.where(garbage, 50.0 * torch.randn(k.shape, generator=gen), k))  # in place: keeps the layout
    # Each query row keeps the block of its own position, so no row is left with nothing to attend.
    own = (live.view(b, 1) - q_rows + torch.arange(q_rows)).clamp(min=0) // block  # [B, Q]
    if per_row:
        mask = torch.rand(b, hkv, q_rows, n_blocks, generator=gen) < keep
        mask[torch.arange(b).view(b, 1), :, torch.arange(q_rows), own] = True
    else:
        mask = torch.rand(b, hkv, n_blocks, generator=gen) < keep
        if empty_rows:
            mask[:, torch.rand(hkv, generator=gen) < 0.6] = False
        mask[torch.arange(b).view(b, 1), :, own] = True
    return dict(q=q.to(dtype), k=k.to(dtype), v=v.to(dtype), mask=mask, block=block, mode=mode, softcap=softcap,
                kv_len=lens, scaling=d**-0.5, config=config or {})


def make_cases(gen: torch.Generator) -> list[dict]:
    """Shapes that cover the kernel's branches at sizes the interpreter runs in ~10 s in all."""
    cases = []
    for i in range(14):
        mode = ("bitmap", "indices")[i % 2]
        cases.append(make_case(
            gen, b=1 + (i // 5) % 2, hkv=1 + (i // 2) % 2, group=(1, 2, 4)[i % 3], d=(64, 128)[(i // 3) % 2],
            n_tokens=int(torch.randint(1, 100, (1,), generator=gen)), mode=mode,
            softcap=(None, 20.0)[(i // 4) % 2], kv_len=i % 3 == 1, empty_rows=i % 4 == 2,
            layout=("contiguous", "capacity", "bthd")[(i // 4) % 3],
            config=dict(blocks_per_tile=(1, 2, 4)[i % 3], splits=(None, 1, 3)[(i // 2) % 3]),
        ))
    cases.append(make_case(gen, b=1, hkv=1, group=2, d=256, n_tokens=40, mode="indices", softcap=30.0))
    cases.append(make_case(gen, b=2, hkv=2, group=2, d=64, n_tokens=90, block=32, mode="bitmap", kv_len=True))
    # Half precision under the interpreter is float16 only: Triton 3.9's interpreter computes tl.dot of bfloat16
    # operands wrongly (garbage of order 1e10 on a plain 16x16 product); bf16 is tested on the GPU below.
    cases.append(make_case(gen, b=1, hkv=2, group=4, d=64, n_tokens=70, mode="indices", dtype=torch.float16))
    cases.append(make_case(gen, b=1, hkv=2, group=2, d=64, n_tokens=50, mode="bitmap", dtype=torch.float16,
                           kv_len=True))
    # The one-launch merge (an option: the default second merge kernel measured faster): one row and several,
    # both modes.
    for q_rows, per_row, mode in ((1, False, "indices"), (3, True, "bitmap")):
        cases.append(make_case(gen, b=2, hkv=2, group=2, d=64, n_tokens=80, mode=mode, kv_len=True, q_rows=q_rows,
                               per_row=per_row, config=dict(blocks_per_tile=1, splits=3, fused_merge=True)))
    # The two-launch merge with each row's head dim split over several programs (KernelConfig.merge_d_parts).
    for q_rows, d_parts in ((1, 4), (3, 2)):
        cases.append(make_case(gen, b=2, hkv=2, group=2, d=64, n_tokens=80, mode="indices", kv_len=True,
                               q_rows=q_rows, config=dict(blocks_per_tile=1, splits=3, merge_d_parts=d_parts)))
    # Several query rows: (rows, per-row selection, GQA group, mode, splits, blocks per tile, softcap, layout).
    multi = [(2, False, 1, "indices", None, 2, None, "contiguous"), (2, True, 4, "bitmap", 3, 1, None, "capacity"),
             (4, True, 1, "indices", 2, 1, None, "contiguous"), (4, False, 4, "bitmap", 2, 2, 20.0, "bthd"),
             (4, True, 4, "indices", 3, 2, None, "bthd"), (1, True, 2, "indices", 2, 1, None, "contiguous")]
    for q_rows, per_row, group, mode, splits, bpt, softcap, layout in multi:
        cases.append(make_case(
            gen, b=2, hkv=2, group=group, d=64, n_tokens=int(torch.randint(40, 100, (1,), generator=gen)), mode=mode,
            softcap=softcap, kv_len=True, layout=layout, q_rows=q_rows, per_row=per_row,
            config=dict(blocks_per_tile=bpt, splits=splits),
        ))
    return cases


def reference(case: dict) -> torch.Tensor:
    """The float64 masked dense attention of each sequence's live tokens (tests/test_torch_backend.py).

    Query row ``r`` of ``Q`` is a one-row problem over the tokens up to its position ``len - Q + r``, with
    its own row of a per-row selection: causality checked independently of the torch backend.
    """
    q, k, v, mask, block = case["q"], case["k"], case["v"], case["mask"], case["block"]
    q_rows = q.shape[2]
    rows = mask if mask.dim() == 4 else mask.unsqueeze(2).expand(-1, -1, q_rows, -1)
    outs = torch.empty(q.shape, dtype=torch.float64)
    for bi in range(q.shape[0]):
        live = k.shape[2] if case["kv_len"] is None else int(case["kv_len"][bi])
        for r in range(q_rows):
            n = live - q_rows + r + 1
            token_mask = rows[bi : bi + 1, :, min(r, rows.shape[2] - 1)].repeat_interleave(block, dim=-1)[..., :n]
            outs[bi : bi + 1, :, r : r + 1] = masked_reference(
                q[bi : bi + 1, :, r : r + 1], k[bi : bi + 1, :, :n], v[bi : bi + 1, :, :n], token_mask,
                case["scaling"], case["softcap"])
    return outs


def torch_backend(case: dict):
    return TorchBackend().attend(case["q"], case["k"], case["v"], Selection(case["mask"]), block_size=case["block"],
                                 scaling=case["scaling"], softcap=case["softcap"], kv_len=case["kv_len"])


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.double()).norm() / ref.double().norm())


# ---------------------------------------------------------------------------------------------
# the kernels under the interpreter, in a child process

CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.kernels.topp import interpreter_enabled
    from sparsebench.kernels.triton_backend import TritonBackend
    from sparsebench.kernels.triton_decode import KernelConfig, compact_selection
    from sparsebench.selection import Selection
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    cases = torch.load(sys.argv[1])
    out = []
    for c in cases:
        backend = TritonBackend(selection_mode=c["mode"], config=KernelConfig(**c["config"]))
        res = backend.attend(c["q"], c["k"], c["v"], Selection(c["mask"]), block_size=c["block"],
                             scaling=c["scaling"], softcap=c["softcap"], kv_len=c["kv_len"])
        idx, cnt = compact_selection(c["mask"])
        out.append(dict(out=res.out, tokens=res.tokens_read, indices=idx, counts=cnt))
    c = cases[-1]  # a per-row selection whose row count is not the query's must be refused
    try:
        TritonBackend().attend(c["q"][:, :, :1].repeat(1, 1, 3, 1), c["k"], c["v"],
                               Selection(c["mask"].repeat(1, 1, 2, 1)), block_size=c["block"], scaling=1.0)
        bad_rows = "no error"
    except Exception as e:
        bad_rows = f"{type(e).__name__}: {e}"
    from sparsebench.kernels import triton_decode
    tickets = {str(dev): int(buf.count_nonzero()) for dev, buf in triton_decode._TICKETS.items()}
    torch.save(dict(outs=out, bad_rows=bad_rows, tickets=tickets), sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict], str]:
    """Run every case once in a child with TRITON_INTERPRET=1; return (cases, outputs, the error a per-row
    selection of the wrong row count raised)."""
    cases = make_cases(torch.Generator().manual_seed(SEED))
    res = run_interpreted(CHILD, cases, tmp_path_factory.mktemp("triton_decode"))
    # The one-launch merge's tickets are left at zero for the next launch.
    assert res["tickets"] and all(n == 0 for n in res["tickets"].values()), res["tickets"]
    return cases, res["outs"], res["bad_rows"]


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_interpreted_matches_references(interpreted: tuple[list[dict], list[dict], str]) -> None:
    cases, outs, _ = interpreted
    for i, (case, res) in enumerate(zip(cases, outs, strict=True)):
        ctx = f"case {i} ({case['mode']}, {case['q'].dtype}, q {tuple(case['q'].shape)}, k {tuple(case['k'].shape)}, " \
              f"config {case['config']}, seed {SEED})"
        ref = torch_backend(case)
        assert res["out"].dtype == case["q"].dtype and res["out"].shape == case["q"].shape, ctx
        assert res["tokens"].dtype == ref.tokens_read.dtype, ctx
        assert torch.equal(res["tokens"], ref.tokens_read), ctx
        if case["q"].dtype == torch.float32:
            torch.testing.assert_close(res["out"], ref.out, rtol=1e-4, atol=1e-4, msg=ctx)
            torch.testing.assert_close(res["out"].double(), reference(case), rtol=1e-4, atol=1e-4, msg=ctx)
        else:  # half inputs: the kernel feeds P to the tensor-core product in the input dtype
            assert rel_err(res["out"], ref.out) < 1e-2, ctx


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_interpreted_compaction(interpreted: tuple[list[dict], list[dict], str]) -> None:
    """The planning step lists each row's selected blocks (a per-row selection's union) in ascending order
    and counts them."""
    cases, outs, _ = interpreted
    for case, res in zip(cases, outs, strict=True):
        mask = case["mask"] if case["mask"].dim() == 3 else case["mask"].any(2)
        assert torch.equal(res["counts"], mask.sum(-1).to(torch.int32))
        for row in range(mask.shape[0] * mask.shape[1]):
            want = torch.nonzero(mask.reshape(-1, mask.shape[-1])[row]).flatten()
            got = res["indices"].reshape(-1, mask.shape[-1])[row, : len(want)]
            assert torch.equal(got.long(), want), (row, got.tolist(), want.tolist())


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_interpreted_multi_row_rows_mismatch(interpreted: tuple[list[dict], list[dict], str]) -> None:
    """A per-row selection whose row count is not the query's is a one-line UsageError, not a wrong answer."""
    assert sum(c["q"].shape[2] > 1 for c in interpreted[0]) == 7  # the multi-row cases are compared above
    bad_rows = interpreted[2]
    assert bad_rows.startswith("UsageError") and "2 rows for 3 query rows" in bad_rows, bad_rows


#: Checks that registering the backend does not import triton (slow, absent on some machines), then runs
#: the benchmark's CLI in the same child, saving one interpreter start-up.
BENCH_CHILD = textwrap.dedent(
    """
    import sys
    import sparsebench.kernels.triton_backend
    assert "triton" not in sys.modules, "importing sparsebench.kernels.triton_backend imported triton"
    from sparsebench.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_lazy_import_and_attention_bench_dry_run(tmp_path: Path) -> None:
    """The backend module imports without triton, and ``sparsebench bench attention --dry-run`` runs end to
    end on CPU with its correctness check passing for both selection modes, the one-launch merge and the
    fused selections, including the one launch for every layer's top-k."""
    args = ["bench", "attention", "--out", str(tmp_path), "--dry-run", "--check", "--contexts", "40",
            "--selections", "topk,topk-fused,quest-fused,topk-layers", "--repeats", "1", "--warmup", "0"]
    proc = subprocess.run([sys.executable, "-c", BENCH_CHILD, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "bench_attention.json").read_text())
    sparse = [r for r in report["rows"] if r["kind"] == "sparse"]
    assert {r["method"] for r in sparse} == {"triton-bitmap", "triton-indices", "triton-fused"}
    assert {r["selection"] for r in sparse} == {"topk", "topk-fused", "quest-fused", "topk-layers"}
    assert not report["errors"], report["errors"]
    for r in (r for r in sparse if r["selection"] == "topk-layers"):  # charged a thirtieth of its one launch
        assert r["select_layers"] == 30 and r["select_us"] == pytest.approx(r["select_launch_us"] / 30), r
    for r in sparse:
        assert r["rel_err_vs_torch"] < 1e-2 and r["tokens_read_match"] and r["step_us"] > 0, r
    assert (tmp_path / "bench_attention.md").read_text().startswith("# Block-sparse decode")


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_attention_bench_layered_dry_run(tmp_path: Path) -> None:
    """``--layers 2`` times two layers' attention per replay and reports per-layer rows for the fused per-layer
    selection and the one launch for all layers, each checked against the torch backend; ``--layers 0`` is
    refused in one line."""
    args = ["bench", "attention", "--out", str(tmp_path), "--dry-run", "--check", "--contexts", "40", "--layers", "2",
            "--methods", "triton-indices", "--repeats", "1", "--warmup", "0"]
    proc = subprocess.run([sys.executable, "-c", BENCH_CHILD, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "bench_attention.json").read_text())
    assert report["meta"]["layers_per_replay"] == 2 and not report["errors"], report["errors"]
    sparse = [r for r in report["rows"] if r["kind"] == "sparse"]
    assert {r["selection"] for r in sparse} == {"topk-fused", "topk-layers"}
    for r in sparse:
        assert r["layers"] == 2 and r["step_us"] > 0 and r["rel_err_vs_torch"] < 1e-2 and r["tokens_read_match"], r
    assert any(r["kind"] == "dense" and r["step_us"] > 0 for r in report["rows"])
    assert "Layered mode" in (tmp_path / "bench_attention.md").read_text()
    bad = subprocess.run([sys.executable, "-c", BENCH_CHILD, *args[:-6], "--layers", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode != 0 and "--layers must be at least 1" in bad.stderr


# ---------------------------------------------------------------------------------------------
# contract and input checks (no kernel launch)


def test_capabilities_and_availability() -> None:
    caps = TritonBackend.capabilities
    assert caps.cuda_graph_safe and caps.softcap and caps.multi_row_queries
    assert caps.head_dims == frozenset({64, 128, 256})
    reasons = TritonBackend.reasons_to_reject(device="cpu", dtype=torch.float64, head_dim=96)
    assert any("device" in r for r in reasons) and any("dtype" in r for r in reasons)
    assert any("head dim" in r for r in reasons)
    reason = TritonBackend.unavailable_reason()
    if not HAVE_TRITON:
        assert reason is not None and "triton" in reason
    elif not HAVE_CUDA:
        assert reason is not None and "CUDA" in reason
    else:
        assert reason is None


def test_bad_mode() -> None:
    with pytest.raises(UsageError, match="selection mode"):
        TritonBackend(selection_mode="csr")


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("block", [8, 24, 256])
def test_bad_block_size(block: int) -> None:
    sel = Selection.full(1, 1, 2, "cpu")
    with pytest.raises(UsageError, match="block size"):
        TritonBackend().plan(sel, block_size=block, n_tokens=2 * block)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_rejects_wrong_block_count() -> None:
    with pytest.raises(UsageError, match="blocks"):
        TritonBackend().plan(Selection.full(1, 1, 2, "cpu"), block_size=16, n_tokens=48)


@pytest.mark.skipif(not HAVE_TRITON or HAVE_CUDA, reason="needs triton and no CUDA (checks the CPU refusal)")
def test_cpu_tensors_refused_without_interpreter() -> None:
    """Outside the interpreter a CPU tensor gets a one-line error, not a Triton crash."""
    q, k = torch.randn(1, 2, 1, 64), torch.randn(1, 1, 32, 64)
    with pytest.raises(UsageError, match="CUDA tensors"):
        TritonBackend(selection_mode="bitmap").attend(q, k, k, Selection.full(1, 1, 2, "cpu"), block_size=16,
                                                      scaling=0.1)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_splits_depend_on_shapes_only() -> None:
    from sparsebench.kernels.triton_decode import MAX_SPLITS, default_splits

    assert default_splits(3, 1, "cpu", 4) == 1  # tiny contexts: one program per head
    assert default_splits(8192, 8, "cpu", 4) == 1  # the CPU stand-in has 4 "multiprocessors"
    for n in (1, 16, 512, 8192, 1 << 20):
        for heads in (1, 8, 64, 4096):
            s = default_splits(n, heads, "cpu", 4)
            assert 1 <= s <= MAX_SPLITS


# ---------------------------------------------------------------------------------------------
# GPU


def gpu_case(gen: torch.Generator, *, n_tokens: int, b: int, hkv: int, group: int, d: int, keep: float,
             kv_len: bool, dtype: torch.dtype, spare: int = 0, q_rows: int = 1, per_row: bool = False) -> dict:
    """A decode problem on the GPU; keys scaled up so the softmax is far from flat. ``spare`` > 0 puts K/V
    in the first ``n_tokens`` slots of a larger preallocated cache, as the engine's static cache does."""
    case = make_case(gen, b=b, hkv=hkv, group=group, d=d, n_tokens=n_tokens, kv_len=kv_len, keep=keep,
                     q_rows=q_rows, per_row=per_row)
    case["q"] = case["q"].to("cuda", dtype)
    for name, scale in (("k", 1.5), ("v", 1.0)):
        cache = torch.zeros(b, hkv, n_tokens + spare, d, device="cuda", dtype=dtype)
        cache[:, :, :n_tokens] = case[name] * scale
        case[name] = cache[:, :, :n_tokens]
    case["mask"] = case["mask"].cuda()
    case["kv_len"] = None if case["kv_len"] is None else case["kv_len"].cuda()
    return case


GPU_SHAPES = [
    # (tokens, batch, kv heads, group, head dim)
    (1, 1, 1, 1, 64),
    (17, 2, 2, 4, 128),
    (1000, 1, 8, 4, 128),
    (8192, 1, 8, 4, 128),
    (8200, 2, 4, 8, 128),
    (16384, 1, 8, 4, 128),
    (12345, 3, 2, 2, 64),
    (4096, 1, 4, 2, 256),
    (9000, 1, 1, 16, 64),
    (32768, 1, 8, 4, 128),
]


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and HAVE_CUDA), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("mode", ["bitmap", "indices"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[f"T{s[0]}-B{s[1]}-H{s[2]}x{s[3]}-D{s[4]}" for s in GPU_SHAPES])
def test_gpu_bf16_matches_torch(mode: str, shape: tuple[int, int, int, int, int]) -> None:
    n_tokens, b, hkv, group, d = shape
    gen = torch.Generator().manual_seed(SEED + n_tokens)
    for softcap, kv_len, keep, spare in ((None, False, 0.22, 0), (50.0, True, 0.5, 64), (None, True, 1.0, 16)):
        case = gpu_case(gen, n_tokens=n_tokens, b=b, hkv=hkv, group=group, d=d, keep=keep, kv_len=kv_len,
                        dtype=torch.bfloat16, spare=spare)
        case["softcap"] = softcap
        ref = torch_backend(case)
        res = TritonBackend(selection_mode=mode).attend(
            case["q"], case["k"], case["v"], Selection(case["mask"]), block_size=16, scaling=case["scaling"],
            softcap=softcap, kv_len=case["kv_len"])
        ctx = f"{mode} {shape} softcap={softcap} kv_len={kv_len} keep={keep} spare={spare} seed={SEED}"
        assert res.out.dtype == torch.bfloat16, ctx
        assert rel_err(res.out, ref.out) < 1e-2, f"{ctx}: rel err {rel_err(res.out, ref.out):.2e}"
        assert torch.equal(res.tokens_read, ref.tokens_read), ctx


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and HAVE_CUDA), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_other_dtypes(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(SEED)
    case = gpu_case(gen, n_tokens=5000, b=2, hkv=4, group=4, d=128, keep=0.3, kv_len=True, dtype=dtype)
    ref = torch_backend(case)
    for mode in ("bitmap", "indices"):
        res = TritonBackend(selection_mode=mode).attend(case["q"], case["k"], case["v"], Selection(case["mask"]),
                                                        block_size=16, scaling=case["scaling"], kv_len=case["kv_len"])
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        assert rel_err(res.out, ref.out) < tol, (mode, dtype, rel_err(res.out, ref.out))
        assert torch.equal(res.tokens_read, ref.tokens_read)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and HAVE_CUDA), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("mode", ["bitmap", "indices"])
def test_gpu_cuda_graph_replay(mode: str) -> None:
    """plan + run captured once replay correctly after the cache, selection, kv_len and query change in place."""
    check_graph_replay(TritonBackend(selection_mode=mode), torch.Generator().manual_seed(SEED))


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and HAVE_CUDA), reason="needs a CUDA device and triton")
def test_gpu_programmatic_dependent_launch() -> None:
    """``KernelConfig(pdl=True)``: the merge launched while the split kernel runs waits for its partials, eagerly
    (several shapes, split counts and modes) and inside a replayed CUDA graph."""
    from sparsebench.kernels.triton_decode import KernelConfig

    gen = torch.Generator().manual_seed(SEED)
    for shape, splits in ((GPU_SHAPES[3], None), (GPU_SHAPES[4], 3), (GPU_SHAPES[-1], None), (GPU_SHAPES[6], 1)):
        n_tokens, b, hkv, group, d = shape
        case = gpu_case(gen, n_tokens=n_tokens, b=b, hkv=hkv, group=group, d=d, keep=0.22, kv_len=True,
                        dtype=torch.bfloat16)
        ref = torch_backend(case)
        for mode in ("bitmap", "indices"):
            backend = TritonBackend(selection_mode=mode, config=KernelConfig(splits=splits, pdl=True))
            res = backend.attend(case["q"], case["k"], case["v"], Selection(case["mask"]), block_size=16,
                                 scaling=case["scaling"], kv_len=case["kv_len"])
            assert rel_err(res.out, ref.out) < 1e-2, (shape, splits, mode, rel_err(res.out, ref.out))
            assert torch.equal(res.tokens_read, ref.tokens_read), (shape, splits, mode)
    check_graph_replay(TritonBackend(selection_mode="indices", config=KernelConfig(pdl=True)), gen)


def check_graph_replay(backend, gen: torch.Generator) -> None:  # type: ignore[no-untyped-def]
    """Capture ``backend``'s plan + run once, then change the cache, selection, kv_len and query in place three
    times (10% to 100% kept): each replay must equal an eager call on the new inputs."""
    case = gpu_case(gen, n_tokens=8192, b=2, hkv=8, group=4, d=128, keep=0.22, kv_len=True, dtype=torch.bfloat16)
    q, k, v, mask, lens = case["q"], case["k"], case["v"], case["mask"], case["kv_len"]

    def step():
        plan = backend.plan(Selection(mask), block_size=16, n_tokens=k.shape[2], kv_len=lens)
        return backend.run(plan, q, k, v, scaling=case["scaling"])

    graph, captured = capture(step)  # compiles outside the capture
    for trial in range(3):
        new = gpu_case(gen, n_tokens=8192, b=2, hkv=8, group=4, d=128, keep=(0.1, 0.5, 1.0)[trial], kv_len=True,
                       dtype=torch.bfloat16)
        for mine, theirs in ((q, new["q"]), (k, new["k"]), (v, new["v"]), (mask, new["mask"]), (lens, new["kv_len"])):
            mine.copy_(theirs)
        graph.replay()
        eager = step()
        torch.cuda.synchronize()
        assert torch.equal(captured.out, eager.out), (backend.name, trial)
        assert torch.equal(captured.tokens_read, eager.tokens_read), (backend.name, trial)
        ref = torch_backend(dict(case, q=q, k=k, v=v, mask=mask, kv_len=lens))
        assert rel_err(captured.out, ref.out) < 1e-2, (backend.name, trial)
        assert torch.equal(captured.tokens_read, ref.tokens_read), (backend.name, trial)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and HAVE_CUDA), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("mode", ["bitmap", "indices"])
@pytest.mark.parametrize("q_rows", [2, 4, 8])
def test_gpu_multi_row_bf16_matches_torch(mode: str, q_rows: int) -> None:
    """Speculative verification's shapes (gamma + 1 rows) in bf16, shared and per-row selections, static cache."""
    gen = torch.Generator().manual_seed(SEED + q_rows)
    for n_tokens, b, hkv, group, per_row in ((8200, 2, 8, 4, True), (3000, 3, 2, 8, False), (20000, 1, 8, 1, True)):
        case = gpu_case(gen, n_tokens=n_tokens, b=b, hkv=hkv, group=group, d=128, keep=0.25, kv_len=True,
                        dtype=torch.bfloat16, spare=64, q_rows=q_rows, per_row=per_row)
        ref = torch_backend(case)
        res = TritonBackend(selection_mode=mode).attend(
            case["q"], case["k"], case["v"], Selection(case["mask"]), block_size=16, scaling=case["scaling"],
            kv_len=case["kv_len"])
        ctx = f"{mode} Q={q_rows} T={n_tokens} B={b} H={hkv}x{group} per_row={per_row} seed={SEED}"
        assert res.out.shape == case["q"].shape and res.out.dtype == torch.bfloat16, ctx
        assert rel_err(res.out, ref.out) < 1e-2, f"{ctx}: rel err {rel_err(res.out, ref.out):.2e}"
        assert torch.equal(res.tokens_read, ref.tokens_read), ctx
