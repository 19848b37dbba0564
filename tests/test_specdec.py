"""Speculative decoding: exact greedy output, correct rollback, the rejection scheme, metrics and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import get_tiny
from transformers import AutoModelForCausalLM

from sparsebench.cli import main
from sparsebench.engine import EngineConfig
from sparsebench.errors import UsageError
from sparsebench.evals.generation import generate
from sparsebench.kernels.base import Capabilities
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models import ByteTokenizer, build_self_draft
from sparsebench.models.tiny import tiny_config
from sparsebench.policies import Dense, Quest, SpecAttn, StreamingLLM
from sparsebench.selection import Selection
from sparsebench.specattn.capture import Draft
from sparsebench.specdec import SpeculationConfig, SpeculativeDecoder, accept_greedy, accept_sampling

CFG = EngineConfig(block_size=8, dense_layers=1)
PROMPT_LEN, NEW = 20, 28  # tokens 20 .. 47 cross several 8-token blocks, and verified windows straddle them

_MODELS: dict[tuple[str, int], torch.nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread while this module runs: its matrices are tiny, so a second thread only adds
    synchronisation, which costs up to 50x when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(arch: str, seed: int) -> torch.nn.Module:
    """A tiny random model whose greedy output varies (untied head) with peaked logits (scaled head).

    Why not conftest's tiny models: with tied embeddings a random model repeats its last token forever,
    so every draft is always right and rejection would never be exercised; a scaled head keeps the
    argmax margins far above float noise, so token-for-token comparisons are meaningful.
    """
    if (arch, seed) not in _MODELS:
        config = tiny_config(arch)
        config.tie_word_embeddings = False
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    param.mul_(4.0)
            model.lm_head.weight.mul_(30.0)
        _MODELS[arch, seed] = model
    return _MODELS[arch, seed]


def _prompt(seed: int = 0, length: int = PROMPT_LEN) -> list[int]:
    return torch.randint(0, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def _self_draft(model: torch.nn.Module, spec: str) -> Draft:
    draft = build_self_draft(model, spec)
    n_draft = len(draft.draft_source_layers)
    return Draft(draft, [min(i, n_draft - 1) for i in range(model.config.num_hidden_layers)], f"self:{spec}")


def _separate_draft(model: torch.nn.Module) -> Draft:
    return Draft(model, [min(i, model.config.num_hidden_layers - 1) for i in range(4)], "separate")


_GREEDY: dict[tuple[int, tuple[int, ...], int], list[int]] = {}


@torch.no_grad()
def _plain_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Reference: the target alone, full recomputation each step, its own (SDPA) attention."""
    key = (id(model), tuple(prompt), n)
    if key not in _GREEDY:
        ids = torch.tensor([prompt])
        for _ in range(n):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        _GREEDY[key] = ids[0, len(prompt) :].tolist()
    return _GREEDY[key]


def _decoder(model: torch.nn.Module, draft: Draft, policy, **speculation) -> SpeculativeDecoder:
    return SpeculativeDecoder(model, draft, policy, TorchBackend(), CFG, SpeculationConfig(**speculation))


# --------------------------------------------------------------------------------------------------
# greedy exactness


def _check_greedy(model: torch.nn.Module, draft: Draft, gamma: int) -> list[float]:
    """Dense and specattn at p = 1.0 both give the target's own greedy output; returns their acceptance rates."""
    prompt = _prompt()
    expected = _plain_greedy(model, prompt, NEW)
    rates = []
    for policy in (Dense(), SpecAttn(p=1.0)):
        out = _decoder(model, draft, policy, gamma=gamma).generate(prompt, max_new_tokens=NEW, stop_ids=set())
        assert out.ids == expected, policy.name
        assert out.kv.reduction_sparse == 0.0
        rates.append(out.acceptance_rate)
    assert rates[0] == rates[1]  # the policy changes what the target reads, not what the draft proposes
    return rates


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_greedy_speculation_equals_plain_greedy(gamma: int) -> None:
    """A self-draft that is sometimes right: rounds end in every way (early and late rejections, bonus)."""
    rate = _check_greedy(_model("llama", 1), _self_draft(_model("llama", 1), "0-2"), gamma)[0]
    assert 0 < rate < 1


def test_greedy_with_a_separate_draft_model() -> None:
    """Another model (qwen2, other weights) as the draft: nearly every proposal is rejected."""
    rate = _check_greedy(_model("llama", 1), _separate_draft(_model("qwen2", 2)), 4)[0]
    assert rate < 0.5


def test_greedy_with_the_target_as_draft_accepts_everything() -> None:
    model = _model("qwen2", 1)
    assert _check_greedy(model, _self_draft(model, "all"), 4) == [1.0, 1.0]


