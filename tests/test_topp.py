"""Tests of the top-p masks: the sort-based reference against brute force, the Triton kernel against
the semantics (mass reached, minimal up to ties, threshold-shaped) and the reference, and input checks.

How the kernel runs on a CPU-only CI: Triton's interpreter must be chosen before ``triton`` is first
imported, for the whole process. Setting ``TRITON_INTERPRET=1`` here would leak into every other test
file (and come too late if one of them imported triton first), so the kernel cases run in one child
process started with ``TRITON_INTERPRET=1``; this process only builds inputs and checks the masks the
child sends back. Inputs are fresh each run; set ``SPARSEBENCH_TEST_SEED`` to replay a failure.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from interpreted import HAVE_TRITON, REPO, SEED, run_interpreted

from sparsebench.errors import UsageError
from sparsebench.kernels import topp as topp_module
from sparsebench.kernels.topp import (
    RESIDENT_MAX,
    TopPConfig,
    default_config,
    resolve_config,
    topp_mask,
    topp_mask_nd,
    topp_mask_torch,
    topp_mask_triton,
)

PS = (1e-6, 0.5, 0.9, 0.95, 0.99, 0.999999, 1.0)
#: Relative margin within which a prefix "nearly" reaches p; the kernel's own margin is below 1e-5.
NEAR = 1e-5
#: The grid CUDA kernel's: its acceptance margin is under 5e-10 T up to 128K entries, the reference's float64
#: prefix sums err by about 1e-11 T.
GRID_NEAR = 1e-9


# ---------------------------------------------------------------------------------------------
# inputs


def row_kinds(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One row of each shape of distribution that top-p must handle, length ``n``, float32."""
    rows: dict[str, torch.Tensor] = {}
    for temp in (0.1, 0.3, 1.0, 3.0, 10.0):
        rows[f"softmax_t{temp}"] = torch.softmax(torch.randn(n, generator=gen) * temp, -1)
    onehot = torch.zeros(n)
    onehot[int(torch.randint(n, (1,), generator=gen))] = 1.0
    rows["onehot"] = onehot
    rows["uniform"] = torch.full((n,), 1.0 / n)
    ties = torch.randint(1, 4, (n,), generator=gen).float()  # few distinct levels: many exact ties
    rows["ties"] = ties / ties.sum()
    zeros = torch.softmax(torch.randn(n, generator=gen) * 2, -1)
    zeros[torch.rand(n, generator=gen) < 0.4] = 0.0
    if zeros.sum() == 0:
        zeros[0] = 1.0
    rows["zeros"] = zeros
    rows["unnormalised"] = torch.rand(n, generator=gen) * 1000.0
    tiny = torch.softmax(torch.randn(n, generator=gen) * 3, -1)
    tiny[torch.rand(n, generator=gen) < 0.5] *= 1e-38  # subnormals: the bit-pattern search must order them
    rows["subnormal"] = tiny
    # Every entry subnormal (exponent field 0, no hidden bit): the threshold itself lies among them.
    rows["all_subnormal"] = torch.softmax(torch.randn(n, generator=gen) * 2, -1) * 1e-38
    rows["all_zero"] = torch.zeros(n)
    return rows


#: Kernel configurations the interpreter cases cycle through (the interpreter costs ~1 ms an operation,
#: so sizes stay tiny and the configurations are spread over the cases rather than crossed with them).
#: Under the interpreter a split row (chunks > 1) is computed by one program chunk after chunk, through
#: the same exchange buffer and combine code as the GPU's parallel programs.
KERNEL_CONFIGS: tuple[dict, ...] = (
    {},  # the default: one resident tile, 8 candidates, bracket tightening
    dict(num_candidates=4, tighten="candidates"),
    dict(chunks=4, block_n=64, num_candidates=4),  # split over four chunks (two tiles each at N = 300)
    dict(num_candidates=2, keep_f64=False),  # resident chunk re-converted to float64 every pass
    dict(chunks=2, num_candidates=8, tighten="candidates"),  # split over two chunks of one tile
    dict(block_n=128, num_candidates=4),  # several streamed tiles a row (three at N = 300)
    dict(num_candidates=1),  # one candidate a pass: the longest searches
)


