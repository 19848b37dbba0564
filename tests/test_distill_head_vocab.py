"""Distilled drafts with a reduced output head (``sparsebench distill --head-vocab K``): which ids are kept,
training over them, the saved directory and its side file, exact greedy speculative decoding through the
reduced head (Hugging Face decoder and fast engine), the cost count, and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_helpers import plain_greedy, scaled_lm, sea_corpus, smollm2_shapes
from transformers import AutoModelForCausalLM

from sparsebench.cli import main
from sparsebench.data import load_corpus, select_documents
from sparsebench.distill import DistillConfig, Distiller, load_distilled
from sparsebench.distill.headvocab import (
    HEAD_VOCAB_FILE,
    SubsetHead,
    choose_head_vocab,
    head_ids_of,
    install_head,
    installed_head,
)
from sparsebench.distill.model import cost_ratio, flops_per_token
from sparsebench.distill.store import MANIFEST, REPORT
from sparsebench.engine import EngineConfig
from sparsebench.errors import UsageError
from sparsebench.fastdecode import FastDecoder, FastModel
from sparsebench.fastdecode.speculate import FastSpeculator, SpecDraft
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models.tiny import tiny_config
from sparsebench.policies import Dense, SpecAttn
from sparsebench.specattn.capture import Draft
from sparsebench.specdec import SpeculationConfig, SpeculativeDecoder

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = EngineConfig(block_size=8, dense_layers=1)
SPECIALS = [256, 257, 258]  # the tiny models' byte tokenizer: bos, eos, pad
HELD_OUT_TEXT = "zq" * 2000  # bytes no training document has: they must not reach the head


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four documents over a few letters; the one held out (first in run's seed-0 order) is all 'z' and 'q'."""
    folder = sea_corpus(tmp_path, monkeypatch)
    held = select_documents(load_corpus(str(folder)).documents, 0)[0].id
    folder.joinpath(f"{held}.txt").write_text(HELD_OUT_TEXT)
    return folder


def _distill(corpus: Path, **overrides: Any) -> dict[str, Any]:
    cfg = DistillConfig(**({"target": "tiny:llama", "layers": 2, "seq_len": 64, "batch_size": 4, "lr": 3e-3,
                            "holdout_docs": 1, "eval_tokens": 512, "datasets": (str(corpus),), "steps": 30}
                           | overrides))
    return Distiller(cfg, log=lambda _: None, progress=False).run()


def test_choice_ranks_by_frequency_keeps_specials_and_breaks_ties_by_id() -> None:
    tokens = torch.tensor([5] * 9 + [3] * 4 + [8] * 4 + [1] * 2 + [0])
    assert choose_head_vocab(tokens, 12, 3) == [3, 5, 8]  # 3 and 8 tie: both in, 1 out
    assert choose_head_vocab(tokens, 12, 2) == [3, 5]  # the tie goes to the lower id
    assert choose_head_vocab(tokens, 12, 4, specials=[11, 10]) == [3, 5, 10, 11]
    assert choose_head_vocab(tokens, 12, 12) == list(range(12))  # unseen ids fill up in id order
    with pytest.raises(UsageError, match="at least 2"):
        choose_head_vocab(tokens, 12, 1, specials=[10, 11])
    with pytest.raises(UsageError, match="exceeds the target's vocabulary of 12"):
        choose_head_vocab(tokens, 12, 13)