def test_gemma3_sliding_window_layers_roll_back() -> None:
    """Gemma 3's sliding-window caches (window 24) must roll back past their window too."""
    model = get_tiny("gemma3")
    prompt = _prompt(3)
    expected = _plain_greedy(model, prompt, NEW)
    decoder = _decoder(model, _self_draft(model, "0-2"), SpecAttn(p=1.0), gamma=4)
    out = decoder.generate(prompt, max_new_tokens=NEW, stop_ids=set())
    assert out.ids == expected
    assert 0 < out.acceptance_rate < 1  # rejections happened, so rollbacks did


@pytest.mark.parametrize("policy", [SpecAttn(p=0.3), StreamingLLM(sink_tokens=8, window_tokens=16)],
                         ids=["specattn", "streamingllm"])
def test_sparse_verification_equals_one_token_decoding(policy) -> None:
    """Each verified row selects what that token selects in one-token decoding, and attends causally.

    So greedy speculation under a sparse policy reproduces greedy generation under the same policy
    (:func:`sparsebench.evals.generation.generate`, one token per step): the per-row selections, the
    causal mask inside the window and the draft's per-token attention all line up.
    """
    model = _model("llama", 1)
    draft = _self_draft(model, "0-2")
    prompt = _prompt(1, 60)
    lockstep = generate(model, ByteTokenizer(), prompt, policy, TorchBackend(), CFG, max_new_tokens=NEW,
                        draft=draft, stop_ids=set())
    out = _decoder(model, draft, policy, gamma=3).generate(prompt, max_new_tokens=NEW, stop_ids=set())
    assert out.ids == lockstep.ids
    assert out.ids != _plain_greedy(model, prompt, NEW)  # the policy really dropped blocks that mattered
    assert out.kv.reduction_sparse > 0.1
    assert 0 < out.acceptance_rate < 1


# --------------------------------------------------------------------------------------------------
# rollback


