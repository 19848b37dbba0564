"""Greedy generation under a policy, the gov_report prompt, ROUGE-L and the gov_report evaluation.

The token-exactness tests use untied tiny llama/qwen2 models: with tied embeddings (the conftest
models) a random llama's greedy output just repeats the last prompt token whatever attention does,
so matching it would prove nothing. The conftest gemma3 does produce varied tokens and is used as is.
"""

from __future__ import annotations

import functools
import sys

import pytest
import torch
from conftest import get_tiny
from transformers import AutoModelForCausalLM, DynamicCache

from sparsebench.data import Document, load_corpus
from sparsebench.data.loaders import NAMED, SAMPLES_DIR
from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.errors import DependencyError, UsageError
from sparsebench.evals import generation
from sparsebench.evals.generation import (
    GOVREPORT_TEMPLATE,
    GenerationResult,
    default_stop_ids,
    evaluate_govreport,
    generate,
    govreport_prompt,
    references_of,
    rouge_l,
    truncate_middle,
)
from sparsebench.hf_attention import cache_kwarg
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models import ByteTokenizer, LoadedModel, build_self_draft
from sparsebench.models.tiny import tiny_config
from sparsebench.policies import Dense, Quest
from sparsebench.policies.specattn import SpecAttn
from sparsebench.specattn.capture import Draft

CFG = EngineConfig(block_size=8, dense_layers=1)
PROMPT_LEN = 72  # > gemma3's 24-token sliding window, 9 blocks of 8
NEW = 12
SEED = 0  # a prompt whose greedy continuation varies for all three models
_UNTIED: dict[str, torch.nn.Module] = {}


def _model(arch: str) -> torch.nn.Module:
    """A tiny model whose greedy tokens depend on attention (untied llama/qwen2; gemma3 from conftest)."""
    if arch == "gemma3":
        return get_tiny(arch)
    if arch not in _UNTIED:
        cfg = tiny_config(arch)
        cfg.tie_word_embeddings = False
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():  # peaked attention, as in sparsebench.models.tiny
            for name, param in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    param.mul_(4.0)
        _UNTIED[arch] = model.eval()
    return _UNTIED[arch]


def _prompt(seed: int = 0, length: int = PROMPT_LEN) -> list[int]:
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@functools.cache
def _hf_greedy(arch: str, seed: int = SEED, n: int = NEW) -> list[int]:
    """Reference: argmax loop with the model's own attention (SDPA) and its own cache, no sparsebench."""
    model, prompt = _model(arch), _prompt(seed)
    cache = {cache_kwarg(model): DynamicCache(config=model.config)}
    out: list[int] = []
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt]), use_cache=True, **cache).logits[:, -1]
        for step in range(n):
            token = logits.argmax(-1, keepdim=True)
            out.append(int(token))
            if step < n - 1:
                logits = model(input_ids=token, use_cache=True, **cache).logits[:, -1]
    return out


def _run(model: torch.nn.Module, policy, prompt: list[int], n: int = NEW, **kw) -> GenerationResult:
    return generate(model, ByteTokenizer(), prompt, policy, TorchBackend(), CFG, max_new_tokens=n,
                    stop_ids=kw.pop("stop_ids", set()), **kw)


@functools.cache
def _dense(arch: str, seed: int = SEED) -> GenerationResult:
    """Dense generation, shared by the tests that compare against it (each run costs seconds on 2 cores)."""
    return _run(_model(arch), Dense(), _prompt(seed))


def _half_draft(model: torch.nn.Module) -> Draft:
    draft = build_self_draft(model, "first-half")
    n_draft = len(draft.draft_source_layers)
    return Draft(draft, [min(i, n_draft - 1) for i in range(model.config.num_hidden_layers)], "self:first-half")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_dense_generation_matches_hf_greedy(arch: str) -> None:
    ref = _hf_greedy(arch)
    assert len(set(ref)) > 3, "reference degenerate: the test would not exercise attention"
    out = _dense(arch)
    assert out.ids == ref
    assert out.prompt_tokens == PROMPT_LEN and out.decode_steps == NEW - 1 and out.stop_reason == "max_new_tokens"
    assert out.kv.reduction_sparse == 0.0 and out.kv.read_sparse > 0
    assert out.tokens_per_second > 0 and out.prefill_seconds > 0
    assert _model(arch).config._attn_implementation == "sdpa"  # attached() restored it


