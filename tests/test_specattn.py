"""SpecAttn end to end on tiny models: draft capture, layer map, policy, and the exact dense limit."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import get_tiny

from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.errors import UsageError
from sparsebench.kernels.mass import block_attention_mass
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models import build_self_draft
from sparsebench.policies import Dense, OracleTopP, SpecAttn
from sparsebench.policies.specattn import heads_to_kv_groups
from sparsebench.specattn.calibrate import collect_block_attention, compute_layer_map
from sparsebench.specattn.capture import Draft

CFG = EngineConfig(block_size=8, dense_layers=1)


def _ids(seed: int, length: int = 160) -> torch.Tensor:
    return torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(seed))


def _all_layer_draft(model: torch.nn.Module) -> Draft:
    """A self-draft with every target layer: its attention IS the target's (under dense attention)."""
    return Draft(build_self_draft(model, "all"), list(range(model.config.num_hidden_layers)), "self:all")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_p1_reproduces_dense_exactly(arch: str) -> None:
    model = get_tiny(arch)
    ids = _ids(0)
    dense = TeacherForcedEngine(model, Dense(), TorchBackend(), CFG).evaluate(ids)
    out = TeacherForcedEngine(model, SpecAttn(p=1.0), TorchBackend(), CFG, draft=_all_layer_draft(model)).evaluate(ids)
    torch.testing.assert_close(out.nll, dense.nll, rtol=1e-6, atol=1e-6)
    assert out.kv.reduction_sparse == 0.0


def test_captured_draft_attention_is_the_draft_layers_exact_attention() -> None:
    """The capture, run inside the attention function, equals attention computed from the layer's q and K."""
    model = get_tiny("qwen2")
    draft = _all_layer_draft(model)
    seen: dict[int, torch.Tensor] = {}

    class Spy(SpecAttn):
        def select(self, ctx):
            seen[ctx.layer] = ctx.draft_attention.clone()
            return super().select(ctx)

    import dataclasses

    spy = dataclasses.dataclass(Spy)(p=0.9)
    ids = _ids(1, 40)
    cfg = EngineConfig(block_size=8, dense_layers=1, prefill_frac=0.9)
    TeacherForcedEngine(model, spy, TorchBackend(), cfg, draft=draft).evaluate(ids)
    # Last decode step: compare against the calibration path (a dense prefill over the same prefix).
    ref = collect_block_attention(model, ids[:, :-1], block_size=8, rows=1)
    for layer, mass in seen.items():
        torch.testing.assert_close(mass[0], ref[layer][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mass.sum(-1), torch.ones_like(mass.sum(-1)), rtol=1e-5, atol=1e-5)


def test_all_layer_draft_matches_oracle() -> None:
    """A draft identical to the target in every layer predicts exactly what the oracle sees... up to the
    sparse layers' own effect on later hidden states, so at a mild p both stay close to dense."""
    model = get_tiny("llama")
    ids = _ids(2)
    spec = TeacherForcedEngine(model, SpecAttn(p=0.9), TorchBackend(), CFG, draft=_all_layer_draft(model)).evaluate(ids)
    oracle = TeacherForcedEngine(model, OracleTopP(p=0.9), TorchBackend(), CFG).evaluate(ids)
    assert spec.kv.reduction_sparse > 0.0
    assert abs(spec.kv.reduction_sparse - oracle.kv.reduction_sparse) < 0.05


def test_sink_blocks_are_always_read() -> None:
    model = get_tiny("llama")
    ids = _ids(3)
    draft = _all_layer_draft(model)
    base = TeacherForcedEngine(model, SpecAttn(p=0.5), TorchBackend(), CFG, draft=draft).evaluate(ids)
    sink = TeacherForcedEngine(model, SpecAttn(p=0.5, sink_blocks=2), TorchBackend(), CFG, draft=draft).evaluate(ids)
    assert sink.kv.read_sparse >= base.kv.read_sparse


def test_topk_mode_reads_its_budget() -> None:
    model = get_tiny("llama")
    policy = SpecAttn(select_by="topk", budget_frac=0.25)
    cfg = EngineConfig(block_size=8, dense_layers=2)
    out = TeacherForcedEngine(model, policy, TorchBackend(), cfg, draft=_all_layer_draft(model)).evaluate(_ids(4, 400))
    assert 0.6 < out.kv.reduction_sparse < 0.76


def test_heads_to_kv_groups() -> None:
    mass = torch.tensor([[[0.5, 0.5], [0.1, 0.9], [1.0, 0.0], [0.0, 1.0]]])  # 4 heads
    grouped = heads_to_kv_groups(mass, 2, "mean")
    torch.testing.assert_close(grouped, torch.tensor([[[0.3, 0.7], [0.5, 0.5]]]))
    odd = heads_to_kv_groups(mass[:, :3], 2, "max")  # 3 heads, 2 kv heads: no correspondence
    assert odd.shape == (1, 2, 2) and torch.equal(odd[0, 0], odd[0, 1])


def test_specattn_without_draft_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--draft"):
        TeacherForcedEngine(get_tiny("llama"), SpecAttn(), TorchBackend(), CFG)


def test_layer_map_of_a_prefix_draft_is_the_identity_on_the_prefix() -> None:
    """Draft layers 0-1 ARE target layers 0-1, so the KL there is 0 and the map starts on the diagonal."""
    model = get_tiny("llama")
    draft = build_self_draft(model, "0-1")
    kl, aligned = compute_layer_map(model, draft, [_ids(5, 96), _ids(6, 96)], block_size=8, rows=16, progress=False)
    assert kl.shape == (4, 2)
    assert kl[0, 0] < 1e-6 and kl[1, 1] < 1e-6
    assert aligned.target_to_draft[:2] == [0, 1]


def test_block_mass_respects_causality_and_window() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 3, 4, generator=gen)
    k = torch.randn(1, 1, 20, 4, generator=gen)
    positions = torch.tensor([5, 12, 19])
    mass = block_attention_mass(q, k, 0.5, 4, query_positions=positions, sliding_window=8)
    assert mass.shape == (1, 2, 3, 5)
    torch.testing.assert_close(mass.sum(-1), torch.ones(1, 2, 3))
    assert torch.all(mass[:, :, 0, 2:] == 0)  # row at position 5 sees blocks 0-1 only
    assert torch.all(mass[:, :, 2, :3] == 0)  # row at 19 with window 8 sees positions 12..19: blocks 3-4