def test_training_over_the_head_saving_and_loading(corpus: Path) -> None:
    """The loss falls; held-out text decides nothing; the directory loads with from_pretrained as a full model
    and, through load_distilled, proposes only head ids; the cost counts the head's rows."""
    report = _distill(corpus, out=None, name="h40", head_vocab=40, attention_weight=0.5, eval_acceptance=True,
                      acceptance_prompts=1, acceptance_context=32, acceptance_tokens=9)
    kl = [h["kl"] for h in report["history"]]
    assert sum(kl[-5:]) < 0.6 * sum(kl[:5]), kl
    path = Path(report["path"])
    side = json.loads((path / HEAD_VOCAB_FILE).read_text())
    ids = side["ids"]
    assert len(ids) == side["rows"] == 40 and ids == sorted(ids) and set(SPECIALS) <= set(ids)
    assert not {ord("z"), ord("q")} & set(ids)  # frequent only in the held-out document
    train_text = "".join(p.read_text() for p in corpus.iterdir() if p.read_text() != HELD_OUT_TEXT)
    assert {ord(c) for c in train_text} <= set(ids)  # every training byte fits in 40 rows here
    assert side["train_token_coverage"] == pytest.approx(1.0) and "most frequent" in side["method"]
    assert json.loads((path / MANIFEST).read_text())["head_vocab"] == {"rows": 40, "file": HEAD_VOCAB_FILE}
    assert report["head_vocab"]["rows"] == 40 and report["heldout"]["head"]["rows"] == 40
    assert report["heldout"]["head"]["next_token_in_head"] < 0.1  # the held-out text is almost all z and q
    assert report["acceptance"]["proposed"] > 0
    assert [c["draft_head_rows"] for c in report["cost"]] == [40, 40]
    assert json.loads((path / REPORT).read_text())["cost"] == report["cost"]
    saved = torch.load(path / "training" / "checkpoint.pt", weights_only=False)
    assert saved["head_ids"] == ids and saved["config"]["head_vocab"] == 40

    plain = AutoModelForCausalLM.from_pretrained(path)  # the full head is kept: an ordinary model
    assert plain.get_output_embeddings().weight.shape == (512, 64)
    loaded = load_distilled("distilled:h40", dtype=torch.float32, device="cpu", progress=False)
    assert head_ids_of(loaded.model).tolist() == ids and loaded.identity["head_vocab"] == 40
    logits = loaded.model(input_ids=torch.tensor([[104, 101, 32]])).logits
    outside = torch.ones(512, dtype=torch.bool)
    outside[ids] = False
    assert bool(torch.isneginf(logits[..., outside]).all()) and bool(torch.isfinite(logits[..., ids]).all())
    torch.testing.assert_close(logits[..., ids], plain(input_ids=torch.tensor([[104, 101, 32]])).logits[..., ids])
    fast = FastModel.from_hf(loaded.model)
    assert fast.head_ids.tolist() == ids and fast.spec.head_rows == 40


def test_full_vocabulary_keeps_the_full_head(corpus: Path) -> None:
    report = _distill(corpus, out=str(corpus.parent / "full"), steps=2, head_vocab=512)
    assert report["head_vocab"] is None and not (corpus.parent / "full" / HEAD_VOCAB_FILE).exists()
    assert report["cost"][0]["draft_head_rows"] == 512


def _head_without_one(expected: list[int]) -> list[int]:
    """Ids the draft may propose: all but the lowest token the target's greedy output uses. The draft (a copy of
    the target) is then right exactly where the target's token is in its head, and every id above the missing
    one sits at a head index one below itself, so an unmapped head index would propose the wrong token."""
    return [i for i in range(512) if i != min(expected)]


