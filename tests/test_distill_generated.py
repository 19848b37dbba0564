"""Target-written training text (``distill --generate-tokens``): greedy continuations equal a cache-free
reference decode, sampling follows softmax(logits / T) and is reproducible, the text joins the training
stream (cached, so a second draft reuses it), and bad settings are one-line errors."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import torch
from conftest import get_tiny
from lm_helpers import sea_corpus

from sparsebench.cli import main
from sparsebench.distill import DistillConfig, Distiller
from sparsebench.distill.data import TokenData
from sparsebench.distill.generated import GenerationSpec, _next_tokens, choose_prompts, continue_prompts
from sparsebench.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return sea_corpus(tmp_path, monkeypatch)


def _continue(spec: GenerationSpec, prompts: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return continue_prompts(get_tiny("llama"), prompts, spec, seed=seed, device=CPU, autocast=contextlib.nullcontext)


def test_greedy_continuations_equal_a_decode_without_cache() -> None:
    prompts = torch.randint(0, 500, (3, 10), generator=torch.Generator().manual_seed(1))
    got = _continue(GenerationSpec(tokens=18, prompt_len=10, new_len=6, temperatures=(0.0,), batch_size=2), prompts)
    model, seq = get_tiny("llama"), prompts.clone()
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq[:, 10:])


def test_sampling_is_reproducible_and_follows_the_tempered_softmax() -> None:
    prompts = torch.randint(0, 500, (4, 8), generator=torch.Generator().manual_seed(2))
    spec = GenerationSpec(tokens=32, prompt_len=8, new_len=8, temperatures=(1.0,), batch_size=4)
    first, again, other = _continue(spec, prompts, 0), _continue(spec, prompts, 0), _continue(spec, prompts, 1)
    assert torch.equal(first, again) and not torch.equal(first, other)

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(3)
    for t in (1.0, 0.5):
        draws = _next_tokens(logits, torch.full((20000,), t), generator)
        freq = torch.bincount(draws, minlength=4).double() / draws.numel()
        torch.testing.assert_close(freq, torch.softmax(logits[0].double() / t, 0), atol=0.015, rtol=0)
    mixed = _next_tokens(logits[:4], torch.tensor([0.0, 5.0, 0.0, 5.0]), generator)
    assert mixed[0] == 0 and mixed[2] == 0  # temperature 0: the argmax


def test_prompts_come_from_the_training_stream_only() -> None:
    data = TokenData(torch.arange(1000, 2000), torch.arange(10), [7], {})
    prompts = choose_prompts(data, GenerationSpec(tokens=50, prompt_len=11, new_len=10), seed=0)
    assert prompts.shape == (5, 11) and (prompts[:, 0] == 7).all() and (prompts[:, 1:] >= 1000).all()
    with pytest.raises(UsageError, match="needs 1000 prompts"):
        choose_prompts(data, GenerationSpec(tokens=10000, prompt_len=11, new_len=10), seed=0)


def test_distillation_trains_on_the_targets_text_and_reuses_it(corpus: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    logs: list[str] = []
    cfg = dict(target="tiny:llama", layers=2, seq_len=64, batch_size=4, lr=3e-3, holdout_docs=1, eval_tokens=256,
               steps=3, datasets=(str(corpus),), generate_tokens=100, generate_prompt_len=32, generate_len=24,
               generate_batch=3)
    report = Distiller(DistillConfig(**cfg, out=str(tmp_path / "a")), log=logs.append, progress=False).run()
    generated = report["data"]["generated"]
    assert generated["continuations"] == 5 and generated["tokens"] == 120 and generated["temperatures"] == [0.0, 0.8]
    # The corpus stream plus each continuation and its end-of-sequence separator.
    assert report["data"]["train_tokens"] == report["data"]["corpus_train_tokens"] + 5 * 25
    assert any("the target writes 5 continuations" in line for line in logs)
    # The same settings through the CLI: the text comes from the cache, and the report names it.
    code = main(["distill", "--target", "tiny:llama", "--layers", "2", "--seq-len", "64", "--batch-size", "4", "--lr",
                 "3e-3", "--holdout-docs", "1", "--eval-tokens", "256", "--steps", "3", "--dataset", str(corpus),
                 "--generate-tokens", "100", "--generate-prompt-len", "32", "--generate-len", "24",
                 "--generate-batch", "3", "--out", str(tmp_path / "b"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0 and "from the cache" in err
    assert re.search(r"target-written training text +\| 120 tokens \(5 continuations of 24, temperatures \[0.0, 0.8\]",
                     out), out
    with pytest.raises(UsageError, match=r"other settings \(generate_len 24 -> 25\)"):
        Distiller(DistillConfig(**(cfg | {"generate_len": 25}), out=str(tmp_path / "a")), log=logs.append,
                  progress=False, resume=True).run()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--generate-temperature", "0,-1"], "temperatures >= 0"),
    (["--generate-temperature", "warm"], "comma-separated numbers"),
    (["--generate-len", "0"], "--generate-len must be >= 1"),
])
def test_bad_generation_flags_are_one_line_errors(flags: list[str], expected: str, corpus: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["distill", "--target", "tiny:llama", "--dataset", str(corpus), "--generate-tokens", "10", *flags])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