def _block_min(keys: torch.Tensor, block: int) -> torch.Tensor:
    b, h, t, d = keys.shape
    n = -(-t // block)
    padded = torch.nn.functional.pad(keys, (0, 0, 0, n * block - t), value=float("inf"))
    return padded.view(b, h, n, block, d).amin(3)


def test_rollback_leaves_caches_as_a_fresh_prefill() -> None:
    """After rejections, both caches (and Quest's block summaries) equal those of the committed tokens.

    Quest reads no draft attention, so the draft keeps the textbook order: after a round that accepted
    everything it has not yet seen the last proposal (it feeds it with the next round's first token).
    """
    model = _model("llama", 1)
    draft = _self_draft(model, "0-2")
    prompt = _prompt(2)
    # Full budget: Quest keeps its summaries (which must roll back too) but reads every block, so the
    # caches must equal a dense prefill's in every layer.
    decoder = _decoder(model, draft, Quest(budget_frac=1.0), gamma=4)
    out = decoder.generate(prompt, max_new_tokens=NEW, stop_ids=set())
    assert 0 < out.acceptance_rate < 1
    committed = torch.tensor([prompt + out.ids[:-1]])  # every token but the last has been fed
    assert decoder.cache.get_seq_length() == committed.shape[1]
    assert decoder.draft_cache.get_seq_length() in (committed.shape[1] - 1, committed.shape[1])
    with torch.no_grad():
        fresh = model(committed, use_cache=True).past_key_values
        fresh_draft = draft.model(committed, use_cache=True).past_key_values
    for got, ref in ((decoder.cache, fresh), (decoder.draft_cache, fresh_draft)):
        n = got.get_seq_length()
        for layer_got, layer_ref in zip(got.layers, ref.layers, strict=True):
            torch.testing.assert_close(layer_got.keys, layer_ref.keys[:, :, :n], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(layer_got.values, layer_ref.values[:, :, :n], rtol=1e-4, atol=1e-4)
    summaries = decoder.router.summaries
    for layer in range(CFG.dense_layers, 4):
        expected = _block_min(decoder.cache.layers[layer].keys, CFG.block_size)
        torch.testing.assert_close(summaries.view(layer)["key_min"], expected)


# --------------------------------------------------------------------------------------------------
# acceptance rules and metrics


def test_greedy_rule_keeps_the_matching_prefix() -> None:
    logits = torch.full((4, 5), -1.0)
    for row, best in enumerate([2, 3, 0, 4]):
        logits[row, best] = 1.0
    assert [(n, int(t)) for n, t in [accept_greedy(logits, torch.tensor(d)) for d in
                                      ([2, 3, 0], [2, 1, 0], [1, 3, 0])]] == [(3, 4), (1, 3), (0, 2)]


def test_sampling_rule_emits_the_target_distribution() -> None:
    """Drafts drawn from q, very unlike p: the emitted tokens still follow p (chi-square on 4 tokens)."""
    p = torch.tensor([[0.1, 0.6, 0.1, 0.2], [0.4, 0.1, 0.4, 0.1], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.05, 0.05, 0.1, 0.8]])
    gen = torch.Generator().manual_seed(0)
    trials = 8000
    first = torch.zeros(4)
    second = torch.zeros(4)  # the second emitted token, in rounds that accepted the first draft
    for _ in range(trials):
        drafted = torch.stack([torch.multinomial(q[i], 1, generator=gen)[0] for i in range(2)])
        accepted, nxt = accept_sampling(p, q, drafted, gen)
        tokens = [*drafted[:accepted].tolist(), int(nxt)]
        first[tokens[0]] += 1
        if accepted >= 1:
            second[tokens[1]] += 1
    for counts, dist in ((first, p[0]), (second, p[1])):
        expected = counts.sum() * dist
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 16.3, (counts, expected)  # 3 degrees of freedom, p = 0.001


def test_sampling_with_the_target_as_draft_accepts_everything_and_is_seeded() -> None:
    model = _model("llama", 1)
    draft = _self_draft(model, "all")
    prompt = _prompt(4)
    outs = [_decoder(model, draft, SpecAttn(p=1.0), gamma=4, sampling=True, seed=seed, temperature=0.7)
            .generate(prompt, max_new_tokens=24, stop_ids=set()) for seed in (5, 5, 6)]
    assert all(o.acceptance_rate == 1.0 for o in outs)  # p == q: min(1, p/q) = 1
    assert outs[0].ids == outs[1].ids != outs[2].ids


class _ScriptedDecoder(SpeculativeDecoder):
    """The draft (the target itself) proposes a wrong token as the third proposal of every round."""

    def propose(self, logits: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        token, dist = super().propose(logits, index)
        return ((token + 1) % logits.shape[-1] if index == 2 else token), dist


def test_acceptance_metrics_on_a_known_pattern() -> None:
    """gamma 4, third proposal always wrong: rounds commit 2 drafts + the correction.

    16 new tokens = the prefill's token + 5 rounds of 3: four rounds propose 4 and accept 2; the last
    proposes only 2 (accepting both and the bonus fills the budget exactly).
    """
    model = _model("llama", 1)
    decoder = _ScriptedDecoder(model, _self_draft(model, "all"), SpecAttn(p=1.0), TorchBackend(), CFG,
                               SpeculationConfig(gamma=4))
    prompt = _prompt(5)
    out = decoder.generate(prompt, max_new_tokens=16, stop_ids=set())
    assert out.ids == _plain_greedy(model, prompt, 16)
    assert out.rounds == [(4, 2)] * 4 + [(2, 2)]
    m = out.metrics()
    assert (m["proposed"], m["accepted"], m["rounds"]) == (18, 10, 5)
    assert m["acceptance_rate"] == pytest.approx(10 / 18)
    assert m["mean_accepted"] == pytest.approx(2.0)
    assert m["tokens_per_round"] == pytest.approx(3.0)
    assert m["accepted_per_round"] == [2, 2, 2, 2, 2]
    timing = m["timing_seconds"]
    assert set(timing) == {"draft", "selection", "target_attention", "rest", "total"} and m["timing_method"] == "wall"
    assert all(v >= 0 for v in timing.values()) and timing["draft"] + timing["selection"] <= timing["total"]
    assert m["tokens_per_s"] > 0


# --------------------------------------------------------------------------------------------------
# the multi-row torch backend


@pytest.mark.parametrize("seed", range(3))
def test_multi_row_attention_equals_each_row_alone(seed: int) -> None:
    """Row r of a per-row selection = that row attending alone over the cache up to its own position."""
    gen = torch.Generator().manual_seed(seed)
    b, hkv, group, d, block, rows = 1 + seed % 2, 2, 2, 16, 4, 3 + seed
    n_tokens = 21 + 5 * seed
    q = torch.randn(b, hkv * group, rows, d, generator=gen)
    k = torch.randn(b, hkv, n_tokens, d, generator=gen)
    v = torch.randn(b, hkv, n_tokens, d, generator=gen)
    selections = []
    for r in range(rows):
        n_blocks = -(-(n_tokens - rows + 1 + r) // block)
        mask = torch.rand(b, hkv, n_blocks, generator=gen) < 0.5
        mask[..., -1] = True
        selections.append(Selection(mask))
    stacked = Selection.stack_rows(selections, -(-n_tokens // block))
    res = TorchBackend().attend(q, k, v, stacked, block_size=block, scaling=d**-0.5)
    for r, sel in enumerate(selections):
        n_row = n_tokens - rows + 1 + r
        alone = TorchBackend().attend(q[:, :, r : r + 1], k[:, :, :n_row], v[:, :, :n_row], sel, block_size=block,
                                      scaling=d**-0.5)
        torch.testing.assert_close(res.out[:, :, r : r + 1], alone.out, rtol=1e-5, atol=1e-5)
    union = stacked.mask.any(2).repeat_interleave(block, dim=-1)[..., :n_tokens]
    assert res.tokens_read.tolist() == union.sum(-1).tolist()


# --------------------------------------------------------------------------------------------------
# bad input


class _SingleRowBackend(TorchBackend):
    name = "single-row"
    capabilities = Capabilities(devices=frozenset({"cpu"}), dtypes=frozenset({torch.float32}))


def test_bad_configurations_are_usage_errors() -> None:
    model = _model("llama", 1)
    draft = _self_draft(model, "0-2")
    with pytest.raises(UsageError, match="--gamma must be >= 1"):
        SpeculationConfig(gamma=0)
    with pytest.raises(UsageError, match="--temperature must be > 0"):
        SpeculationConfig(sampling=True, temperature=0.0)
    with pytest.raises(UsageError, match="cannot verify several query rows"):
        SpeculativeDecoder(model, draft, Dense(), _SingleRowBackend(), CFG)
    small_vocab = tiny_config("llama")
    small_vocab.vocab_size = 256
    with pytest.raises(UsageError, match="vocabulary of 256 tokens"):
        SpeculativeDecoder(model, Draft(AutoModelForCausalLM.from_config(small_vocab), [0] * 4, "other"), Dense(),
                           TorchBackend(), CFG)
    decoder = _decoder(model, draft, Dense())
    with pytest.raises(UsageError, match="exceeds the model's 4096 positions"):
        decoder.generate(_prompt(), max_new_tokens=4096)
    with pytest.raises(UsageError, match="batch size 1"):
        decoder.generate([_prompt(), _prompt(1)], max_new_tokens=4)


# --------------------------------------------------------------------------------------------------
# command line

TINY = ["--model", "tiny:llama", "--no-progress", "--block-size", "8", "--dense-layers", "1"]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_prints_text_and_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gen.jsonl"
    code, stdout, err = _cli(capsys, "generate", "--policy", "specattn", "--p", "0.97", "--draft", "self:0-2",
                             "--gamma", "3", "--max-new-tokens", "12", "--prompt", "The sea was calm that night.",
                             "--out", str(out), *TINY)
    assert code == 0, err
    assert "acceptance" in stdout and "KV reduction" in stdout and "layer map" in err
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["policy_label"] == "specattn:p=0.97" and row["speculation"]["gamma"] == 3
    assert len(row["ids"]) == 12 and row["text"] in stdout
    assert row["metrics"]["rounds"] >= 3 and row["draft"]["name"] == "self:0-2"


def test_generate_eval_over_documents(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.jsonl"
    text = text_file.read_text()
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": text[i * 40 :]}) + "\n" for i in range(3)))
    out = tmp_path / "eval.jsonl"
    code, stdout, err = _cli(capsys, "generate", "--policy", "dense", "--draft", "tiny:qwen2", "--eval",
                             "--dataset", str(docs), "--docs", "2", "--context-tokens", "64", "--max-new-tokens", "6",
                             "--sampling", "--temperature", "0.8", "--seed", "3", "--out", str(out), *TINY)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["eval", "eval"] and all(r["prompt"]["tokens"] == 64 for r in rows)
    assert rows[0]["speculation"] == {"gamma": 4, "sampling": True, "temperature": 0.8, "seed": 3}
    assert "ALL" in stdout


def _other_tokenizer_model(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    get_tiny("llama").save_pretrained(path)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "hello", "world"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return path


BAD = {
    "gamma 0": (["--gamma", "0"], "--gamma must be >= 1"),
    "too many tokens": (["--max-new-tokens", "5000"], "exceeds the model's 4096 positions"),
    "eval with prompt": (["--eval"], "--eval runs over dataset documents"),
    "temperature without sampling": (["--temperature", "0.5"], "--temperature applies to --sampling only"),
    # A draft with another tokenizer runs greedy cross-tokenizer speculation (tests/test_crosstok_engine.py);
    # sampling needs the draft's probability of each target token, which it does not have.
    "other tokenizer, sampling": (["--draft", "OTHER", "--sampling"], "only greedy decoding is supported"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_generate_bad_input_one_line_exit_2(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, expected = BAD[case]
    extra = [str(_other_tokenizer_model(tmp_path / "other")) if a == "OTHER" else a for a in extra]
    capsys.readouterr()  # saving the model prints progress; only the command's own output counts
    code, _, err = _cli(capsys, "generate", "--policy", "dense", "--prompt", "hello world", *TINY, *extra)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    # One error line, last, with no traceback (progress lines about loading the draft may come before it).
    errors = [line for line in lines if line.startswith("sparsebench: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    assert expected in errors[0]