def test_reduced_head_draft_keeps_greedy_speculation_exact() -> None:
    """Hugging Face speculative decoding: the output is the target's plain greedy output token for token, the
    draft never proposes outside its head, and it is rejected exactly where the target's token is outside."""
    target = scaled_lm("llama", 1)
    prompt = torch.randint(0, 512, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    expected = plain_greedy(target, prompt, 28)
    ids = _head_without_one(expected)
    draft = copy.deepcopy(target)
    install_head(draft, ids, expand=True)
    assert isinstance(draft.get_output_embeddings(), SubsetHead)
    for policy in (Dense(), SpecAttn(p=1.0)):
        decoder = SpeculativeDecoder(target, Draft(draft, [min(i, 3) for i in range(4)], "reduced"), policy,
                                     TorchBackend(), CFG, SpeculationConfig(gamma=4))
        out = decoder.generate(prompt, max_new_tokens=28, stop_ids=set())
        assert out.ids == expected, policy.name
        assert 0.5 < out.acceptance_rate < 1


def test_reduced_head_draft_on_the_fast_engine_is_exact() -> None:
    """The fast engine: FastModel.from_hf carries the reduced head, its weight bytes count K rows, and the
    draft step's argmax maps the head index back to the token id (else nearly every proposal would be wrong)."""
    hf_target = scaled_lm("llama", 1)
    target = FastModel.from_hf(hf_target)
    prompt = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(0))
    plain = FastDecoder(target, Dense(), TorchBackend(), CFG, max_tokens=64)
    expected = [int(plain.prefill(prompt).argmax(-1)), *plain.generate(13)[0].tolist()]
    ids = _head_without_one(expected)
    hf_draft = copy.deepcopy(hf_target)
    with installed_head(hf_draft, ids, expand=True):
        draft = FastModel.from_hf(hf_draft)
    assert draft.spec.head_rows == len(ids) and target.spec.head_rows == 0
    saved = (512 - len(ids)) * 64 * 4
    assert target.spec.weight_bytes(torch.float32) - draft.spec.weight_bytes(torch.float32) == saved
    spec = FastSpeculator(target, SpecDraft.separate(draft, target, "reduced"), Dense(), TorchBackend(), CFG,
                          gamma=4, max_tokens=64)
    assert spec.prefill(prompt) == expected[0]
    assert spec.generate(len(expected)) == expected
    accepted = sum(r.accepted for r in spec.records)
    proposed = sum(sum(head for _, head in r.draft_steps) for r in spec.records)
    assert 0.5 < accepted / proposed < 1
    # Only a draft may have a reduced head: as a decoded model or a target its logits would miss tokens.
    with pytest.raises(UsageError, match="reduced output head"):
        FastDecoder(draft, Dense(), TorchBackend(), CFG, max_tokens=64)
    with pytest.raises(UsageError, match="the target has a reduced output head"):
        FastSpeculator(draft, SpecDraft.separate(target, draft, "full"), Dense(), TorchBackend(), CFG, gamma=4,
                       max_tokens=64)


def test_cost_counts_the_head_rows_and_the_chosen_default_is_three_times_cheaper() -> None:
    """smollm2-135m's shapes: with the full head a 10-layer draft is 2.1x cheaper; with the 8192-id head that
    benchmarks/device/distill_smollm2.sh uses by default, over 3x at contexts 0 and 2048."""
    target, draft = smollm2_shapes(10)
    head = 2 * (49152 - 8192) * 576
    assert flops_per_token(draft, 0) - flops_per_token(draft, 0, head_rows=8192) == head
    rows = cost_ratio(draft, target, [0, 2048], draft_head_rows=8192)
    assert [r["draft_head_rows"] for r in rows] == [8192, 8192] and rows[0]["target_head_rows"] == 49152
    assert [round(r["target_over_draft"], 2) for r in rows] == [3.35, 3.22]
    assert cost_ratio(draft, target, [0])[0]["target_over_draft"] == pytest.approx(2.11, abs=0.01)
    small = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with installed_head(small, list(range(40)), expand=False):  # an installed head counts itself
        assert flops_per_token(small, 0) == flops_per_token(small, 0, head_rows=40)
        assert small(input_ids=torch.tensor([[1, 2]])).logits.shape == (1, 2, 40)
    assert not isinstance(small.get_output_embeddings(), SubsetHead)  # put back afterwards


@pytest.mark.parametrize(("value", "expected"), [("0", "--head-vocab must be >= 1"),
                                                 ("2", "--head-vocab must be at least 3"),
                                                 ("600", "--head-vocab 600 exceeds the target's vocabulary of 512")])
def test_bad_head_vocab_is_a_one_line_usage_error(value: str, expected: str, corpus: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["distill", "--target", "tiny:llama", "--head-vocab", value, "--dataset", str(corpus),
                 "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sparsebench: error:") and expected in lines[0], err
