"""Tests of the draft-mass kernel (sparsebench.kernels.draft_mass): attention output and per-block attention mass
against a float64 torch reference, under Triton's interpreter on the CPU (float32 and float16: the interpreter
computes bfloat16 products wrongly, see tests/test_triton_backend.py) and compiled on a GPU (bfloat16, the
draft's real shapes, a CUDA-graph replay with an advancing mass row); and the speculator's use of it (the same
masses as its torch path, greedy output unchanged at p = 1.0). Inputs are fresh each run (SPARSEBENCH_TEST_SEED
replays a failure)."""

from __future__ import annotations

import textwrap

import pytest
import torch
from interpreted import HAVE_TRITON, SEED, run_interpreted

from sparsebench.kernels.capture import capture

BS = 16


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, kv_len: torch.Tensor | None,
              skip: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 attention ``[B, Hq, 1, D]`` and block mass ``[B, Hq, N]`` over the live, unskipped tokens."""
    b, hq = q.shape[:2]
    hkv, t = k.shape[1], k.shape[2]
    kk, vv = (x.double().repeat_interleave(hq // hkv, 1) for x in (k, v))
    scores = (q.double() @ kk.transpose(-1, -2))[:, :, 0] * scaling  # [B, Hq, T]
    pos = torch.arange(t)
    dead = (pos[None, :] >= (kv_len if kv_len is not None else torch.full((b,), t))[:, None])
    if skip is not None:
        dead = dead | ((pos // BS >= skip[0]) & (pos // BS < skip[1]))[None, :]
    probs = torch.softmax(scores.masked_fill(dead[:, None, :], float("-inf")), -1)
    n = -(-t // BS)
    mass = torch.nn.functional.pad(probs, (0, n * BS - t)).view(b, hq, n, BS).sum(-1)
    return (probs.unsqueeze(2) @ vv), mass


def make_cases(gen: torch.Generator) -> list[dict]:
    """Small shapes covering the kernel's branches: GQA groups 1/2/4, head dims 64/128, one or several splits,
    a partial last block, kv_len below the capacity, a skipped block range, the mass row buffer, no mass."""
    cases = []
    specs = [  # (dtype, b, hkv, group, d, tokens, splits, bpt, kv_len, skip, row buffer, want mass)
        (torch.float32, 1, 2, 4, 64, 100, 3, 2, False, None, False, True),
        (torch.float32, 2, 2, 2, 128, 160, 2, 1, True, (1, 5), False, True),
        (torch.float16, 2, 1, 1, 64, 70, None, None, True, (1, 2), True, True),
        (torch.float16, 1, 2, 2, 128, 96, 4, 2, False, None, True, True),
        (torch.float32, 1, 2, 2, 64, 64, 2, 1, True, (1, 3), False, False),
    ]
    for dtype, b, hkv, group, d, t, splits, bpt, has_len, skip, row_buf, want in specs:
        q = torch.randn(b, hkv * group, 1, d, generator=gen).to(dtype)
        k = (torch.randn(b, hkv, t, d, generator=gen) * 2).to(dtype)  # larger keys: a peaked distribution
        v = torch.randn(b, hkv, t, d, generator=gen).to(dtype)
        kv_len = torch.randint(t // 2, t + 1, (b,), generator=gen) if has_len else None
        cases.append(dict(q=q, k=k, v=v, kv_len=kv_len, skip=skip, splits=splits, bpt=bpt, row_buf=row_buf,
                          want=want, scaling=d**-0.5))
    return cases


CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.errors import UsageError
    from sparsebench.kernels.draft_mass import attention_with_block_mass
    from sparsebench.kernels.topp import interpreter_enabled
    from sparsebench.kernels.triton_decode import KernelConfig
    assert interpreter_enabled(), "child did not get Triton's interpreter"
    out = []
    for c in torch.load(sys.argv[1]):
        if c.get("bad"):
            try:
                attention_with_block_mass(*c["args"], block_size=c["bs"], scaling=1.0, skip=c.get("skip"))
            except UsageError as exc:
                out.append(dict(error=str(exc)))
            else:
                out.append(dict(error=None))
            continue
        b, hq = c["q"].shape[:2]
        n = -(-c["k"].shape[2] // 16)
        kw = dict(block_size=16, scaling=c["scaling"], kv_len=c["kv_len"], skip=c["skip"], want_mass=c["want"],
                  config=KernelConfig(splits=c["splits"], blocks_per_tile=c["bpt"]))
        if c["row_buf"]:  # write row 2 of a 4-row buffer wider than the context; the other rows stay NaN
            buf = torch.full((4, b, hq, n + 3), float("nan"))
            o, m = attention_with_block_mass(c["q"], c["k"], c["v"], mass_out=buf, mass_row=torch.tensor([2]), **kw)
            assert m is buf
            out.append(dict(out=o, mass=buf[2, :, :, :n].clone(), untouched=buf[[0, 1, 3]].isnan().all().item()
                            and buf[2, :, :, n:].isnan().all().item()))
        else:
            o, m = attention_with_block_mass(c["q"], c["k"], c["v"], **kw)
            out.append(dict(out=o, mass=m, untouched=True))
    torch.save(out, sys.argv[2])
    """
)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_kernel_matches_reference_under_interpreter(tmp_path) -> None:
    cases = make_cases(torch.Generator().manual_seed(SEED))
    q, k = torch.zeros(1, 2, 1, 64), torch.zeros(1, 2, 40, 64)
    bad = [dict(bad=True, args=(q, k, k), bs=12), dict(bad=True, args=(q, k, k), bs=16, skip=(2, 9)),
           dict(bad=True, args=(q, k, k.half()), bs=16)]
    outs = run_interpreted(CHILD, cases + bad, tmp_path, timeout=240)
    for i, (c, got) in enumerate(zip(cases, outs, strict=False)):
        ref_out, ref_mass = reference(c["q"], c["k"], c["v"], c["scaling"], c["kv_len"], c["skip"])
        tol = 1e-5 if c["q"].dtype == torch.float32 else 2e-3
        ctx = f"case {i} (seed {SEED})"
        assert got["out"].dtype == c["q"].dtype, ctx
        torch.testing.assert_close(got["out"].double(), ref_out, rtol=tol, atol=tol, msg=ctx)
        if c["want"]:
            torch.testing.assert_close(got["mass"].double(), ref_mass, rtol=tol, atol=tol, msg=ctx)
            assert got["untouched"], f"{ctx}: the kernel wrote outside its mass row"
        else:
            assert got["mass"] is None, ctx
    errors = [o["error"] for o in outs[len(cases):]]
    assert "power of two" in errors[0] and "skip (2, 9)" in errors[1] and "share a dtype" in errors[2], errors