def test_hf_generate_agrees_with_reference_loop() -> None:
    """The manual reference is what transformers' own greedy ``generate`` produces."""
    hf = _model("llama").generate(torch.tensor([_prompt(SEED)]), max_new_tokens=NEW, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)
    assert hf[0, PROMPT_LEN:].tolist() == _hf_greedy("llama")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_quest_full_budget_is_dense_and_small_budget_reads_less(arch: str) -> None:
    model, prompt, dense = _model(arch), _prompt(SEED), _dense(arch)
    assert _run(model, Quest(budget_frac=1.0), prompt).ids == dense.ids
    sparse = _run(model, Quest(budget_frac=0.25), prompt)
    assert len(sparse.ids) == NEW
    assert sparse.kv.reduction_sparse > 0.0 and sparse.kv.reduction_all > 0.0
    assert sparse.kv.read_sparse < dense.kv.read_sparse and sparse.kv.dense_sparse == dense.kv.dense_sparse


def test_token_comparison_is_sensitive_to_the_policy() -> None:
    """A one-block budget changes the tokens: the exactness tests above could fail."""
    assert _run(_model("llama"), Quest(budget=8), _prompt(SEED)).ids != _dense("llama").ids


def test_generation_reads_what_the_teacher_forced_engine_reads() -> None:
    """Feeding the generated tokens back through the engine (prefill = the prompt) gives the same KV reads,
    draft included: the loop and the engine share the router, the capture and the draft lockstep."""
    model, prompt, n = _model("llama"), _prompt(SEED), 6
    draft = _half_draft(model)
    cfg = EngineConfig(block_size=8, dense_layers=1, prefill_frac=len(prompt) / (len(prompt) + n))
    assert cfg.prefill_len(len(prompt) + n) == len(prompt)
    for policy in (Quest(budget_frac=0.25), SpecAttn(p=0.8)):
        out = generate(model, ByteTokenizer(), prompt, policy, TorchBackend(), cfg, max_new_tokens=n,
                       draft=draft, stop_ids=set())
        ref = TeacherForcedEngine(model, policy, TorchBackend(), cfg, draft=draft).evaluate(
            torch.tensor([prompt + out.ids]))
        assert ref.nll.shape[1] == out.decode_steps == n - 1
        assert out.kv.per_layer == ref.kv.per_layer
        assert out.kv.reduction_sparse > 0.0


def test_specattn_full_budget_with_draft_is_dense() -> None:
    model = _model("llama")
    out = _run(model, SpecAttn(p=1.0), _prompt(SEED), draft=_half_draft(model))
    assert out.ids == _dense("llama").ids
    assert out.timing.get("draft", 0.0) > 0.0
    with pytest.raises(UsageError, match="draft"):
        _run(model, SpecAttn(), _prompt(SEED))


def test_stop_ids_and_defaults() -> None:
    model, prompt, full = _model("llama"), _prompt(SEED), _dense("llama")
    stop = full.ids[4]
    first = full.ids.index(stop)
    out = _run(model, Dense(), prompt, n=first + 3, stop_ids={stop})
    assert out.ids == full.ids[: first + 1] and out.stop_reason == "stop_id" and out.decode_steps == first
    one = _run(model, Dense(), prompt, n=1)
    assert one.ids == full.ids[:1] and one.decode_steps == 0 and one.kv.read_all == 0
    # The tiny model's synthesised generation config (eos 2 = byte 0x02) is not trusted; the tokenizer is.
    assert default_stop_ids(model, ByteTokenizer()) == {ByteTokenizer.eos_token_id}
    with pytest.raises(UsageError, match="positions"):
        _run(model, Dense(), prompt, n=model.config.max_position_embeddings)