def make_cases(gen: torch.Generator) -> list[dict]:
    """Kernel cases: N from 1 to 300 (one tile and several, one chunk and several), every p, every
    configuration above (each p meets several configurations), dtypes, a strided input, nd."""
    cases = []
    i = 0
    for n in (1, 5, 16, 33, 100, 257):
        kinds = row_kinds(n, gen)
        probs = torch.stack(list(kinds.values()))
        for _ in range(2):
            p, kw = PS[i % len(PS)], KERNEL_CONFIGS[(i + i // len(PS)) % len(KERNEL_CONFIGS)]
            i += 1
            cases.append(dict(name=f"n{n}_p{p}_{kw}", probs=probs, kinds=list(kinds), p=p, kw=kw))
    kinds = row_kinds(300, gen)
    probs = torch.stack(list(kinds.values()))
    for j, kw in enumerate(KERNEL_CONFIGS):
        p = PS[(3 * j + 1) % len(PS)]
        cases.append(dict(name=f"n300_p{p}_{kw}", probs=probs, kinds=list(kinds), p=p, kw=kw))
    for dtype in (torch.bfloat16, torch.float16):
        kinds = row_kinds(64, gen)
        if dtype == torch.bfloat16:
            # Triton's interpreter widens bfloat16 subnormals wrongly (3.0e-39 loads as 3.7e-40 with triton 3.9.0 on
            # the CPU), so those rows would test the interpreter; the GPU tests run them in every dtype.
            del kinds["all_subnormal"]
        cases.append(dict(name=f"{dtype}", probs=torch.stack(list(kinds.values())).to(dtype),
                          kinds=list(kinds), p=0.9, kw={}))
    base = torch.softmax(torch.randn(40, 6, generator=gen) * 2, 0)
    cases.append(dict(name="strided", probs=base.t(), kinds=["strided"] * 6, p=0.9, kw=dict(chunks=2)))
    nd = torch.softmax(torch.randn(2, 3, 50, generator=gen) * 2, -1)
    cases.append(dict(name="nd", probs=nd, kinds=["nd"] * 6, p=0.95, kw={}, nd=True))
    return cases


# ---------------------------------------------------------------------------------------------
# semantic checks shared by every backend


def check_mask(probs: torch.Tensor, mask: torch.Tensor, p: float, where: str) -> None:
    """Assert the top-p semantics row by row, in float64, independently of any reference.

    Kept mass reaches p; the mask is ``{x >= t}`` for its smallest kept value t and holds no zeros;
    and without the entries tied at t it falls short of p (by more than the near-tie margin), so no
    strictly smaller set reaches p except by splitting ties.
    """
    x = probs.double().reshape(-1, probs.shape[-1])
    mask = mask.reshape(x.shape)
    assert mask.dtype == torch.bool
    for r in range(x.shape[0]):
        xr, mr = x[r], mask[r]
        total = float(xr.sum())
        ctx = f"{where} row {r} p={p} seed={SEED}"
        if total == 0:
            assert not mr.any(), f"{ctx}: all-zero row must keep nothing"
            continue
        assert mr.any(), f"{ctx}: nothing kept"
        kept = float(xr[mr].sum())
        assert kept >= p * total * (1 - 1e-12), f"{ctx}: kept mass {kept / total} < p"
        t = float(xr[mr].min())
        assert t > 0, f"{ctx}: a zero entry was kept"
        assert torch.equal(mr, xr >= t), f"{ctx}: mask is not a threshold set"
        above = float(xr[xr > t].sum())
        if p < 1.0:
            assert above < p * total * (1 + NEAR), f"{ctx}: not minimal, {above / total} >= p without ties at t"
        else:
            assert torch.equal(mr, xr > 0), f"{ctx}: p=1 must keep exactly the positive entries"


def check_against_reference(probs: torch.Tensor, mask: torch.Tensor, p: float, where: str,
                            near: float = NEAR) -> int:
    """Assert the mask equals the reference's except for near-ties; return the number of near-tie rows.

    A near-tie row may keep more distinct values than the reference (never fewer), and only when the reference's
    own set reaches p by less than the relative margin ``near``, and the kernel's set without its lowest value
    does too: the next lower values a kernel's acceptance margin needs. That can be several tail entries when p is
    close to 1 (the grid kernel's margin, up to ``5e-10 T`` at 128K entries, is more than one entry of ``1e-10 T``;
    seen in session 19 from both the merged kernel and the one before, each matching its design's arithmetic).
    """
    x = probs.double().reshape(-1, probs.shape[-1])
    mask = mask.reshape(x.shape)
    ref = topp_mask_torch(probs.reshape(x.shape), p)
    near_ties = 0
    for r in torch.nonzero((mask != ref).any(-1)).flatten().tolist():
        xr = x[r]
        total = float(xr.sum())
        t_ref, t_got = float(xr[ref[r]].min()), float(xr[mask[r]].min())
        ctx = f"{where} row {r} p={p} seed={SEED}"
        assert t_got < t_ref, f"{ctx}: keeps less than the reference"
        assert float(xr[ref[r]].sum()) < p * total * (1 + near), f"{ctx}: differs without a near-tie"
        assert float(xr[xr > t_got].sum()) < p * total * (1 + near), f"{ctx}: keeps more than a near-tie needs"
        near_ties += 1
    return near_ties


# ---------------------------------------------------------------------------------------------
# the reference


def brute_force_min_size(x: list[float], p: float) -> int:
    """Smallest number of entries whose sum reaches p * total, by trying every subset."""
    total = sum(x)
    if total == 0:
        return 0
    for k in range(1, len(x) + 1):
        if any(sum(c) >= p * total for c in itertools.combinations(x, k)):
            return k
    raise AssertionError("unreachable: the full set reaches p <= 1")


def test_reference_matches_brute_force() -> None:
    """On tiny integer-valued rows (exact sums, many ties and zeros) the reference keeps the k* largest
    entries, k* found by brute force, plus the entries tied with the k*-th."""
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(300):
        n = int(torch.randint(1, 8, (1,), generator=gen))
        x = torch.randint(0, 6, (n,), generator=gen).double()
        for p in PS:
            mask = topp_mask_torch(x[None], p)[0]
            k = brute_force_min_size(x.tolist(), p)
            if k == 0:
                assert not mask.any()
                continue
            t = float(x.sort(descending=True).values[k - 1])
            assert torch.equal(mask, (x >= t) & (x > 0)), (x.tolist(), p, k, mask.tolist())
            check_mask(x[None], mask[None], p, "reference")


def test_reference_semantics_random() -> None:
    gen = torch.Generator().manual_seed(SEED)
    for n in (1, 7, 64, 1000):
        probs = torch.stack(list(row_kinds(n, gen).values()))
        for p in PS:
            check_mask(probs, topp_mask_torch(probs, p), p, f"reference n={n}")


def test_dispatch_and_nd_on_torch_backend() -> None:
    gen = torch.Generator().manual_seed(SEED)
    probs = torch.softmax(torch.randn(2, 3, 17, generator=gen), -1)
    out = topp_mask_nd(probs, 0.9, backend="torch")
    assert out.shape == probs.shape and out.dtype == torch.bool
    assert torch.equal(out.reshape(6, 17), topp_mask_torch(probs.reshape(6, 17), 0.9))
    assert torch.equal(topp_mask(probs[0], 0.9, backend="torch"), out[0])
    assert topp_mask(torch.zeros(0, 5), 0.9).shape == (0, 5)
    assert topp_mask(torch.zeros(3, 0), 0.9).shape == (3, 0)
    # float64 is outside the kernel's dtypes: auto must fall back to the reference, not fail.
    assert torch.equal(topp_mask(probs[0].double(), 0.9), topp_mask_torch(probs[0], 0.9))


# ---------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), float("inf"), "0.9", True, None])
def test_bad_p(p: object) -> None:
    with pytest.raises(UsageError, match="p must"):
        topp_mask(torch.full((1, 4), 0.25), p)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("probs", "match"),
    [
        (torch.full((4,), 0.25), "2-D"),
        (torch.full((1, 2, 4), 0.25), "2-D"),
        (torch.tensor([[0.5, -0.1, 0.6]]), "negative"),
        (torch.tensor([[0.5, float("nan"), 0.5]]), "NaN"),
        (torch.tensor([[0.5, float("inf")]]), "inf"),
        (torch.tensor([[3e38, 3e38]]), "sums to inf"),
        (torch.tensor([[1, 2, 3]]), "floating-point"),
    ],
)
def test_bad_probs(probs: torch.Tensor, match: str) -> None:
    for backend in ("auto", "torch"):
        with pytest.raises(UsageError, match=match):
            topp_mask(probs, 0.9, backend=backend)


def test_bad_backend_and_nd_rank() -> None:
    with pytest.raises(UsageError, match="unknown top-p backend"):
        topp_mask(torch.full((1, 4), 0.25), 0.9, backend="fast")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="CUDA top-p kernel cannot run here: the probabilities are not on a CUDA"):
        topp_mask(torch.full((1, 4), 0.25), 0.9, backend="cuda")
    with pytest.raises(UsageError, match="at least one dimension"):
        topp_mask_nd(torch.tensor(1.0), 0.9)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_triton_rejects_what_it_cannot_run() -> None:
    with pytest.raises(UsageError, match="float32, bfloat16 or float16"):
        topp_mask_triton(torch.full((1, 4), 0.25, dtype=torch.float64), 0.9)
    with pytest.raises(UsageError, match="power of two"):
        topp_mask_triton(torch.full((1, 4), 0.25), 0.9, num_candidates=3)
    with pytest.raises(UsageError, match="unknown top-p kernel option"):
        topp_mask_triton(torch.full((1, 4), 0.25), 0.9, candidates=4)
    with pytest.raises(UsageError, match="tighten must be one of"):
        topp_mask_triton(torch.full((1, 4), 0.25), 0.9, tighten=True)