SPEC_CHILD = textwrap.dedent(
    """
    import sys, torch
    from sparsebench.engine import EngineConfig
    from sparsebench.fastdecode import FastDecoder, FastModel
    from sparsebench.fastdecode.model import PRESETS
    from sparsebench.fastdecode.speculate import FastSpeculator, SpecDraft
    from sparsebench.kernels.torch_backend import TorchBackend
    from sparsebench.policies import Dense, SpecAttn
    spec = PRESETS["tiny"]
    target = FastModel.random(spec, device="cpu", dtype=torch.float32, seed=0)
    draft_model = FastModel.random(spec, device="cpu", dtype=torch.float32, seed=1)
    with torch.no_grad():
        for model in (target, draft_model):
            for name, p in model.named_parameters():
                if not name.endswith("norm.weight"):
                    p.mul_(8.0)
    draft = SpecDraft.separate(draft_model, target, "random tiny")
    cfg = EngineConfig(block_size=16, dense_layers=1)
    prompt = torch.randint(0, spec.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    dec = FastDecoder(target, Dense(), TorchBackend(), cfg, max_tokens=80)
    plain = [int(dec.prefill(prompt).argmax(-1)), *dec.generate(5)[0].tolist()]
    out = {"plain": plain}
    s = FastSpeculator(target, draft, SpecAttn(p=1.0), TorchBackend(), cfg, gamma=2, max_tokens=80, mass_kernel=True)
    s.prefill(prompt)
    out["greedy"] = s.generate(6)
    for window in (16,):  # a StreamingLLM draft: the prompt's 3 blocks minus the skipped block 1
        masses = []
        for kernel in (True, False):
            s = FastSpeculator(target, draft, SpecAttn(p=0.8), TorchBackend(), cfg, gamma=2, max_tokens=80,
                               mass_kernel=kernel, draft_window=window, last_row="extra-step")
            s.prefill(prompt)
            s.round()
            masses.append(s.rows_mass[: s.rows].clone())
        out[f"masses_{window}"] = masses
    torch.save(out, sys.argv[2])
    """
)


@pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")
def test_speculator_mass_kernel_matches_torch_path_under_interpreter(tmp_path) -> None:
    """The speculator's draft through the kernel keeps the masses its torch path keeps (StreamingLLM draft: the
    dense case is the kernel cases'), and speculative greedy output at p = 1.0 is still plain greedy output."""
    out = run_interpreted(SPEC_CHILD, [], tmp_path, timeout=240)
    assert out["greedy"] == out["plain"]
    for window in (16,):
        kernel, torch_path = out[f"masses_{window}"]
        assert kernel.abs().sum() > 0, window
        torch.testing.assert_close(kernel, torch_path, rtol=1e-5, atol=1e-6, msg=f"draft window {window}")


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not HAVE_TRITON, reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize(("tokens", "skip"), [(8192 + 5, None), (131072, (1, 7936))])
def test_gpu_bf16_draft_shapes_match_reference(tokens: int, skip: tuple[int, int] | None) -> None:
    """Llama-3.2-1B's attention shape (32 query heads, 8 kv heads, head dim 64) in bf16, at 8K tokens and at
    128K with a StreamingLLM window (the sink block and the last 256 blocks)."""
    from sparsebench.kernels.draft_mass import attention_with_block_mass

    gen = torch.Generator(device="cuda").manual_seed(SEED)
    q = torch.randn(1, 32, 1, 64, device="cuda", generator=gen).bfloat16()
    k = (torch.randn(1, 8, tokens, 64, device="cuda", generator=gen) * 2).bfloat16()
    v = torch.randn(1, 8, tokens, 64, device="cuda", generator=gen).bfloat16()
    kv_len = torch.tensor([tokens - 3], device="cuda")
    out, mass = attention_with_block_mass(q, k, v, block_size=BS, scaling=0.125, kv_len=kv_len, skip=skip)
    ref_out, ref_mass = reference(q.cpu(), k.cpu(), v.cpu(), 0.125, kv_len.cpu(), skip)
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mass.double().cpu(), ref_mass, rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(mass.sum(-1).double().cpu(), torch.ones(1, 32, dtype=torch.float64), rtol=1e-4,
                               atol=1e-4)


@needs_cuda
def test_gpu_graph_replay_writes_the_advancing_row() -> None:
    """Captured once, replayed with the row counter advanced and new inputs: each replay's masses land in its row."""
    from sparsebench.kernels.draft_mass import attention_with_block_mass

    gen = torch.Generator(device="cuda").manual_seed(SEED)
    q = torch.randn(1, 32, 1, 64, device="cuda", generator=gen).bfloat16()
    k = torch.randn(1, 8, 4096, 64, device="cuda", generator=gen).bfloat16()
    v = torch.randn_like(k)
    kv_len, row = torch.tensor([4000], device="cuda"), torch.zeros(1, dtype=torch.long, device="cuda")
    buf = torch.zeros(3, 1, 32, 300, device="cuda")

    def body() -> torch.Tensor:
        out, _ = attention_with_block_mass(q, k, v, block_size=BS, scaling=0.125, kv_len=kv_len, mass_out=buf,
                                           mass_row=row)
        row.add_(1)
        return out

    graph, out = capture(body)  # compiles outside the capture
    row.zero_()
    buf.zero_()
    expected = []
    for _ in range(3):
        q.copy_(torch.randn(q.shape, device="cuda", generator=gen))
        graph.replay()
        torch.cuda.synchronize()
        ref_out, ref_mass = reference(q.cpu(), k.cpu(), v.cpu(), 0.125, kv_len.cpu(), None)
        torch.testing.assert_close(out.double().cpu(), ref_out, rtol=2e-2, atol=2e-2)
        expected.append(ref_mass)
    for i in range(3):
        torch.testing.assert_close(buf[i, :, :, :256].double().cpu(), expected[i], rtol=2e-2, atol=1e-4)
    assert int(row) == 3 and buf[:, :, :, 256:].abs().sum() == 0


@needs_cuda
def test_gpu_speculator_kernel_and_torch_masses_agree() -> None:
    """On the GPU in bf16 the speculator's kernel path keeps the masses its torch path keeps (up to rounding)."""
    from sparsebench.engine import EngineConfig
    from sparsebench.fastdecode import FastModel
    from sparsebench.fastdecode.model import ModelSpec
    from sparsebench.fastdecode.speculate import FastSpeculator, SpecDraft
    from sparsebench.kernels.triton_backend import TritonBackend
    from sparsebench.policies import SpecAttn

    spec = ModelSpec(family="llama", vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=4,
                     num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                     tie_embeddings=False)
    target = FastModel.random(spec, device="cuda", dtype=torch.bfloat16, seed=0)
    draft = SpecDraft.separate(FastModel.random(spec, device="cuda", dtype=torch.bfloat16, seed=1), target, "random")
    masses = []
    for kernel in (True, False):
        s = FastSpeculator(target, draft, SpecAttn(p=0.9), TritonBackend(), EngineConfig(), gamma=4,
                           max_tokens=3000, mass_kernel=kernel, cuda_graphs=False)
        s.fill_random(2500, seed=0, heavy_frac=0.3, heavy_scale=4.0)
        s.round()
        assert s.mass_kernel == kernel
        masses.append(s.rows_mass[: s.gamma].float().cpu())
    torch.testing.assert_close(masses[0], masses[1], rtol=3e-2, atol=2e-4)
