"""The decode loop against one parallel teacher-forced pass, and the shared every-policy test."""

from __future__ import annotations

import pytest
import torch
from conftest import get_tiny

from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.errors import UsageError
from sparsebench.evals.metrics import DENSE_LAYER, SLIDING, SPARSE
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models import build_self_draft
from sparsebench.plugins import registry
from sparsebench.policies import Dense, Quest, StreamingLLM
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection
from sparsebench.specattn.capture import Draft

SEQ = 96


def _ids(seed: int = 0, length: int = SEQ) -> torch.Tensor:
    return torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(seed))


def _parallel_nll(model: torch.nn.Module, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Reference: one forward pass with the causal mask; NLL of tokens prefill+1 .. L-1."""
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), -1)
    return -logp[0, prefill:-1].gather(-1, ids[0, prefill + 1 :, None])[:, 0]


def test_dense_steps_match_parallel_teacher_forcing(tiny_arch_model) -> None:
    _, model = tiny_arch_model
    ids = _ids(1)
    out = TeacherForcedEngine(model, Dense(), TorchBackend(), EngineConfig(block_size=8, dense_layers=1)).evaluate(ids)
    ref = _parallel_nll(model, ids, out.prefill_tokens)
    assert out.nll.shape == (1, SEQ - out.prefill_tokens - 1)
    torch.testing.assert_close(out.nll[0], ref, rtol=1e-4, atol=1e-4)
    assert out.kv.reduction_sparse == 0.0


REGISTERED = sorted(registry().policies)


def _half_draft(model: torch.nn.Module) -> Draft:
    """A first-half self-draft, target layer i guided by draft layer min(i, last)."""
    draft = build_self_draft(model, "first-half")
    n_draft = len(draft.draft_source_layers)
    return Draft(draft, [min(i, n_draft - 1) for i in range(model.config.num_hidden_layers)], "self:first-half")


def test_batched_documents_match_one_by_one() -> None:
    model = get_tiny("llama")
    ids = torch.cat([_ids(7), _ids(8)])
    cfg = EngineConfig(block_size=8, dense_layers=1)
    engine = TeacherForcedEngine(model, Quest(budget_frac=0.3), TorchBackend(), cfg)
    both = engine.evaluate(ids)
    for row in range(2):
        single = engine.evaluate(ids[row : row + 1])
        torch.testing.assert_close(both.nll[row], single.nll[0], rtol=1e-4, atol=1e-4)
        assert both.kv_rows[row].read_sparse == single.kv.read_sparse


@pytest.mark.parametrize("policy_name", REGISTERED)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_every_policy_at_full_budget_reproduces_dense(policy_name: str, arch: str) -> None:
    """Every registered policy (built-in or plugin) at full budget gives dense logits (fp32, rel < 1e-4)."""
    cls = registry().policies[policy_name]
    assert cls.full_budget_params is not None, (
        f"policy {policy_name!r} must declare full_budget_params (the parameters that read every block)")
    model = get_tiny(arch)
    ids = _ids(2)
    cfg = EngineConfig(block_size=8, dense_layers=1)
    dense = TeacherForcedEngine(model, Dense(), TorchBackend(), cfg).evaluate(ids)
    policy = cls.from_params(dict(cls.full_budget_params))
    out = TeacherForcedEngine(model, policy, TorchBackend(), cfg, draft=_half_draft(model)).evaluate(ids)
    rel = ((out.nll - dense.nll).abs() / dense.nll.abs()).max().item()
    assert rel < 1e-4
    assert out.kv.read_sparse == dense.kv.read_sparse


def test_quest_quarter_budget_reads_about_a_quarter() -> None:
    """Counted from the backend: a quarter budget reads ~25% plus the always-kept newest block."""
    model = get_tiny("llama")
    ids = _ids(3, 640)
    cfg = EngineConfig(block_size=16, dense_layers=2)
    out = TeacherForcedEngine(model, Quest(budget_frac=0.25), TorchBackend(), cfg).evaluate(ids)
    # Expected from the rule itself: per step, ceil(T/4) tokens rounded up to blocks, +1 block when the
    # newest block is not among the top-k; so the reduction is a little below 75%.
    assert 0.66 < out.kv.reduction_sparse < 0.75
    layers = out.kv.per_layer
    assert [layers[i][2] for i in range(4)] == [DENSE_LAYER, DENSE_LAYER, SPARSE, SPARSE]
    assert out.kv.reduction_all == pytest.approx(out.kv.reduction_sparse / 2, rel=1e-6)


def test_streamingllm_reads_sinks_and_window_exactly() -> None:
    model = get_tiny("qwen2")
    ids = _ids(4, 200)
    cfg = EngineConfig(block_size=8, dense_layers=1, prefill_frac=0.5)
    out = TeacherForcedEngine(model, StreamingLLM(sink_tokens=8, window_tokens=16), TorchBackend(), cfg).evaluate(ids)
    expected = 0
    for n in range(out.prefill_tokens + 1, 200):  # KV length at each decode step
        n_blocks = -(-n // 8)
        first_recent = max(0, n - 16) // 8
        blocks = set(range(1)) | set(range(first_recent, n_blocks))
        expected += sum(min(8, n - 8 * j) for j in blocks)
    per_layer_heads = 2  # kv heads of the tiny models
    assert out.kv.read_sparse == expected * per_layer_heads * 3  # 3 sparse layers


def test_gemma3_sliding_layers_keep_their_window() -> None:
    model = get_tiny("gemma3")
    out = TeacherForcedEngine(model, Quest(budget_frac=0.25), TorchBackend(),
                              EngineConfig(block_size=8, dense_layers=0)).evaluate(_ids(5, 120))
    kinds = {layer: kind for layer, (_, _, kind) in out.kv.per_layer.items()}
    assert kinds == {0: SLIDING, 1: SPARSE, 2: SLIDING, 3: SPARSE}
    for layer in (0, 2):
        read, dense, _ = out.kv.per_layer[layer]
        assert read == dense and read <= 24 * 2 * out.decoded_tokens  # window 24, 2 kv heads
    assert out.kv.reduction_sparse > 0.4


class _BadShape(Policy):
    name = "bad_shape"

    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(torch.ones(1, 1, 1, dtype=torch.bool))


def test_policy_returning_wrong_shape_is_named() -> None:
    import dataclasses

    policy = dataclasses.dataclass(_BadShape)()
    with pytest.raises(ValueError, match=r"bad_shape.*shape"):
        TeacherForcedEngine(get_tiny("llama"), policy, TorchBackend(), EngineConfig(block_size=8)).evaluate(_ids())


def test_engine_config_errors() -> None:
    with pytest.raises(UsageError, match="block-size"):
        EngineConfig(block_size=0)
    with pytest.raises(UsageError, match="prefill-frac"):
        EngineConfig(prefill_frac=1.0)
    with pytest.raises(UsageError, match="no sparse layer"):
        TeacherForcedEngine(get_tiny("llama"), Dense(), TorchBackend(), EngineConfig(dense_layers=4))


def test_draft_attention_is_captured_only_for_layers_a_policy_selects() -> None:
    """Gemma-3-style sliding-window layers keep their window and never read a draft, so the draft layers they map
    to are not captured (tiny gemma3: layers 0 and 2 slide, 1 and 3 attend fully; layer 0 is dense here)."""
    from sparsebench.engine import policy_layers
    from sparsebench.policies import SpecAttn

    gemma, llama = get_tiny("gemma3"), get_tiny("llama")
    assert policy_layers(gemma.config, 1) == [1, 3]
    assert policy_layers(llama.config, 1) == list(range(1, llama.config.num_hidden_layers))
    draft = Draft(get_tiny("gemma3"), [0, 1, 2, 3], "same-shape")
    engine = TeacherForcedEngine(gemma, SpecAttn(), TorchBackend(), EngineConfig(block_size=4, dense_layers=1),
                                 draft=draft)
    assert engine.draft_layers == {1, 3}
    assert engine.capture is not None and engine.capture.layers == {1, 3}
    result = engine.evaluate(torch.randint(0, 200, (1, 40), generator=torch.Generator().manual_seed(0)))
    assert 0 < result.kv.reduction_sparse < 1