def test_split_must_fit_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunks of a row wait for each other, so a split that cannot be resident at once is refused."""
    monkeypatch.setattr(topp_module, "_sm_count", lambda device: 132)
    cuda = torch.device("cuda")
    assert resolve_config(TopPConfig(chunks=4), 1 << 15, 33, cuda).chunks == 4
    with pytest.raises(UsageError, match="exceeds the 132 SMs"):
        resolve_config(TopPConfig(chunks=8), 1 << 15, 32, cuda)
    with pytest.raises(UsageError, match="chunks must be a power of two"):
        resolve_config(TopPConfig(chunks=3), 1 << 15, 1, cuda)


@pytest.mark.parametrize("rows", [1, 8, 32, 64, 256])
@pytest.mark.parametrize("n", [1, 100, 512, 2048, 8192, 16384, 32768, 131072, 1 << 20])
def test_default_config_is_launchable(rows: int, n: int) -> None:
    """Defaults: powers of two, a split that fits the SMs and covers the row, register-resident chunks
    no longer than RESIDENT_MAX, and the float64 copy kept only at 16 entries a thread or fewer."""
    cfg = default_config(n, rows, 132)
    for v in (cfg.chunks, cfg.block_n, cfg.num_candidates, cfg.num_warps):
        assert v >= 1 and v & (v - 1) == 0, cfg
    assert cfg.chunks == 1 or rows * cfg.chunks <= 132, cfg
    chunk_len = -(-n // cfg.chunks)
    if chunk_len <= cfg.block_n:  # resident
        assert cfg.block_n <= RESIDENT_MAX and cfg.block_n < 2 * max(chunk_len, 16), cfg
        if cfg.keep_f64:
            assert cfg.block_n // (32 * cfg.num_warps) <= 16, cfg
    else:
        assert not cfg.keep_f64, cfg
    assert resolve_config(None, n, rows, torch.device("cpu")) == cfg


# ---------------------------------------------------------------------------------------------
# the Triton kernel, under the interpreter in a child process

CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.kernels.topp import (interpreter_enabled, topp_mask, topp_mask_nd,
                                          topp_mask_triton, triton_usable)
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    assert triton_usable("cpu")
    cases = torch.load(sys.argv[1])
    out = []
    for c in cases:
        if c.get("nd"):
            out.append(dict(mask=topp_mask_nd(c["probs"], c["p"]), passes=None))
            continue
        passes = torch.zeros(c["probs"].shape[0], dtype=torch.int32)
        mask = topp_mask_triton(c["probs"], c["p"], passes_out=passes, **c["kw"])
        if c["name"] == "strided":  # auto dispatch must pick the kernel here and agree with it
            assert torch.equal(topp_mask(c["probs"], c["p"]), mask)
        out.append(dict(mask=mask, passes=passes))
    torch.save(out, sys.argv[2])
    """
)


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], list[dict]]:
    """Run every kernel case once in a child with TRITON_INTERPRET=1; return (cases, outputs)."""
    cases = make_cases(torch.Generator().manual_seed(SEED))
    return cases, run_interpreted(CHILD, cases, tmp_path_factory.mktemp("topp"))


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_triton_semantics_interpreted(interpreted: tuple[list[dict], list[dict]]) -> None:
    cases, outs = interpreted
    near = 0
    for case, out in zip(cases, outs, strict=True):
        probs, mask = case["probs"], out["mask"]
        assert mask.shape == probs.shape and mask.dtype == torch.bool, case["name"]
        check_mask(probs, mask, case["p"], case["name"])
        near += check_against_reference(probs, mask, case["p"], case["name"])
    # Near-ties need a prefix sum within ~1e-6 of p; with random inputs they should be rare.
    total_rows = sum(math.prod(c["probs"].shape[:-1]) for c in cases)
    assert near <= max(2, total_rows // 100), f"{near} near-tie rows out of {total_rows} (seed {SEED})"


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_triton_pass_bound(interpreted: tuple[list[dict], list[dict]]) -> None:
    """Each search pass at least divides the bit range by NUM_CAND + 1 (31 bits at most)."""
    cases, outs = interpreted
    for case, out in zip(cases, outs, strict=True):
        if out["passes"] is None:
            continue
        n = case["probs"].shape[-1]
        cand = resolve_config(TopPConfig(**case["kw"]), n, case["probs"].shape[0], torch.device("cpu")).num_candidates
        bound = math.ceil(31 / math.log2(cand + 1)) + 1
        assert int(out["passes"].max()) <= bound, (case["name"], out["passes"].tolist())


#: Child that runs a grid's programs concurrently (one thread each) under the interpreter, so that the
#: programs of a split row really meet in the exchange buffer and wait on the row's counters, as on a
#: GPU (the stock interpreter runs programs one after another, where the split is emulated serially).
#: It patches interpreter internals; if they are not as expected the child exits with code 3 (skip).
THREADED_CHILD = textwrap.dedent(
    """
    import inspect, sys, threading, time, torch
    try:
        import triton.runtime.interpreter as ti
        ti.GridExecutor._init_args_hst, ti.GridExecutor._restore_args_dev, ti._patch_lang, ti._implicit_cvt
        ti._LangPatchScope
        ti.interpreter_builder.set_grid_idx, ti.interpreter_builder.set_grid_dim
    except AttributeError:
        sys.exit(3)
    from sparsebench.kernels import topp

    local = threading.local()
    patch_lang = ti._patch_lang
    patch_lock, patched = threading.Lock(), set()

    def patch_lang_once(fn):
        # A device function's call patches triton.language for the module it comes from (the stock interpreter
        # never restores those patches). From several threads at once that raced: a module dict changing size while
        # another thread iterated it, a builtin called while another thread re-patched it; the failed program then
        # left its partners waiting. Here each module is patched once, under a lock (the kernel's own module is
        # patched by the launch, below).
        with patch_lock:
            if id(fn.__globals__) not in patched:
                patched.add(id(fn.__globals__))
                patch_lang(fn)
        return ti._LangPatchScope()
    ti.InterpreterBuilder.grid_idx = property(lambda self: getattr(local, "idx", None),
                                              lambda self, v: setattr(local, "idx", v))

    def concurrent_call(self, *args_dev, **kwargs):
        spec = inspect.getfullargspec(self.fn)
        kwargs = {k: v for k, v in kwargs.items() if k in spec.args or k in spec.kwonlyargs}
        args_hst, kwargs_hst = self._init_args_hst(args_dev, kwargs)
        scope = patch_lang(self.fn)
        patched.add(id(self.fn.__globals__))
        ti._patch_lang = patch_lang_once
        errors = []
        try:
            args = inspect.getcallargs(self.fn, *args_hst, **kwargs_hst)
            args = {k: v if k in self.constexprs else ti._implicit_cvt(v) for k, v in args.items()}
            grid = tuple(self.grid) + (1,) * (3 - len(self.grid))
            ti.interpreter_builder.set_grid_dim(*grid)

            def program(idx):
                try:
                    ti.interpreter_builder.set_grid_idx(*idx)
                    self.fn(**args)
                except Exception as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=program, args=((x, y, z),), daemon=True)
                       for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])]
            for t in threads:
                t.start()
            # Generous: the whole test takes ~12 s, but a loaded 2-core machine once stretched it past 120 s. A
            # program that failed ends the wait at once (its partners would wait for it forever).
            deadline = time.monotonic() + 400
            while any(t.is_alive() for t in threads) and not errors and time.monotonic() < deadline:
                for t in threads:
                    t.join(timeout=0.2)
            if errors:
                raise errors[0]
            if any(t.is_alive() for t in threads):
                raise RuntimeError("split programs still waiting after 400 s: a barrier is never reached")
        finally:
            ti._patch_lang = patch_lang
            scope.restore()
        self._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)

    ti.GridExecutor.__call__ = concurrent_call
    poll = ti.InterpreterBuilder.create_atomic_rmw

    def yielding_atomic(self, op, ptr, val, mask, sem, scope):
        time.sleep(1e-4)  # a waiting program lets the others run instead of spinning on the GIL
        return poll(self, op, ptr, val, mask, sem, scope)

    ti.InterpreterBuilder.create_atomic_rmw = yielding_atomic
    sys.setswitchinterval(1e-4)  # interleave the programs finely
    topp._SERIAL_OFF_GPU = False
    cases = torch.load(sys.argv[1])
    out = [topp.topp_mask_triton(c["probs"], c["p"], **c["kw"]) for c in cases]
    counters = topp._SYNC_CACHE[("cpu", None)].view(-1, 3)
    torch.save(dict(masks=out, counters_left=int(counters[:, :2].abs().sum()),
                    timeouts=topp.split_timeouts("cpu")), sys.argv[2])
    """
)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_triton_split_programs_concurrently_interpreted(tmp_path: Path) -> None:
    """The cross-program exchange of a split row (arrival counter, two exchange slots, re-arming the
    counters at the end) with its programs running concurrently, several launches in a row."""
    gen = torch.Generator().manual_seed(SEED)
    cases = []
    for n, kw, p in ((100, dict(chunks=4, block_n=16, num_candidates=4), 0.9),
                     (257, dict(chunks=2, num_candidates=2, tighten="candidates"), 0.999999)):
        kinds = row_kinds(n, gen)
        rows = [kinds[k] for k in ("softmax_t0.3", "softmax_t3.0", "ties", "zeros", "subnormal", "all_zero")]
        cases.append(dict(probs=torch.stack(rows), p=p, kw=kw))
    torch.save(cases, tmp_path / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", THREADED_CHILD, str(tmp_path / "cases.pt"), str(tmp_path / "out.pt")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip("this Triton's interpreter internals differ from what the concurrent harness patches")
    assert proc.returncode == 0, f"concurrent interpreter child failed (seed {SEED}):\n{proc.stderr[-4000:]}"
    res = torch.load(tmp_path / "out.pt")
    assert res["counters_left"] == 0, "a launch left its row counters armed for the next one"
    assert res["timeouts"] == 0, "a split program gave up waiting for its partners"
    for case, mask in zip(cases, res["masks"], strict=True):
        check_mask(case["probs"], mask, case["p"], f"concurrent split {case['kw']}")
        check_against_reference(case["probs"], mask, case["p"], f"concurrent split {case['kw']}")


# ---------------------------------------------------------------------------------------------
# the compiled kernel on a GPU (skipped in CPU CI)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available()), reason="needs a CUDA device and triton")
def test_triton_cuda_large() -> None:
    gen = torch.Generator().manual_seed(SEED)
    for n in (1, 100, 1000, 4097, 65536):
        probs = torch.stack(list(row_kinds(n, gen).values()))
        for dtype, p in itertools.product((torch.float32, torch.bfloat16), PS):
            x = probs.to(dtype).cuda()
            mask = topp_mask_triton(x, p)  # topp_mask's "auto" picks the CUDA kernel on a GPU with NVRTC
            check_mask(x.cpu(), mask.cpu(), p, f"cuda n={n} {dtype}")
            check_against_reference(x.cpu(), mask.cpu(), p, f"cuda n={n} {dtype}")


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_TRITON and torch.cuda.is_available()), reason="needs a CUDA device and triton")
@pytest.mark.parametrize("kw", [dict(chunks=4), dict(chunks=8, tighten="candidates"), dict(chunks=2, block_n=4096),
                                dict(block_n=2048, num_candidates=2), dict(keep_f64=False)])