def test_a_draft_larger_than_the_target_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    from sparsebench.models import load_model
    from sparsebench.specattn.drafts import load_draft_model

    small, large = load_model("tiny:llama"), load_model("tiny:qwen2")  # 180800 and 181312 parameters
    load_draft_model("tiny:qwen2", small, dtype=torch.float32, device="cpu", progress=False)
    err = capsys.readouterr().err
    assert "warning: the draft tiny:qwen2 (181,312 parameters) is larger than the target tiny:llama (180,800)" in err
    load_draft_model("tiny:llama", large, dtype=torch.float32, device="cpu", progress=False)
    assert "larger than the target" not in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_top_p_on_the_gpu_is_the_exact_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the policy's top-p runs on the device ("auto": the CUDA radix kernel where NVRTC runs, else Triton);
    at every sparse layer and step its mask is the exact float64 reference's on the same draft mass."""
    import sparsebench.policies.specattn as specattn_module
    from sparsebench.kernels.topp import topp_mask_torch

    real = specattn_module.topp_mask_nd
    seen: list[bool] = []

    def spy(mass: torch.Tensor, p: float, *args: object, **kw: object) -> torch.Tensor:
        got = real(mass, p, *args, **kw)  # type: ignore[arg-type]
        ref = topp_mask_torch(mass.reshape(-1, mass.shape[-1]).cpu().double(), p).reshape(mass.shape)
        seen.append(got.is_cuda and torch.equal(got.cpu(), ref))
        return got

    monkeypatch.setattr(specattn_module, "topp_mask_nd", spy)
    model = copy.deepcopy(get_tiny("llama")).cuda()  # a copy: the shared tiny model stays on the CPU for later tests
    out = TeacherForcedEngine(model, SpecAttn(p=0.9), TorchBackend(), CFG,
                              draft=_all_layer_draft(model)).evaluate(_ids(5).cuda())
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} selections differ from the reference"
    assert out.kv.reduction_sparse > 0.0
