"""The fast decode engine against Hugging Face and the teacher-forced engine (CPU, eager, torch backend),
plus CUDA-graph and real-model checks that run only on a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import get_tiny

from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.errors import UsageError
from sparsebench.fastdecode import PRESETS, FastDecoder, FastModel, ModelSpec, SelfDraft
from sparsebench.fastdecode.cache import StaticKVCache
from sparsebench.fastdecode.draft import nearest_layer_map, parse_layer_map
from sparsebench.fastdecode.measure import measure
from sparsebench.kernels import AUTO_ORDER
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.kvcache import LayerSummaries
from sparsebench.models import build_self_draft
from sparsebench.plugins import registry
from sparsebench.policies import Dense, OracleTopP, Quest, SpecAttn, StreamingLLM
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection
from sparsebench.specattn.capture import Draft

CFG = EngineConfig(block_size=8, dense_layers=1)
N_LAYERS = 4  # the tiny models'
DRAFT_SPEC = "first-half"


def _ids(batch: int = 1, length: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(seed))


def _draft() -> SelfDraft:
    return SelfDraft.build(DRAFT_SPEC, N_LAYERS)


def _decoder(arch: str, policy: Policy, *, batch: int = 1, max_tokens: int = 128) -> FastDecoder:
    return FastDecoder(FastModel.from_hf(get_tiny(arch)), policy, TorchBackend(), CFG, batch=batch,
                       max_tokens=max_tokens, draft=_draft())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_match_hf_prefill_and_decode(arch: str) -> None:
    """Chunked prefill (chunks not aligned to blocks) and step-by-step decode give HF's logits."""
    ids = _ids(batch=2, length=40, seed=1)
    with torch.no_grad():
        ref = get_tiny(arch)(ids).logits
    dec = _decoder(arch, Dense(), batch=2)
    torch.testing.assert_close(dec.prefill(ids[:, :30], chunk=7), ref[:, 29], rtol=1e-4, atol=1e-4)
    for pos in range(30, 40):
        torch.testing.assert_close(dec.step(ids[:, pos : pos + 1]), ref[:, pos], rtol=1e-4, atol=1e-4)