def test_triton_cuda_split(kw: dict) -> None:
    """The split over programs that meet in global memory (never run by the CPU interpreter), repeated so
    that a counter left armed by one launch would hang or corrupt the next."""
    gen = torch.Generator().manual_seed(SEED)
    for n in (5000, 40000):
        probs = torch.stack(list(row_kinds(n, gen).values())).cuda()
        for p in PS:
            for _ in range(3):
                mask = topp_mask_triton(probs, p, **kw)
            check_mask(probs.cpu(), mask.cpu(), p, f"cuda split n={n} {kw}")
            check_against_reference(probs.cpu(), mask.cpu(), p, f"cuda split n={n} {kw}")
    assert topp_module.split_timeouts("cuda") == 0, "split programs gave up waiting for each other"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n", [1, 7, 100, 1000, 1024, 4097, 8192, 32768, 65536, 131072])
def test_cuda_radix_kernel(n: int) -> None:
    """The CUDA radix kernel (also at the lengths the short-row kernel takes by default) on every row kind, dtype and
    p, against the exact reference (near-ties aside), with its pass count bounded; and ``backend="cuda"``, whichever
    kernel it picks, against the same reference."""
    from sparsebench.kernels.cuda_topp import launch_topp

    gen = torch.Generator().manual_seed(SEED)
    probs = torch.cat([torch.stack(list(row_kinds(n, gen).values())),
                       torch.softmax(4 * torch.randn(8, n, generator=gen), -1)])
    for dtype, p in itertools.product((torch.float32, torch.bfloat16, torch.float16), PS):
        x = probs.to(dtype).cuda()
        passes = torch.zeros(x.shape[0], dtype=torch.int32, device="cuda")
        out = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
        launch_topp(x, p, out, passes, short=False)
        mask = out.bool()
        check_mask(x.cpu(), mask.cpu(), p, f"cuda radix n={n} {dtype} p={p}")
        check_against_reference(x.cpu(), mask.cpu(), p, f"cuda radix n={n} {dtype} p={p}")
        assert int(passes.max()) <= 3, (n, dtype, p, passes.tolist())
        picked = topp_mask(x, p, backend="cuda")
        check_against_reference(x.cpu(), picked.cpu(), p, f"cuda default n={n} {dtype} p={p}")