def test_rouge_l() -> None:
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("alpha beta gamma", "delta epsilon") == 0.0
    assert rouge_l("", "some reference") == 0.0
    assert 0.0 < rouge_l("the cat sat", "the cat sat on the mat") < 1.0


def test_rouge_l_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    generation._rouge_scorer.cache_clear()
    monkeypatch.setitem(sys.modules, "rouge_score", None)
    try:
        with pytest.raises(DependencyError, match="pip install rouge-score"):
            rouge_l("a", "a")
    finally:
        generation._rouge_scorer.cache_clear()


def test_prompt_truncation_keeps_head_and_tail() -> None:
    tok = ByteTokenizer()
    short = govreport_prompt("A short report.", tok, 4096)
    assert short.ids == tok.encode(GOVREPORT_TEMPLATE.format(context="A short report."))
    assert short.dropped_tokens == 0
    report = "BEGINNING " + "filler text. " * 200 + " THE END"
    full = tok.encode(GOVREPORT_TEMPLATE.format(context=report))
    cut = govreport_prompt(report, tok, 301)
    assert len(cut.ids) == 301 and cut.full_tokens == len(full) and cut.dropped_tokens == len(full) - 301
    assert cut.ids == full[:150] + full[-151:]
    text = tok.decode(cut.ids)
    assert text.startswith("You are given a report by a government agency.") and "Report:\nBEGINNING" in text
    assert text.endswith("THE END\n\nNow, write a one-page summary of the report.\n\nSummary:")
    assert truncate_middle([1, 2, 3], 5) == [1, 2, 3]


class _ChatBytes(ByteTokenizer):
    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        assert not tokenize and add_generation_prompt
        return "<bos>[user]" + messages[0]["content"] + "[/user][assistant]"


def test_prompt_chat_template_option() -> None:
    with pytest.raises(UsageError, match="chat template"):
        govreport_prompt("report", ByteTokenizer(), 100, chat_template=True)
    tok = _ChatBytes()
    out = govreport_prompt("x" * 1000, tok, 200, chat_template=True)
    assert len(out.ids) == 200
    text = tok.decode(out.ids)
    assert text.startswith("<bos>[user]You are given") and text.endswith("Summary:[/user][assistant]")


def test_references_of() -> None:
    assert references_of(Document("a", "t", meta={"summary": "S"})) == ["S"]
    assert references_of(Document("b", "t", meta={"summary": None})) == []
    assert references_of(Document("c", "t", meta={"answers": ["A1", ""]})) == ["A1"]


def test_evaluate_govreport_on_packaged_samples() -> None:
    sample = load_corpus(str(SAMPLES_DIR / NAMED["govreport"].sample_file), log=lambda _: None)
    docs = sorted(sample.documents, key=lambda d: d.id)[:2]
    docs.append(Document("no-summary", "A report nobody summarised.", meta={"summary": None}))
    docs.append(Document("hub-row", "Hub report text. " * 30, meta={"answers": ["Hub report summary."]}))
    loaded = LoadedModel(get_tiny("llama"), ByteTokenizer(), "tiny:llama")
    messages: list[str] = []
    rows = evaluate_govreport(loaded, Quest(budget_frac=0.25), TorchBackend(), CFG, docs, max_prompt_tokens=256,
                              max_new_tokens=8, progress=False, log=messages.append)
    assert [r["id"] for r in rows] == [docs[0].id, docs[1].id, "hub-row"]
    assert any("skipped 1" in m for m in messages)
    for row, doc in zip(rows, [*docs[:2], docs[3]], strict=True):
        assert 0.0 <= row["rouge_l"] <= 1.0
        assert row["prompt_tokens"] == 256 and 1 <= row["generated_tokens"] <= 8
        assert isinstance(row["generated"], str)
        assert row["reference"] == references_of(doc)[0]
        assert 0.0 < row["kv_reduction_sparse"] < 1.0 and 0.0 < row["kv_reduction_all"] <= row["kv_reduction_sparse"]
        assert row["tokens_per_s"] > 0 or row["decode_steps"] == 0
    assert rows[0]["prompt_tokens_dropped"] > 0