def _hf_greedy(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    ids = prompt
    with torch.no_grad():
        for _ in range(steps + 1):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[:, prompt.shape[1] :]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_every_policy_at_full_budget_decodes_hf_greedy_tokens(arch: str) -> None:
    """Every registered policy (plugins too) at its full_budget_params gives HF's greedy tokens."""
    prompt = _ids(length=40, seed=2)
    expected = _hf_greedy(get_tiny(arch), prompt, 16)
    for name, cls in sorted(registry().policies.items()):
        assert cls.full_budget_params is not None, f"policy {name!r} must declare full_budget_params"
        dec = _decoder(arch, cls.from_params(dict(cls.full_budget_params)))
        first = dec.prefill(prompt).argmax(-1)
        got = torch.cat([first[:, None], dec.generate(16)], dim=1)
        assert torch.equal(got, expected), f"{name} at full budget diverged from HF greedy decoding"


def test_static_summaries_equal_kvcache() -> None:
    """Prefill refresh plus per-token device updates give sparsebench.kvcache's summaries, every step."""
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn(2, 2, 45, 16, generator=gen)
    cache = StaticKVCache(layers=1, batch=2, kv_heads=2, head_dim=16, capacity=45, block_size=8,
                          dtype=torch.float32, device="cpu", summaries=frozenset({"minmax", "mean"}),
                          summary_layers=[0])
    ref = LayerSummaries(frozenset({"minmax", "mean"}), 8)
    cache.write(0, keys[:, :, :19], keys[:, :, :19], torch.arange(19))
    cache.refresh_summaries(0, 0, 19)
    for n in range(19, 46):
        if n > 19:
            pos = torch.tensor([n - 1])
            cache.write(0, keys[:, :, n - 1 : n], keys[:, :, n - 1 : n], pos)
            cache.update_summaries(0, pos)
        ref.update(keys[:, :, :n])
        expected = ref.view()
        got = cache.summary_view(0, -(-n // 8), torch.full((2,), n, dtype=torch.int32))
        assert set(got) == set(expected) == {"key_min", "key_max", "key_mean"}
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-6, atol=1e-6, msg=f"{name} at {n} tokens")


@pytest.mark.parametrize("policy", [Quest(budget_frac=0.3), SpecAttn(p=0.9), OracleTopP(p=0.9),
                                    StreamingLLM(sink_tokens=8, window_tokens=16)], ids=lambda p: p.name)
def test_kv_reads_and_nll_match_teacher_forced_engine(policy: Policy) -> None:
    """Same tokens, same policy: the fast engine reads what the teacher-forced engine reads, per layer,
    and predicts the same next tokens (self-draft attention and exact scores included)."""
    model = get_tiny("llama")
    ids = _ids(length=64, seed=4)
    hf_draft = build_self_draft(model, DRAFT_SPEC)
    draft = _draft()
    ref = TeacherForcedEngine(model, policy, TorchBackend(), CFG,
                              draft=Draft(hf_draft, draft.layer_map, DRAFT_SPEC)).evaluate(ids)
    dec = _decoder("llama", policy)
    dec.prefill(ids[:, : ref.prefill_tokens])
    nll = []
    for pos in range(ref.prefill_tokens, ids.shape[1] - 1):
        logp = torch.log_softmax(dec.step(ids[:, pos : pos + 1]).double(), -1)
        nll.append(-logp[0, ids[0, pos + 1]])
    assert dec.kv_summaries()[0].per_layer == ref.kv.per_layer
    torch.testing.assert_close(torch.stack(nll), ref.nll[0], rtol=1e-4, atol=1e-4)


def test_measure_eager_matches_generate_and_counts_reads() -> None:
    dec = _decoder("qwen2", Quest(budget=16), batch=2)
    dec.prefill(_ids(batch=2, length=40, seed=5))
    start = dec.snapshot()
    expected = dec.generate(6)
    dec.restore(start)
    m = measure(dec, 6, cuda_graphs=True, repeats=2)
    assert m.mode == "eager" and any("CUDA device" in n for n in m.notes)
    assert torch.equal(m.tokens, expected)
    assert len(m.pass_ms) == 2 and m.tokens_per_second > 0
    assert {"select", "plan", "attention", "other", "summaries"} <= set(m.breakdown_ms)
    assert 0 < m.kv[0].reduction_sparse < 1 and m.kv[0].read_sparse == m.kv[1].read_sparse


def test_llama3_rope_scaling_matches_transformers() -> None:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(hidden_size=256, num_attention_heads=4, head_dim=64, rope_parameters=rope,
                         max_position_embeddings=131072)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    torch.testing.assert_close(ModelSpec.from_config(config).inv_freq(), expected)


def test_bad_inputs_give_clear_errors() -> None:
    with pytest.raises(UsageError, match="supports the llama and qwen2 families"):
        FastModel.from_hf(get_tiny("gemma3"))
    from transformers import LlamaConfig

    yarn = LlamaConfig(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                        "original_max_position_embeddings": 2048})
    with pytest.raises(UsageError, match="RoPE scaling 'yarn' is not supported"):
        ModelSpec.from_config(yarn)
    dec = _decoder("llama", Dense(), max_tokens=40)  # capacity 40 tokens (5 blocks of 8)
    with pytest.raises(UsageError, match="holds 40"):
        dec.prefill(_ids(length=41))
    dec.prefill(_ids(length=39))
    dec.step()
    with pytest.raises(UsageError, match="would reach 41 tokens"):
        dec.step()
    with pytest.raises(UsageError, match="needs a draft"):
        FastDecoder(FastModel.from_hf(get_tiny("llama")), SpecAttn(), TorchBackend(), CFG, max_tokens=64)
    with pytest.raises(UsageError, match="layer map"):
        SelfDraft.build(DRAFT_SPEC, N_LAYERS, [0, 0, 5, 1])
    with pytest.raises(UsageError, match="has 2 entries"):
        parse_layer_map("0,1", N_LAYERS, 2)


def test_self_draft_layers_and_default_map() -> None:
    draft = SelfDraft.build("0,2", 6)
    assert draft.layer_map == nearest_layer_map([0, 2], 6) == [0, 0, 1, 1, 1, 1]
    assert SelfDraft.build("0-3", 6, [0, 0, 1, 1, 1, 1]).run_layers(dense_layers=2) == [0, 1]
    assert parse_layer_map("0, 0,1,1,2,2", 6, 3) == [0, 0, 1, 1, 2, 2]


def test_bench_decode_smoke(tmp_path) -> None:
    from sparsebench.bench.decode import main

    assert main(["--out", str(tmp_path), "--random-weights", "tiny", "--device", "cpu", "--contexts", "64",
                 "--batch", "1", "--steps", "2", "--repeats", "1",
                 "--policies", "dense,quest:budget_frac=0.3,specattn:p=0.9"]) == 0
    report = json.loads((tmp_path / "bench_decode.json").read_text())
    rows = {r["policy"]: r for r in report["rows"]}
    assert set(rows) == {"dense", "quest:budget_frac=0.3", "specattn:p=0.9"}
    assert rows["dense"]["kv_reduction_sparse"] == 0 and rows["quest:budget_frac=0.3"]["kv_reduction_sparse"] > 0.4
    assert rows["quest:budget_frac=0.3"]["bytes_per_step"]["summaries"] > 0
    assert rows["specattn:p=0.9"]["bytes_per_step"]["draft"] > 0
    assert "random weights" in report["meta"]["weights"] and report["meta"]["draft"]["layer_map_source"]


# ---- GPU only ---------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
#: A small shape the Triton backend serves (head dim 64).
GPU_SPEC = ModelSpec(family="llama", vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=4,
                     num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                     tie_embeddings=False)


def _graph_safe_backends() -> list[str]:
    """Registered CUDA-graph-safe backends that serve the GPU shape, ``--backend auto``'s order first."""
    if not torch.cuda.is_available():
        return []
    names = [n for n in AUTO_ORDER if n in registry().backends]
    names += sorted(n for n in registry().backends if n not in AUTO_ORDER)
    return [n for n in names if registry().backends[n].capabilities.cuda_graph_safe
            and not registry().backends[n].reasons_to_reject(device="cuda", dtype=torch.bfloat16, head_dim=64)]


@needs_cuda
@pytest.mark.parametrize("backend_name", ["triton", "cuda"])
@pytest.mark.parametrize("policy", [Dense(), Quest(budget=64), StreamingLLM(window_tokens=64)],
                         ids=lambda p: p.name)
def test_cuda_graphs_decode_the_eager_tokens(policy: Policy, backend_name: str) -> None:
    """Budgets in tokens (not fractions), so the frozen host n_tokens changes at most a sliding window."""
    if backend_name not in _graph_safe_backends():
        pytest.skip(f"backend {backend_name!r} is not registered or cannot serve bf16, head dim 64 here")
    cls = registry().backends[backend_name]
    model = FastModel.random(GPU_SPEC, device="cuda", dtype=torch.bfloat16)
    results = []
    for graphs in (True, False):
        dec = FastDecoder(model, policy, cls(), EngineConfig(), batch=2, max_tokens=600)
        dec.fill_random(500, seed=1)
        results.append(measure(dec, 40, cuda_graphs=graphs, repeats=1))
    graph_run, eager_run = results
    assert graph_run.mode == "cuda-graphs", graph_run.notes
    assert eager_run.mode == "eager"
    assert torch.equal(graph_run.tokens, eager_run.tokens)
    # A graph keeps the host n_tokens of its block's first step: a window that slides with the context
    # (StreamingLLM) may keep one more block per step than eager decoding; token budgets (Quest) cannot drift.
    slack = 0 if policy.name != "streamingllm" else 40 * 2 * 16  # steps x kv heads x block size, per sequence
    for layer, (read, dense, kind) in eager_run.kv[0].per_layer.items():
        g_read, g_dense, g_kind = graph_run.kv[0].per_layer[layer]
        assert (g_dense, g_kind) == (dense, kind)
        assert 0 <= g_read - read <= slack
    assert "inside the CUDA graphs" in graph_run.breakdown_source or graph_run.notes


class _Syncing(Quest):
    name = "syncing"

    def select(self, ctx: SelectionContext) -> Selection:
        int(ctx.query.sum().item())  # a host synchronisation: not allowed in a graph
        return super().select(ctx)


@needs_cuda
def test_graph_fallbacks_name_the_culprit() -> None:
    model = FastModel.random(GPU_SPEC, device="cuda", dtype=torch.bfloat16)
    dec = FastDecoder(model, Dense(), TorchBackend(), EngineConfig(), max_tokens=300)
    dec.fill_random(256)
    m = measure(dec, 4, repeats=1)
    assert m.mode == "eager" and any("backend 'torch' is not CUDA-graph safe" in n for n in m.notes)
    backends = _graph_safe_backends()
    if not backends:
        pytest.skip("no registered CUDA-graph-safe backend")
    dec = FastDecoder(model, _Syncing(budget=64), registry().backends[backends[0]](), EngineConfig(), max_tokens=300)
    dec.fill_random(256)
    m = measure(dec, 4, repeats=1)
    assert m.mode == "eager" and any("policy 'syncing' (select) synchronizes" in n for n in m.notes), m.notes


@needs_cuda
@pytest.mark.parametrize("alias", ["smollm2-135m", "qwen2.5-coder-0.5b"])
def test_real_alias_logits_match_hf_on_gpu(alias: str) -> None:
    from sparsebench.models import load_model
    from sparsebench.models.registry import is_cached

    if not is_cached(alias):
        pytest.skip(f"{alias} is not in the model cache (sparsebench fetch {alias})")
    loaded = load_model(alias, dtype=torch.float32, device="cuda", progress=False)
    ids = torch.randint(0, 1000, (1, 72), generator=torch.Generator().manual_seed(0)).cuda()
    with torch.no_grad():
        ref = loaded.model(ids).logits
    dec = FastDecoder(FastModel.from_hf(loaded.model), Dense(), TorchBackend(), EngineConfig(), max_tokens=80)
    torch.testing.assert_close(dec.prefill(ids[:, :64]), ref[:, 63], rtol=2e-3, atol=2e-3)
    for pos in range(64, 72):
        torch.testing.assert_close(dec.step(ids[:, pos : pos + 1]), ref[:, pos], rtol=2e-3, atol=2e-3)


def test_presets_are_supported_shapes() -> None:
    for name, spec in PRESETS.items():
        assert spec.family in ("llama", "qwen2") and spec.num_heads % spec.num_kv_heads == 0, name
    # 8.03B parameters less the embedding table (a step gathers only B of its rows), 2 bytes each.
    assert PRESETS["llama-3-8b"].weight_bytes(torch.bfloat16) == pytest.approx(15.01e9, rel=0.005)


@needs_cuda
def test_compiled_layers_match_eager_layers() -> None:
    """torch.compile fuses the norm/RoPE/MLP halves of each layer; the logits must not change beyond bf16."""
    model = FastModel.random(GPU_SPEC, device="cuda", dtype=torch.bfloat16)
    backend = registry().backends["torch"]()
    logits = []
    for compiled in (False, True):
        if compiled:
            model.compile_layers()
        dec = FastDecoder(model, Dense(), backend, EngineConfig(), batch=2, max_tokens=300)
        dec.fill_random(200, seed=3)
        logits.append(dec.step(torch.tensor([[5], [7]], device="cuda")).float())
    err = (logits[0] - logits[1]).norm() / logits[0].norm()
    assert err < 2e-2
