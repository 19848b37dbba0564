"""Distilled drafts: the loss falls, a resumed run equals an uninterrupted one, the saved directory loads
with from_pretrained and serves as --draft, the cost count includes the head, and bad input is caught."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import get_tiny
from lm_helpers import sea_corpus, smollm2_shapes
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sparsebench.cli import main
from sparsebench.data import load_corpus, select_documents
from sparsebench.distill import DistillConfig, Distiller
from sparsebench.distill.data import TokenData, WindowSampler, start_tokens
from sparsebench.distill.model import build_draft, evenly_spaced_layers, flops_per_token
from sparsebench.distill.store import MANIFEST, REPORT
from sparsebench.errors import UsageError
from sparsebench.models import ByteTokenizer

TINY = dict(target="tiny:llama", layers=2, seq_len=64, batch_size=4, lr=3e-3, holdout_docs=1, eval_tokens=512)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four short documents (one is held out) and a private cache for drafts and layer maps."""
    return sea_corpus(tmp_path, monkeypatch)


def _quiet(_: str) -> None:
    pass


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _distill(corpus: Path, **overrides: Any) -> tuple[dict[str, Any], DistillConfig]:
    resume = overrides.pop("resume", False)
    on_step = overrides.pop("on_step", None)
    cfg = DistillConfig(**(TINY | {"datasets": (str(corpus),), "steps": 10} | overrides))
    return Distiller(cfg, log=_quiet, progress=False, resume=resume, on_step=on_step).run(), cfg


