"""Speculative decoding on the fast engine (sparsebench.fastdecode.speculate): exactness against plain greedy
decoding, the fixed acceptance pattern, rollback of both static caches, the benchmark's plumbing, bad input.
CPU tests use a tiny random llama-shaped model with weights scaled up so greedy tokens vary; GPU test skipped
without CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from sparsebench.engine import EngineConfig
from sparsebench.errors import UsageError
from sparsebench.fastdecode import FastDecoder, FastModel, SelfDraft
from sparsebench.fastdecode.model import PRESETS, ModelSpec
from sparsebench.fastdecode.speculate import FastSpeculator, SpecDraft, parse_accept_pattern
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.policies import Dense, Quest, SpecAttn

CFG = EngineConfig(block_size=8, dense_layers=1)
SPEC = PRESETS["tiny"]


def _model(seed: int, like: FastModel | None = None, noise: float = 0.0, spec: ModelSpec = SPEC,
           device: str = "cpu", dtype: torch.dtype = torch.float32) -> FastModel:
    """Random weights with std 0.16 (the preset's 0.02 gives near-uniform logits and argmax ties); with ``like``,
    a noisy copy of that model: a draft that agrees with it on some tokens, so acceptance varies."""
    model = FastModel.random(spec, device=device, dtype=dtype, seed=seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for (name, p), ref in zip(model.named_parameters(),
                                  like.parameters() if like is not None else model.parameters(), strict=True):
            if name.endswith("norm.weight"):
                continue
            if like is None:
                p.mul_(8.0)
            else:
                p.copy_(ref + noise * ref.std() * torch.randn(ref.shape, generator=gen, device=device, dtype=dtype))
    return model


TARGET = _model(0)


def gpu_pair() -> tuple[FastModel, SpecDraft, torch.Tensor]:
    """A small fp32 target on CUDA, a noisy copy of it as the draft (acceptance varies), and a 300-token prompt:
    the GPU speculation tests' shared setup (TF32 off, so one-row and multi-row paths round alike)."""
    spec = ModelSpec(family="llama", vocab_size=1024, hidden_size=256, intermediate_size=512, num_layers=4,
                     num_heads=4, num_kv_heads=2, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                     tie_embeddings=False)
    torch.backends.cuda.matmul.allow_tf32 = False
    target = _model(0, spec=spec, device="cuda")
    draft = SpecDraft.separate(_model(1, target, 0.02, spec=spec, device="cuda"), target, "noisy copy")
    return target, draft, torch.randint(0, 1024, (1, 300), generator=torch.Generator().manual_seed(1))
PROMPT = torch.randint(0, SPEC.vocab_size, (1, 30), generator=torch.Generator().manual_seed(0))


def _plain(n: int, target: FastModel = TARGET, prompt: torch.Tensor = PROMPT) -> list[int]:
    dec = FastDecoder(target, Dense(), TorchBackend(), CFG, max_tokens=prompt.shape[1] + n + 2)
    first = dec.prefill(prompt).argmax(-1)
    return [int(first), *dec.generate(n - 1)[0].tolist()]


def _drafts() -> dict[str, SpecDraft]:
    return {"separate": SpecDraft.separate(_model(1, TARGET, noise=0.02), TARGET, "noisy copy"),
            "self": SpecDraft.self_draft(TARGET, SelfDraft.build("first-half", SPEC.num_layers))}


DRAFTS = _drafts()
EXPECTED = _plain(14)


@pytest.mark.parametrize(("kind", "gamma", "last_row"), [("separate", 1, "reuse"), ("separate", 4, "reuse"),
                                                      ("separate", 4, "extra-step"), ("self", 4, "reuse")])
def test_greedy_speculation_equals_plain_greedy(kind: str, gamma: int, last_row: str) -> None:
    """Dense and SpecAttn p=1.0 verification give plain greedy decoding's tokens, token for token, whichever way
    the last row gets its draft attention; the draft runs gamma steps a round (+1 for SpecAttn's extra step)."""
    accepted = set()
    for policy in (Dense(), SpecAttn(p=1.0)):
        spec = FastSpeculator(TARGET, DRAFTS[kind], policy, TorchBackend(), CFG, gamma=gamma, max_tokens=64,
                              last_row=last_row)
        assert spec.prefill(PROMPT) == EXPECTED[0]
        assert spec.generate(len(EXPECTED)) == EXPECTED, f"{kind} draft, {policy.label()}, gamma {gamma}"
        accepted |= {r.accepted for r in spec.records}
        extra = int(policy.name == "specattn" and last_row == "extra-step")
        proposing = [sum(head for _, head in r.draft_steps) for r in spec.records]
        assert proposing == [gamma] * len(spec.records)
        first = spec.records[0].draft_steps  # the first round has no catch-up step
        assert len(first) == gamma + extra and spec.draft_steps == gamma + extra
    assert len(accepted) > 1 or kind == "self", f"acceptance never varied ({accepted}): the test draft is too weak"


@pytest.mark.parametrize("last_row", ["reuse", "extra-step"])
def test_batched_row_selection_equals_per_row_selection(last_row: str) -> None:
    """SpecAttn's rows stacked in one policy call select what one call per row selects (same reads, tokens)."""
    runs = []
    for batched in (True, False):
        spec = FastSpeculator(TARGET, DRAFTS["self"], SpecAttn(p=0.8), TorchBackend(), CFG, gamma=3, max_tokens=64,
                              batched_rows=batched, last_row=last_row)
        spec.prefill(PROMPT)
        runs.append((spec.generate(8), spec.kv_summary().per_layer))
    assert runs[0] == runs[1]
    assert 0 < runs[0][1][CFG.dense_layers][0] < runs[0][1][CFG.dense_layers][1]  # sparse, not empty


def test_quest_summaries_stay_exact_through_rounds() -> None:
    """Quest in verification: after rounds whose rows cross block boundaries, the summaries of every block below
    the committed length equal a recompute from the cache (one refresh per block the rows wrote into; the block
    holding the length may still hold rejected proposals' keys until the next round overwrites them), and full
    budget is plain greedy."""
    spec = FastSpeculator(TARGET, DRAFTS["separate"], Quest(budget_frac=0.5), TorchBackend(), CFG, gamma=4,
                          max_tokens=80)
    spec.prefill(PROMPT)
    spec.generate(20)
    cache, n = spec.cache, spec.n_tokens
    fresh = {layer: {name: t.clone() for name, t in parts.items()} for layer, parts in cache.summaries.items()}
    for layer in cache.summaries:
        cache.refresh_summaries(layer, 0, n)
    blocks = n // CFG.block_size
    assert blocks >= 4
    for layer, parts in cache.summaries.items():
        for name, t in parts.items():
            assert torch.equal(fresh[layer][name][:, :, :blocks], t[:, :, :blocks]), (layer, name)
    full = FastSpeculator(TARGET, DRAFTS["separate"], Quest(budget_frac=1.0), TorchBackend(), CFG, gamma=4,
                          max_tokens=64)
    assert full.prefill(PROMPT) == EXPECTED[0]
    assert full.generate(len(EXPECTED)) == EXPECTED


def test_reused_last_row_gets_the_previous_rows_mass_within_its_blocks() -> None:
    """Under --last-row reuse the last verified row's draft mass is row gamma - 1's, zero past the blocks that row
    saw, in both selection paths (the row's own newest block is still read: it is always selected)."""
    gamma, bs = 3, CFG.block_size
    spec = FastSpeculator(TARGET, DRAFTS["separate"], SpecAttn(p=0.8), TorchBackend(), CFG, gamma=gamma,
                          max_tokens=80, batched_rows=False)
    # The prompt ends one token before a block boundary: row gamma sees one more block than row gamma - 1.
    prompt = torch.randint(0, SPEC.vocab_size, (1, 4 * bs - gamma), generator=torch.Generator().manual_seed(3))
    spec.prefill(prompt)
    spec.rows_mass.fill_(7.0)  # stale values: the reused row must not read any
    spec.round()
    rows = spec._verify_rows
    assert rows[gamma] == rows[gamma - 1] + 1
    layer = CFG.dense_layers
    last, previous = spec._draft_mass(layer, gamma, rows[gamma]), spec._draft_mass(layer, gamma - 1, rows[gamma - 1])
    assert torch.equal(last[..., : rows[gamma - 1]], previous) and torch.all(last[..., rows[gamma - 1] :] == 0)
    spec._verify()  # the batched path's mask of the same round
    spec.batched_rows = True
    spec._verify()
    assert spec._mass_valid is not None and spec._row_valid is not None
    assert torch.equal(spec._mass_valid[gamma], spec._row_valid[gamma - 1])
    assert torch.equal(spec._mass_valid[:gamma], spec._row_valid[:gamma])
    assert "reuses row 2's draft attention" in (spec.last_row_note or "")


def test_fixed_pattern_and_rollback_match_a_fresh_run() -> None:
    """A fixed pattern commits exactly its counts; after it, both caches equal a fresh prefill of the committed
    tokens and greedy continuation equals plain decoding from them (rollback leaves nothing stale)."""
    pattern = parse_accept_pattern("0,3,1,3", 3)
    # p = 1.0: the mass path runs, but the target's keys past layer 0 match a dense prefill's.
    spec = FastSpeculator(TARGET, DRAFTS["separate"], SpecAttn(p=1.0), TorchBackend(), CFG, gamma=3, max_tokens=80,
                          accept_pattern=pattern)
    spec.prefill(PROMPT)
    for _ in range(6):
        spec.round()
    assert [r.accepted for r in spec.records] == [0, 3, 1, 3, 0, 3]
    n = spec.n_tokens
    assert n == PROMPT.shape[1] + sum(a + 1 for a in [0, 3, 1, 3, 0, 3])
    committed = spec.generated_tokens(PROMPT.shape[1], n - PROMPT.shape[1] + 1)
    sequence = torch.cat([PROMPT, torch.tensor([committed[:-1]])], dim=1)  # every token the caches should hold
    fresh = FastSpeculator(TARGET, DRAFTS["separate"], SpecAttn(p=1.0), TorchBackend(), CFG, gamma=3, max_tokens=80)
    assert fresh.prefill(sequence) == committed[-1]  # the pending token is the target's greedy choice
    for got, ref in ((spec.cache, fresh.cache), (spec.draft_cache, fresh.draft_cache)):
        held = min(spec.draft_tokens, n) if got is spec.draft_cache else n
        for layer in range(len(got.keys)):
            torch.testing.assert_close(got.keys[layer][:, :, :held], ref.keys[layer][:, :, :held], rtol=1e-4,
                                       atol=1e-4)
            torch.testing.assert_close(got.values[layer][:, :, :held], ref.values[layer][:, :, :held], rtol=1e-4,
                                       atol=1e-4)
    spec.pattern = None  # continue greedily: the same tokens as plain decoding from the committed sequence
    continued = spec.generate(n - PROMPT.shape[1] + 9)[-8:]  # the 8 tokens after the pending one
    assert continued == _plain(9, prompt=sequence)[1:]


def test_bad_input_is_a_clear_usage_error() -> None:
    draft = DRAFTS["self"]
    with pytest.raises(UsageError, match="--gamma must be >= 1"):
        FastSpeculator(TARGET, draft, Dense(), TorchBackend(), CFG, gamma=0, max_tokens=64)
    other = FastModel.random(ModelSpec(**{**SPEC.__dict__, "vocab_size": 600}), device="cpu", dtype=torch.float32)
    with pytest.raises(UsageError, match="must share the target's tokenizer"):
        SpecDraft.separate(other, TARGET, "other")
    with pytest.raises(UsageError, match="must share the target's tokenizer"):
        FastSpeculator(TARGET, SpecDraft(other, [0], [0] * SPEC.num_layers, "other", False), Dense(), TorchBackend(),
                       CFG, gamma=2, max_tokens=64)
    with pytest.raises(UsageError, match="between 0 and --gamma 2"):
        parse_accept_pattern("1,3", 2)
    with pytest.raises(UsageError, match="--last-row 'last'"):
        FastSpeculator(TARGET, draft, SpecAttn(), TorchBackend(), CFG, gamma=2, max_tokens=64, last_row="last")
    from sparsebench.bench.specdec import main

    with pytest.raises(UsageError, match="--gamma must be >= 1"):
        main(["--out", "/tmp/unused", "--dry-run", "--gamma", "0"])


def test_bench_specdec_dry_run(tmp_path) -> None:
    from sparsebench.bench.specdec import main

    assert main(["--out", str(tmp_path), "--dry-run", "--contexts", "48", "--rounds", "2", "--steps", "2"]) == 0
    report = json.loads((tmp_path / "bench_specdec.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert set(rows) == {"no speculation (dense)", "speculation, dense", "speculation, specattn p=0.97",
                         "speculation, specattn p=0.97, StreamingLLM draft (32)"}
    assert report["meta"]["accept_pattern"] == [3, 4, 2, 4] and "FIXED pattern" in report["meta"]["acceptance"]
    spec = rows["speculation, specattn p=0.97"]
    assert spec["accepted_per_round"] == [3, 4] and spec["tokens_per_round"] == 4.5
    assert spec["bytes_per_pass"]["draft"] > 0 and spec["bound_tokens_per_s"] > 0
    assert rows["speculation, dense"]["kv_reduction_sparse"] == 0
    assert rows["speculation, specattn p=0.97, StreamingLLM draft (32)"]["kv_reduction_sparse"] > 0
    assert spec["vs_no_spec"]["bound"] > 0 and spec["vs_dense_spec"]["measured_over_bound"] > 0
    assert report["meta"]["last_row"] == "reuse" and spec["draft_mass"] == "torch"
    assert "reuses row 3's draft attention" in spec["last_row"] and rows["speculation, dense"]["last_row"] is None
    md = (tmp_path / "bench_specdec.md").read_text()
    assert "SpecAttn rows (--last-row reuse): the last verified row" in md


def test_bench_specdec_real_model_with_a_separate_draft(tmp_path) -> None:
    """``--model`` with a separate draft sharing its tokenizer (here the same tiny model, so every proposal is
    the target's own greedy token): greedy acceptance is measured, not patterned, and is 100%."""
    from sparsebench.bench.specdec import main

    assert main(["--out", str(tmp_path), "--model", "tiny:llama", "--draft", "tiny:llama", "--contexts", "48",
                 "--rounds", "2", "--steps", "2", "--repeats", "1", "--device", "cpu", "--data-source", "offline"]) == 0
    report = json.loads((tmp_path / "bench_specdec.json").read_text())
    assert report["meta"]["draft"] == "tiny:llama" and report["meta"]["layer_map_source"].startswith("calibrated")
    spec = [r for r in report["rows"] if r["row"].startswith("speculation")]
    assert spec and all(r["acceptance_rate"] == 1.0 for r in spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graphs", [True, False])
def test_triton_speculation_at_full_budget_reproduces_greedy_on_gpu(graphs: bool) -> None:
    """The Triton backend's multi-row verification (CUDA graphs and eager) gives plain greedy tokens at p=1.0
    (fp32 so that the one-row and multi-row paths cannot round an argmax differently)."""
    from sparsebench.kernels.triton_backend import TritonBackend

    if TritonBackend.reasons_to_reject(device="cuda", dtype=torch.float32, head_dim=64):
        pytest.skip("the Triton backend cannot serve fp32, head dim 64 here")
    target, draft, prompt = gpu_pair()
    config = EngineConfig()
    dec = FastDecoder(target, Dense(), TritonBackend(), config, max_tokens=400)
    expected = [int(dec.prefill(prompt).argmax(-1)), *dec.generate(39)[0].tolist()]
    for policy in (Dense(), SpecAttn(p=1.0)):
        spec = FastSpeculator(target, draft, policy, TritonBackend(), config, gamma=4, max_tokens=400,
                              cuda_graphs=graphs)
        spec.prefill(prompt)
        assert spec.generate(40) == expected, policy.label()
        assert (spec.graphs is not None) == graphs, spec.notes
