"""Self-drafts: spec parsing, exactness against hand-built references, shared parameters, own KV cache."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from sparsebench.errors import UsageError
from sparsebench.models import build_self_draft, load_model, parse_layer_spec
from sparsebench.models.tiny import tiny_config, tiny_model


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def target(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_model(request.param, seed=1)


def _ids(seq_len: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, seq_len), generator=g)


def _reference(target: torch.nn.Module, layers: list[int]) -> torch.nn.Module:
    """An independent model holding COPIES of the chosen layers, built from a fresh config."""
    arch = "gemma3" if target.config.model_type.startswith("gemma3") else target.config.model_type
    config = tiny_config(arch)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [target.config.layer_types[i] for i in layers]
    ref = AutoModelForCausalLM.from_config(config)
    state = {}
    for key, value in target.state_dict().items():
        parts = key.split(".")
        if len(parts) > 3 and parts[1] == "layers":
            src = int(parts[2])
            if src not in layers:
                continue
            parts[2] = str(layers.index(src))
        state[".".join(parts)] = value.clone()
    ref.load_state_dict(state, strict=True)
    return ref.eval()


@pytest.mark.parametrize(
    ("spec", "n", "expected"),
    [
        ("0-7", 30, list(range(8))),
        ("0-6,23-29", 30, [*range(7), *range(23, 30)]),
        ("self:0, 2 ,5", 10, [0, 2, 5]),
        ("every=3", 10, [0, 3, 6, 9]),
        ("every=1", 4, [0, 1, 2, 3]),
        ("first-half", 30, list(range(15))),
        ("first-half", 5, [0, 1]),
        ("all", 4, [0, 1, 2, 3]),
        ("3", 4, [3]),
    ],
)
def test_parse_layer_spec(spec: str, n: int, expected: list[int]) -> None:
    assert parse_layer_spec(spec, n) == expected


@pytest.mark.parametrize(
    ("spec", "n", "fragment"),
    [
        ("", 4, "empty"),
        ("self:", 4, "empty"),
        ("3-1", 4, "backwards"),
        ("0-4", 4, "layer 4 does not exist"),
        ("0,0", 4, "increasing"),
        ("2,1", 4, "increasing"),
        ("0-2,1-3", 4, "increasing"),
        ("every=0", 4, "K >= 1"),
        ("half", 4, "cannot read"),
        ("0-x", 4, "cannot read"),
        ("first-half", 1, "too few"),
    ],
)
def test_parse_layer_spec_errors(spec: str, n: int, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_layer_spec(spec, n)
    msg = str(info.value)
    assert fragment in msg
    assert "self:0-6,23-29" in msg and "self:every=3" in msg  # says what a valid spec looks like


def test_all_layers_draft_gives_target_logits_exactly(target: torch.nn.Module) -> None:
    draft = build_self_draft(target, "all")
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(draft(input_ids=ids).logits, target(input_ids=ids).logits)
    assert draft.draft_source_layers == [0, 1, 2, 3]


@pytest.mark.parametrize("spec", ["0,3", "every=2", "1-2", "3"])
def test_subset_draft_matches_manual_layers(target: torch.nn.Module, spec: str) -> None:
    draft = build_self_draft(target, spec)
    layers = parse_layer_spec(spec, 4)
    assert draft.draft_source_layers == layers
    assert draft.config.num_hidden_layers == len(layers)
    assert len(draft.model.layers) == len(layers)
    for new_idx, layer in enumerate(draft.model.layers):
        assert layer.self_attn.layer_idx == new_idx
        assert layer.self_attn.q_proj is target.model.layers[layers[new_idx]].self_attn.q_proj
    if getattr(target.config, "layer_types", None) is not None:
        assert draft.config.layer_types == [target.config.layer_types[i] for i in layers]
    ids = _ids(48)  # longer than gemma3's tiny sliding window (24), so the window matters
    ref = _reference(target, layers)
    with torch.no_grad():
        got = draft(input_ids=ids).logits
        want = ref(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_target_is_untouched(target: torch.nn.Module) -> None:
    ids = _ids()
    with torch.no_grad():
        before = target(input_ids=ids).logits
    build_self_draft(target, "1,3")
    assert target.config.num_hidden_layers == 4
    assert [layer.self_attn.layer_idx for layer in target.model.layers] == [0, 1, 2, 3]
    assert len(target.model.layers) == 4
    with torch.no_grad():
        assert torch.equal(target(input_ids=ids).logits, before)


def test_parameters_are_shared_not_copied(target: torch.nn.Module) -> None:
    draft = build_self_draft(target, "0,2")
    target_ptrs = {p.data_ptr() for p in target.parameters()}
    draft_params = list(draft.parameters())
    assert draft_params and all(p.data_ptr() in target_ptrs for p in draft_params)
    assert draft.model.embed_tokens.weight.data_ptr() == target.model.embed_tokens.weight.data_ptr()
    assert draft.model.norm.weight.data_ptr() == target.model.norm.weight.data_ptr()
    assert draft.lm_head.weight.data_ptr() == target.lm_head.weight.data_ptr()
    layer_ptr = target.model.layers[2].mlp.up_proj.weight.data_ptr()
    assert draft.model.layers[1].mlp.up_proj.weight.data_ptr() == layer_ptr
    # An in-place change to the target is seen by the draft: same storage.
    with torch.no_grad():
        target.model.norm.weight.add_(0.0)
        target.model.layers[2].mlp.up_proj.weight.mul_(1.0)
    assert draft.model.layers[1].mlp.up_proj.weight is target.model.layers[2].mlp.up_proj.weight


def test_no_parameter_memory_allocated() -> None:
    target = tiny_model("llama", seed=2)
    before = sum(p.numel() for p in target.parameters())
    draft = build_self_draft(target, "all")
    unique = {p.data_ptr() for p in [*target.parameters(), *draft.parameters()]}
    assert len(unique) == len({p.data_ptr() for p in target.parameters()})
    assert sum(p.numel() for p in target.parameters()) == before


def test_draft_has_its_own_kv_cache(target: torch.nn.Module) -> None:
    # 0 and 3: a sliding-window and a full-attention layer in gemma3; 30 tokens pass its window of 24.
    draft = build_self_draft(target, "0,3")
    ids = _ids(30)
    with torch.no_grad():
        full = draft(input_ids=ids).logits
        draft_cache = DynamicCache(config=draft.config)
        target_cache = DynamicCache(config=target.config)
        out = draft(input_ids=ids[:, :20], cache=draft_cache, use_cache=True)
        target(input_ids=ids[:, :20], cache=target_cache, use_cache=True)
        steps = [out.logits]
        for pos in range(20, 30):
            out = draft(input_ids=ids[:, pos : pos + 1], cache=draft_cache, use_cache=True)
            steps.append(out.logits)
    assert len(draft_cache.layers) == 2
    assert len(target_cache.layers) == 4
    assert draft_cache.get_seq_length() == 30 and target_cache.get_seq_length() == 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_generate_and_loaded_model_input() -> None:
    loaded = load_model("tiny:qwen2")
    draft = build_self_draft(loaded, "self:first-half")
    assert draft.draft_source_layers == [0, 1]
    ids = loaded.tokenizer("hello", return_tensors="pt")["input_ids"]
    out = draft.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, ids.shape[1] + 3)


def test_non_hf_module_is_refused() -> None:
    with pytest.raises(UsageError, match="decoder-only"):
        build_self_draft(torch.nn.Linear(2, 2), "all")
    with pytest.raises(UsageError, match="loaded model"):
        build_self_draft("tiny:llama", "all")