def test_loss_falls_and_the_draft_works_as_a_specattn_draft(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "distill", "--target", "tiny:llama", "--layers", "2", "--steps", "30", "--seq-len",
                          "64", "--batch-size", "4", "--lr", "3e-3", "--dataset", str(corpus), "--holdout-docs", "1",
                          "--attention-weight", "0.5", "--name", "t2", "--no-progress", "--eval-tokens", "512",
                          "--eval-acceptance", "--acceptance-prompts", "1", "--acceptance-context", "32",
                          "--acceptance-tokens", "9")
    assert code == 0, err
    assert "held-out perplexity" in out and "greedy acceptance at gamma 4" in out and "distilled:t2" in out
    path = Path(os.environ["SPARSEBENCH_CACHE"]) / "drafts" / "t2"
    report = json.loads((path / REPORT).read_text())
    kl = [h["kl"] for h in report["history"]]
    assert len(kl) == 30 and sum(kl[-5:]) < 0.6 * sum(kl[:5]), kl
    attention = [h["attention_kl"] for h in report["history"]]
    assert sum(attention[-5:]) < sum(attention[:5])
    assert report["source_layers"] == [0, 3] and report["heldout"]["windows"] >= 1
    assert report["acceptance"]["proposed"] > 0 and 0 <= report["acceptance"]["acceptance_rate"] <= 1
    # Held out: the document `run --dataset DIR` evaluates first (its default --seed 0 order).
    first = select_documents(load_corpus(str(corpus)).documents, 0)[0].id
    assert report["data"]["corpora"][0]["heldout_ids"] == [first]

    # A plain transformers directory: 2 layers, the target's embeddings (frozen, so unchanged), runnable.
    draft = AutoModelForCausalLM.from_pretrained(path)
    assert draft.config.num_hidden_layers == 2
    torch.testing.assert_close(draft.get_input_embeddings().weight, get_tiny("llama").get_input_embeddings().weight,
                               rtol=0, atol=0)
    assert json.loads((path / MANIFEST).read_text())["tokenizer"] == {"kind": "bytes", "vocab_size": 512}

    code, out, err = _cli(capsys, "run", "--policy", "specattn", "--model", "tiny:llama", "--draft", "distilled:t2",
                          "--dataset", str(corpus / f"{first}.txt"), "--seq-len", "48", "--block-size", "8",
                          "--dense-layers", "1", "--no-progress")
    assert code == 0, err
    assert "separate draft model distilled:t2" in err and "layer map computed" in err and "specattn" in out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _trajectory(report: dict[str, Any]) -> list[dict[str, float]]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in report["history"]]


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(corpus: Path, tmp_path: Path) -> None:
    whole, _ = _distill(corpus, out=str(tmp_path / "whole"), checkpoint_every=4)

    def interrupt(step: int, metrics: dict[str, float]) -> None:
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: finish the step, checkpoint, stop

    with pytest.raises(KeyboardInterrupt):
        _distill(corpus, out=str(tmp_path / "split"), checkpoint_every=4, on_step=interrupt)
    saved = torch.load(tmp_path / "split" / "training" / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 6 and saved["data"]["batches_consumed"] == 6
    assert not (tmp_path / "split" / MANIFEST).exists()  # no draft directory until training completes
    resumed, _ = _distill(corpus, out=str(tmp_path / "split"), checkpoint_every=4, resume=True)
    assert _trajectory(resumed) == _trajectory(whole)
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_and_a_rerun_needs_resume_or_overwrite(corpus: Path, tmp_path: Path) -> None:
    _distill(corpus, out=str(tmp_path / "d"), steps=2)
    with pytest.raises(UsageError, match="already holds a training run"):
        _distill(corpus, out=str(tmp_path / "d"), steps=2)
    with pytest.raises(UsageError, match=r"other settings \(lr 0.003 -> 0.001\)"):
        _distill(corpus, out=str(tmp_path / "d"), steps=2, lr=1e-3, resume=True)
    report, _ = _distill(corpus, out=str(tmp_path / "d"), steps=3, resume=True)  # more steps: continues
    assert [h["step"] for h in report["history"]] == [1, 2, 3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_distillation_on_the_gpu(corpus: Path, tmp_path: Path) -> None:
    """The GPU path: bf16 autocast, fused AdamW, the attention tap under autocast, the saved draft loads."""
    report, _ = _distill(corpus, out=str(tmp_path / "g"), device="cuda", steps=8, attention_weight=0.5)
    assert report["autocast"] == "bfloat16" and report["device"].startswith("cuda")
    assert all(torch.isfinite(torch.tensor([h["loss"], h["attention_kl"]])).all() for h in report["history"])
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "g").config.num_hidden_layers == 2


def test_warnings_for_a_large_draft_and_for_the_cpu(corpus: Path, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "distill", "--target", "tiny:llama", "--layers", "5", "--steps", "3", "--seq-len",
                        "32", "--batch-size", "2", "--dataset", str(corpus), "--holdout-docs", "1", "--device", "cpu",
                        "--out", str(tmp_path / "big"), "--eval-tokens", "64", "--no-progress")
    assert code == 0, err
    assert "warning: a 5-layer draft is not smaller than the 4-layer target" in err
    assert "warning: distilling on the CPU" in err and "3 steps will take about" in err
    assert json.loads((tmp_path / "big" / REPORT).read_text())["source_layers"] == [0, 1, 2, 2, 3]


BAD = {
    "unknown target": (["--target", "smollm9-1m"], "unknown model 'smollm9-1m'"),
    "zero layers": (["--target", "tiny:llama", "--layers", "0"], "--layers must be >= 1"),
    "bad name": (["--target", "tiny:llama", "--name", "a/b"], "draft name 'a/b'"),
    "fp16": (["--target", "tiny:llama", "--dtype", "fp16"], "invalid choice"),
    "resume and overwrite": (["--target", "tiny:llama", "--resume", "--overwrite"], "contradict"),
    "missing dataset": (["--target", "tiny:llama", "--dataset", "/nope/x.txt"], "neither a named corpus"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(case: str, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = BAD[case]
    code, _, err = _cli(capsys, "distill", *argv, "--no-progress")
    lines = [line for line in err.splitlines() if line.strip() and "warning" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sparsebench: error:") and expected in lines[0], err


def test_unknown_distilled_draft_is_a_usage_error(corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "run", "--policy", "specattn", "--model", "tiny:llama", "--draft", "distilled:nope",
                        "--no-progress")
    assert code == 2 and "no distilled draft 'nope'" in err and "sparsebench distill" in err


def test_cost_counts_the_output_head() -> None:
    """smollm2-135m's shapes: the 49152 x 576 head is about a fifth of the per-token FLOPs, so a 4-layer draft
    sharing it is ~3.2x cheaper, not 30/4 = 7.5x; attention over a long context widens the gap."""
    target, draft = smollm2_shapes(4)
    full = flops_per_token(target, 0)
    assert full == pytest.approx(2 * 134_515_008, rel=0.01)  # 2 FLOPs per weight, embeddings counted once (the head)
    assert 0.19 < 2 * 49152 * 576 / full < 0.22
    assert flops_per_token(target, 0) / flops_per_token(draft, 0) == pytest.approx(3.17, abs=0.01)
    assert flops_per_token(target, 2048) / flops_per_token(draft, 2048) > 3.9


def test_draft_construction() -> None:
    assert evenly_spaced_layers(30, 4) == [0, 10, 19, 29] and evenly_spaced_layers(4, 1) == [3]
    target = get_tiny("gemma3")
    built = build_draft(target, 2, init="subset", share_embeddings=False)
    assert built.source_layers == [0, 3] and built.frozen == []
    # Gemma 3's sliding/full pattern follows the copied layers; the copied layer computes the same thing.
    assert built.model.config.layer_types == [target.config.layer_types[0], target.config.layer_types[3]]
    copied, source = built.model.model.layers[1].mlp.down_proj.weight, target.model.layers[3].mlp.down_proj.weight
    torch.testing.assert_close(copied, source, rtol=0, atol=0)
    frozen = build_draft(target, 2, init="fresh", share_embeddings=True)
    assert all(not p.requires_grad for n, p in frozen.model.named_parameters() if n in frozen.frozen)
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= set(frozen.frozen)


def test_window_order_is_a_function_of_the_batch_index() -> None:
    data = TokenData(torch.arange(1000), torch.arange(10), [7], {})
    sampler = WindowSampler(data, seq_len=10, batch_size=3, seed=1)
    assert sampler.per_epoch == 111 and bool((sampler.batch(0)[:, 0] == 7).all())
    late = sampler.batch(40)  # crosses into the second epoch
    assert torch.equal(WindowSampler(data, seq_len=10, batch_size=3, seed=1).batch(40), late)
    epoch = torch.cat([sampler.batch(k) for k in range(37)])  # 111 windows = one permutation of all of them
    assert sorted(epoch[:, 1].tolist()) == list(range(0, 999, 9))
    assert start_tokens(ByteTokenizer()) == []


def test_losses_are_zero_where_the_draft_is_the_target() -> None:
    """Draft layer 0 is a copy of target layer 0 with the same inputs, so the attention tap sees the same
    distribution on both (KL 0); draft layer 1 copies target layer 3 but sees other inputs (KL > 0)."""
    from sparsebench.distill.losses import AttentionTap, attention_kl, logits_kl
    from sparsebench.hf_attention import attached, use_router

    target = get_tiny("llama")
    draft = build_draft(target, 2).model.eval()
    taps = AttentionTap({0, 3}, rows=8, block_size=8), AttentionTap({0, 1}, rows=8, block_size=8)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), attached(target, draft):
        with use_router(taps[0]):
            target_logits = target(input_ids=ids).logits
        with use_router(taps[1]):
            draft_logits = draft(input_ids=ids).logits
    assert taps[0].mass[0].shape == (2, 4, 8, 5)  # [batch, heads, rows, blocks]
    assert float(attention_kl(taps[0].mass, taps[1].mass, [(0, 0)])) == pytest.approx(0.0, abs=1e-6)
    assert float(attention_kl(taps[0].mass, taps[1].mass, [(1, 3)])) > 1e-3
    reference = torch.nn.functional.kl_div(torch.log_softmax(draft_logits, -1), torch.log_softmax(target_logits, -1),
                                           log_target=True, reduction="none").sum(-1).mean()
    assert float(logits_kl(target_logits, draft_logits)) == pytest.approx(float(reference), rel=1e-5)
    assert float(logits_kl(target_logits, target_logits)) == pytest.approx(0.0, abs=1e-6)