def short_test_rows(n: int, gen: torch.Generator) -> torch.Tensor:
    """Rows for :func:`test_cuda_short_kernel`: every row kind, softmax rows at temperatures 1-8, and rows that take
    the kernel's rarer paths: a crossing under its 256-bin window of 16 binades (every entry but one lies 17-18
    binades under it: at p close to 1, and at 8K entries from p 0.95, the threshold lies among them), and many
    distinct entries in one bin (more candidates than its pairwise step)."""
    temps = torch.tensor([1.0, 2.0, 4.0, 8.0])[:, None]
    rows = [*row_kinds(n, gen).values(), *torch.softmax(torch.randn(4, n, generator=gen) * temps, -1)]
    if n >= 2:
        deep = 2.0**-18 * (1 + torch.rand(n, generator=gen))
        deep[int(torch.randint(n, (1,), generator=gen))] = 1.0
        rows.append(deep / deep.sum())
    if n >= 200:
        one_bin = torch.full((n,), 1e-9)
        picked = torch.randperm(n, generator=gen)[: n // 2]
        one_bin[picked] = 2.0**-12 * (1 + torch.rand(len(picked), generator=gen) / 16)
        rows.append(one_bin / one_bin.sum())
    return torch.stack(rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n", [1, 7, 100, 1000, 1024, 2048, 4097, 8192])
def test_cuda_short_kernel(n: int) -> None:
    """The short-row CUDA kernel (one CTA a row, fixed point scaled by the row's maximum, 256 bins under it) on every
    row kind, dtype and p, at its default shape and others (block size, bins, pairwise limit), against the exact
    reference (near-ties aside), twice in a row (its shared counters are cleared by each launch), with its pass count
    bounded."""
    from sparsebench.kernels.cuda_topp_short import MAX_ITEMS, launch_topp_short

    gen = torch.Generator().manual_seed(SEED)
    probs = short_test_rows(n, gen)
    for kw in ({}, dict(threads=64), dict(threads=256, bins=128, pairwise=256), dict(threads=1024, bins=512)):
        if "threads" in kw and -(-n // kw["threads"]) > MAX_ITEMS:
            continue
        for dtype, p in itertools.product((torch.float32, torch.bfloat16, torch.float16), PS):
            x = probs.to(dtype).cuda()
            passes = torch.full((x.shape[0],), -1, dtype=torch.int32, device="cuda")
            for _ in range(2):
                out = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
                launch_topp_short(x, p, out, passes, **kw)
            where = f"cuda short n={n} {kw} {dtype} p={p}"
            check_mask(x.cpu(), out.bool().cpu(), p, where)
            check_against_reference(x.cpu(), out.bool().cpu(), p, where)
            assert int(passes.min()) >= 0 and int(passes.max()) <= 6, (where, passes.tolist())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cluster", [2, 3, 4, 8])
def test_cuda_radix_kernel_clusters(cluster: int) -> None:
    """Rows split over a thread-block cluster (sm_90): the same masks as the exact reference (near-ties aside) for
    rows shorter than the cluster, uneven slices and rows only a cluster holds, over every row kind, dtype and p,
    twice in a row (the cluster's shared state must not leak into the next launch). Three CTAs do not divide the
    bins evenly; at 128K they hold 43 entries a thread in shared memory."""
    from sparsebench.kernels.cuda_topp import clusters_supported, launch_topp

    if not clusters_supported(torch.device("cuda")):
        pytest.skip("thread-block clusters need compute capability 9.0")
    gen = torch.Generator().manual_seed(SEED)
    for n in (3, 100, 1000, 4097, 32768, 16384 * cluster + 5) + ((131072,) if cluster == 3 else ()):
        probs = torch.cat([torch.stack(list(row_kinds(n, gen).values())),
                           torch.softmax(4 * torch.randn(8, n, generator=gen), -1)])
        for dtype, p in itertools.product((torch.float32, torch.bfloat16), PS):
            x = probs.to(dtype).cuda()
            passes = torch.zeros(x.shape[0], dtype=torch.int32, device="cuda")
            for _ in range(2):
                out = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
                launch_topp(x, p, out, passes, cluster=cluster)
            mask = out.bool()
            check_mask(x.cpu(), mask.cpu(), p, f"cuda radix cluster {cluster} n={n} {dtype} p={p}")
            check_against_reference(x.cpu(), mask.cpu(), p, f"cuda radix cluster {cluster} n={n} {dtype} p={p}")
            assert int(passes.max()) <= 3, (n, cluster, dtype, p, passes.tolist())


def grid_test_rows(ctas: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(n, rows)`` of :func:`test_cuda_grid_kernel` at each length a grid of ``ctas`` CTAs a row takes, from the
    run's seed (``benchmarks/device/session19_diag.py`` rebuilds them): every row kind, softmax rows at temperatures
    1-8, and from 8K entries two rows for the candidate lists."""
    from sparsebench.kernels.cuda_topp_grid import MAX_SLICE

    gen = torch.Generator().manual_seed(SEED)
    temps = torch.tensor([1.0, 2.0, 4.0, 8.0]).repeat(2)[:, None]
    for n in (3, 1000, 4097, 8192, 16384, 32768, 65536 + 5, 131072):
        if -(-n // ctas) > MAX_SLICE:
            continue
        rows = [*row_kinds(n, gen).values(), *torch.softmax(torch.randn(8, n, generator=gen) * temps, -1)]
        if n >= 8192:  # 300 equal entries that one or two warps gather: more than a warp's share of the slots
            crowded = torch.full((n,), 1e-6)
            crowded[(torch.arange(10)[:, None] * 512 + torch.arange(32)).flatten()[:300]] = 1e-3
            rows.insert(0, crowded / crowded.sum())
            # 3000 distinct entries in one level-1 bin (an eighth of a binade) holding the crossing: more candidates
            # than the 5-bit levels take at 512 threads a CTA (4 a thread), so the 2048-bin levels run; at 1024
            # threads they end pairwise. The 300 crowded ones above are too many to end pairwise (PAIR_MAX).
            one_bin = torch.full((n,), 1e-9)
            one_bin[torch.randperm(n, generator=gen)[:3000]] = 2.0**-12 * (1 + torch.rand(3000, generator=gen) / 8)
            rows.insert(0, one_bin)
            # As many in one level-2 bin (1/256 of a binade): too many to end pairwise, so 5-bit levels run after it.
            one_sub_bin = torch.full((n,), 1e-9)
            sub_bin = 2.0**-12 * (1 + torch.rand(3000, generator=gen) / 256)
            one_sub_bin[torch.randperm(n, generator=gen)[:3000]] = sub_bin
            rows.insert(0, one_sub_bin)
        yield n, torch.stack(rows)[: 128 // ctas]  # every CTA of the grid running at once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("ctas", [2, 3, 4, 8])
def test_cuda_grid_kernel(ctas: int) -> None:
    """The grid kernel (a row over ``ctas`` ordinary CTAs that meet in global memory; an exact level-1 histogram,
    then the levels below on the crossing bin's entries, gathered through the CTAs' lists (slices over 512 threads,
    rows over 32 entries a thread) or from the row each CTA holds in registers (the shorter rows here), ending
    pairwise in the level-2 crossing bin, or in more levels where that bin or the candidates are many (the crowded
    and one-bin rows), or on the row itself where they overflow: the uniform and few-level rows) against the exact
    reference (near-ties aside) on every row kind, dtype and p, at lengths that leave slices uneven or empty, twice
    in a row (its histograms and barrier words carry over between launches), and replayed from a CUDA graph with new
    values in place; no row barrier ever gives up waiting."""
    from sparsebench.kernels.capture import capture
    from sparsebench.kernels.cuda_topp_grid import grid_timeouts, launch_topp_grid

    for n, probs in grid_test_rows(ctas):
        for dtype, p in itertools.product((torch.float32, torch.bfloat16, torch.float16), PS):
            x = probs.to(dtype).cuda()
            passes = torch.full((x.shape[0],), -1, dtype=torch.int32, device="cuda")
            for _ in range(2):
                out = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
                launch_topp_grid(x, p, out, passes, ctas=ctas)
            where = f"cuda grid {ctas} n={n} {dtype} p={p}"
            check_mask(x.cpu(), out.bool().cpu(), p, where)
            check_against_reference(x.cpu(), out.bool().cpu(), p, where, near=GRID_NEAR)
            assert set(passes.tolist()) <= {0, 3}, (where, passes.tolist())
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.softmax(2 * torch.randn(16, 8192, generator=gen), -1).cuda()
    out = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
    graph, _ = capture(lambda: launch_topp_grid(x, 0.9, out, ctas=ctas))
    for _ in range(3):
        x.copy_(torch.softmax(3 * torch.randn(16, 8192, generator=gen), -1))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out.bool().cpu(), topp_mask_torch(x.cpu(), 0.9))
    assert grid_timeouts() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("n", [8192, 16384, 32768, 65536, 131072])
def test_cuda_radix_window_takes_one_pass(n: int) -> None:
    """From 8K entries the first pass bins only from half the threshold's lower bound up, finely enough that
    attention-like rows need one pass (without that window they took 2 at 8K-32K: ``benchmarks/RESULTS.md``,
    twelfth session; ``benchmarks/topp_pass_model.py`` on 480 such rows a length: one row of 32K took 2); at
    64K-128K the bracket left holds up to a few hundred entries, which pairwise sums resolve
    (:func:`~sparsebench.kernels.cuda_topp.pairwise_max`) instead of a second pass. The masks stay exact."""
    from sparsebench.kernels.cuda_topp import clusters_supported, launch_topp, max_row

    if n > max_row(clusters_supported(torch.device("cuda"))):
        pytest.skip(f"rows of {n} entries need thread-block clusters (compute capability 9.0); without them the "
                    f"kernel takes at most {max_row(False)}")
    gen = torch.Generator().manual_seed(SEED)
    x = torch.softmax(2 * torch.randn(32, n, generator=gen), -1).cuda()
    passes = torch.zeros(32, dtype=torch.int32, device="cuda")
    out = torch.empty(x.shape, dtype=torch.uint8, device="cuda")
    launch_topp(x, 0.9, out, passes, grid=False)  # the radix kernel, also where the grid kernel is the default
    mask = out.bool()
    check_against_reference(x.cpu(), mask.cpu(), 0.9, f"window n={n}")
    assert max(passes.tolist()) <= 2 and sum(passes.tolist()) <= 32 + 3, passes.tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_radix_kernel_in_a_graph() -> None:
    """Captured once, the CUDA kernel replays correctly when the probabilities change in place."""
    from sparsebench.kernels.capture import capture
    from sparsebench.kernels.topp import topp_mask_cuda

    gen = torch.Generator().manual_seed(SEED)
    probs = torch.softmax(2 * torch.randn(32, 2048, generator=gen), -1).cuda()
    graph, mask = capture(lambda: topp_mask_cuda(probs, 0.9, check=False))
    for trial in range(3):
        probs.copy_(torch.softmax((1 + trial) * torch.randn(32, 2048, generator=gen), -1))
        graph.replay()
        torch.cuda.synchronize()
        check_mask(probs.cpu(), mask.cpu(), 0.9, f"graph replay {trial}")
        check_against_reference(probs.cpu(), mask.cpu(), 0.9, f"graph replay {trial}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_backend_picks_the_cuda_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU where the CUDA kernel can run, ``topp_mask``'s "auto" (and so the specattn policy through
    ``topp_mask_nd``) runs it; a dtype it does not take falls back to the Triton kernel or the reference."""
    from sparsebench.kernels.topp import cuda_unusable_reason

    probs = torch.softmax(torch.randn(6, 3, 700, generator=torch.Generator().manual_seed(SEED)), -1).cuda()
    if cuda_unusable_reason(probs) is not None:
        pytest.skip(f"the CUDA kernel cannot run here: {cuda_unusable_reason(probs)}")
    real = topp_module._cuda_mask  # the CUDA kernel's launch, after topp_mask_cuda's checks
    calls: list[tuple[int, ...]] = []

    def spy(x: torch.Tensor, pf: float, passes_out: torch.Tensor | None) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return real(x, pf, passes_out)

    monkeypatch.setattr(topp_module, "_cuda_mask", spy)
    mask = topp_mask_nd(probs, 0.9)
    assert calls == [(18, 700)]
    assert torch.equal(mask, topp_module.topp_mask_cuda(probs.reshape(18, 700), 0.9).reshape(6, 3, 700))
    calls.clear()
    ref = topp_mask_nd(probs.double(), 0.9)  # float64: not the kernel's
    assert calls == [] and ref.shape == mask.shape


def test_cuda_radix_scope() -> None:
    """What the CUDA kernel refuses says why; its launch shape covers every entry with a power-of-two block."""
    from sparsebench.kernels.cuda_topp import (
        CLUSTER_FROM,
        CLUSTER_TABLE,
        MAX_N,
        check_shape,
        keys_in_shared,
        launch_shape,
        max_row,
        pairwise_max,
    )
    from sparsebench.kernels.topp import cuda_unusable_reason

    assert "not on a CUDA device" in (cuda_unusable_reason(torch.zeros(2, 8)) or "")
    for n, clusters in itertools.product((1, 8, 2048, 2049, 8192, MAX_N, MAX_N + 1, 100_000, max_row(True)),
                                         (False, True)):
        if n > max_row(clusters):
            continue
        threads, items, cluster = launch_shape(n, clusters)
        assert threads & (threads - 1) == 0 and 256 <= threads <= 1024 and items <= 32, n
        assert threads * items * cluster >= n and -(-n // cluster) <= threads * items, n
        assert cluster == 1 or clusters, n
        assert check_shape(n, threads, 2048, cluster) is None, n
    assert max_row(False) == MAX_N
    # The measured table for long rows; one CTA a row for short rows, and where the rows alone fill the GPU.
    assert launch_shape(CLUSTER_FROM, True, rows=32)[2] == 1
    assert launch_shape(CLUSTER_FROM + 1, True, rows=32)[:3:2] == CLUSTER_TABLE[2 * CLUSTER_FROM][::-1]
    assert launch_shape(CLUSTER_FROM + 1, True, rows=1000)[2] == 1
    assert launch_shape(MAX_N + 1, True, rows=1000)[2] == CLUSTER_TABLE[2 * MAX_N][0]  # longer rows need a cluster
    # 32 rows of 128K: four-CTA clusters would not all run at once (CLUSTER_FILL), three CTAs holding 43 entries a
    # thread in shared memory do; 30 rows of four-CTA clusters still fit; at 256K six CTAs would not fit either.
    assert launch_shape(131072, True, rows=32, sms=132) == (1024, 43, 3)
    assert launch_shape(131072, True, rows=30, sms=132) == (1024, 32, 4)
    assert launch_shape(262144, True, rows=32, sms=132)[2] == 8
    # The grid kernel by default beyond 8K entries, where four CTAs a row all fit the GPU at once and a slice fits a
    # CTA's shared memory; the radix kernel elsewhere.
    from sparsebench.kernels.cuda_topp import uses_grid
    from sparsebench.kernels.cuda_topp_grid import grid_shape

    sizes = (8192, 8193, 16384, 32768, 65536, 131072, 131073)
    assert [uses_grid(n, 32, 132) for n in sizes] == [False, True, True, True, True, True, False]
    assert not uses_grid(65536, 34, 132) and uses_grid(65536, 33, 132)
    assert grid_shape(131072, 32, 132) == (1024, 4) and grid_shape(32768, 32, 132) == (512, 4)
    assert grid_shape(65536, 32, 132) == (512, 4)  # 32 entries a thread: faster than 1024 threads (21st session)
    assert grid_shape(8192, 100, 132, ctas=2) is None and grid_shape(8192, 66, 132, ctas=2) == (512, 2)
    # Every shape it picks leaves a thread at most MAX_PER_THREAD entries (its candidates are bits of one word).
    from sparsebench.kernels.cuda_topp_grid import MAX_PER_THREAD

    for n in (1, 8193, 32768, 65537, 131072):
        for ctas in (2, 4, 8):
            shape = grid_shape(n, 16, 132, ctas=ctas)
            assert shape is None or -(-n // ctas) <= MAX_PER_THREAD * shape[0], (n, ctas, shape)
    # Larger last brackets for pairwise sums in longer rows, never more than a thread a candidate; the entries of
    # 1024-thread CTAs with 16 or more a thread wait in shared memory.
    assert [pairwise_max(n, 1024) for n in (1000, 16384, 16385, 65536, 131072, 262144)] == [64, 64, 128, 256, 512, 512]
    assert pairwise_max(65536, 64) == 64
    assert keys_in_shared(1024, 16) and keys_in_shared(1024, 43)
    assert not keys_in_shared(1024, 8) and not keys_in_shared(512, 32)
    # The sweep's overrides are checked before a launch: block size, entries a thread, bins.
    assert "power of two from 64 to 1024" in (check_shape(100, 96, 2048) or "")
    assert "at most 2048 entries" in (check_shape(4096, 64, 2048) or "")
    assert "from the thread count (512)" in (check_shape(1024, 512, 256) or "")
    assert check_shape(1024, 128, 128) is None
    # Clusters: a power of two up to 8 CTAs a row, each CTA's slice in its registers, a range of bins a CTA.
    assert check_shape(1024, 128, 128, 3) is None  # any cluster size: the last CTA's range of bins is shorter
    assert "cluster must be 1 to 8" in (check_shape(1024, 128, 128, 16) or "")
    assert "cluster must be 1 to 8" in (check_shape(1024, 128, 128, 0) or "")
    assert check_shape(70000, 1024, 2048, 2) is None  # 35 entries a thread, in shared memory
    assert "hold at most 90112 entries" in (check_shape(100000, 1024, 2048, 2) or "")  # 44 a thread there
    assert "hold at most 32768 entries" in (check_shape(40000, 512, 2048, 2) or "")  # 32 in registers
    assert "from the cluster size (8)" in (check_shape(8192, 512, 4, 8) or "")
    assert check_shape(8192, 512, 8, 8) is None


def test_cuda_short_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """The short-row kernel's shapes pass its own checks, its refusals say why, and the CUDA launch takes it by
    default for rows of up to 4096 entries unless a radix or grid shape is asked for (checked without a GPU: the
    launch is replaced by a spy, and the radix path stops at its first device query)."""
    from sparsebench.kernels import cuda_topp, cuda_topp_short
    from sparsebench.kernels.cuda_topp_short import DEFAULT_UP_TO, MAX_N, SHAPE_TABLE, check_short_shape, short_shape

    for n in (1, 100, 1024, 2048, 2049, 4096, 4097, MAX_N):
        threads, bins, pairwise = short_shape(n)
        assert check_short_shape(n, threads, bins, pairwise) is None, n
    assert [up_to for up_to, _ in SHAPE_TABLE] == sorted(up_to for up_to, _ in SHAPE_TABLE)
    assert SHAPE_TABLE[-1][0] == MAX_N and DEFAULT_UP_TO <= MAX_N
    assert "power of two from 64 to 1024" in (check_short_shape(100, 96, 256, 64) or "")
    assert "at most 16" in (check_short_shape(MAX_N + 1, 512, 256, 64) or "")
    assert "128, 256 or 512" in (check_short_shape(100, 256, 1024, 64) or "")
    assert "to the threads (64)" in (check_short_shape(100, 64, 256, 128) or "")
    # f(x) stays under 2**(24 + K) and a row of N entries under 2**63.
    assert all(24 + cuda_topp_short.fixed_point_shift(n) + (n - 1).bit_length() <= 63 for n in (2, 1024, 8192))

    calls: list[tuple[int, ...]] = []
    monkeypatch.setattr(cuda_topp, "launch_topp_short", lambda x, p, out, passes=None: calls.append(tuple(x.shape)))

    class NoDevice(Exception):
        """Raised where the radix or grid path would first ask the device for its properties."""

    def no_device(*_: object) -> None:
        raise NoDevice

    monkeypatch.setattr(torch.cuda, "get_device_properties", no_device)
    out = torch.empty(2, DEFAULT_UP_TO, dtype=torch.uint8)
    cuda_topp.launch_topp(torch.rand(2, DEFAULT_UP_TO), 0.9, out)
    assert calls == [(2, DEFAULT_UP_TO)]
    for kw in (dict(grid=False), dict(threads=512), dict(short=False)):
        with pytest.raises(NoDevice):
            cuda_topp.launch_topp(torch.rand(2, 1000), 0.9, out[:, :1000], **kw)
    with pytest.raises(NoDevice):  # longer rows: the radix or grid kernel
        cuda_topp.launch_topp(torch.rand(2, DEFAULT_UP_TO + 1), 0.9, torch.empty(2, DEFAULT_UP_TO + 1))
    cuda_topp.launch_topp(torch.rand(2, MAX_N), 0.9, torch.empty(2, MAX_N), short=True)
    assert calls[-1] == (2, MAX_N)


# ---------------------------------------------------------------------------------------------
# the benchmark script, as a dry run under the interpreter


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_bench_dry_run(tmp_path: Path) -> None:
    """`sparsebench bench topp --dry-run --configs all` runs end to end and writes the documented fields. Run as a
    user would, without TRITON_INTERPRET in the environment: the command must choose the interpreter before anything
    imports triton."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "sparsebench.cli", "bench", "topp", "--out", str(tmp_path), "--dry-run", "--sizes", "40",
         "--suites", "main", "--configs", "all", "--repeats", "1", "--warmup", "0", "--calls-per-replay", "2"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "bench_topp.json").read_text())
    (result,) = report["results"]
    assert report["meta"]["calls_per_replay"] == 2
    for key in ("n", "rows", "triton_us", "sort_us", "read_us", "speedup_vs_sort", "triton_over_read",
                "passes_mean", "rows_differing_from_reference", "min_kept_mass", "config", "best_us", "best_config"):
        assert key in result, key
    assert result["rows_differing_from_reference"] == 0 and result["min_kept_mass"] >= 0.9 * (1 - 1e-12)
    # "one read" is the fastest reading kernel, and every one's time is kept
    assert result["read_us"] == min(result["read_variants_us"].values())
    assert result["read_variants_us"][result["read_kernel"]] == result["read_us"]
    assert {"probs.sum(-1)", "probs.sum()"} <= set(result["read_variants_us"])
    assert len(report["sweep"]) >= 2 and all(s["matches_reference"] for s in report["sweep"]), report["sweep"]
    md = (tmp_path / "bench_topp.md").read_text()
    assert "Fastest exact configuration per shape" in md and "| 40 |" in md
    assert "One read: every reading kernel" in md
