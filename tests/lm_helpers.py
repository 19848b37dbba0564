"""Small language-model helpers the speculative-decoding and distillation tests share.

Why scaled heads: greedy comparisons (speculative output vs the target's own greedy tokens) must be decided by
the models, not by float noise; a tiny random model with a 30x output head has peaked logits whose argmax is
stable, and whose greedy text still varies from step to step.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sparsebench.models.tiny import tiny_config

#: Words of the small training corpora (a few letters, so tiny byte-level drafts learn something in seconds).
SEA_WORDS = ["the", "sea", "ship", "mate", "captain", "wind", "wave", "harbour", "night", "storm", "sail", "rope"]


def scaled_lm(arch: str, seed: int, vocab: int | None = None) -> torch.nn.Module:
    """A tiny random ``arch`` LM (optionally over ``vocab`` ids) with an untied head scaled by 30."""
    config = tiny_config(arch)
    config.tie_word_embeddings = False
    if vocab is not None:
        config.vocab_size = vocab
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


@torch.no_grad()
def plain_greedy(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Reference: ``n`` greedy tokens of ``model`` alone after ``prompt``, full recomputation each step."""
    ids = torch.tensor([prompt])
    for _ in range(n):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt) :].tolist()


def sea_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Four 900-word documents over :data:`SEA_WORDS` in ``tmp_path/docs``, and a private cache for drafts and
    layer maps (``SPARSEBENCH_CACHE``)."""
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "docs"
    folder.mkdir()
    for d in range(4):
        folder.joinpath(f"d{d}.txt").write_text(" ".join(SEA_WORDS[(i * (d + 3)) % len(SEA_WORDS)] for i in range(900)))
    return folder


def smollm2_shapes(draft_layers: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """smollm2-135m's architecture (30 layers, 576 wide, tied 49152 x 576 head) and a ``draft_layers``-layer
    draft of the same width, on the meta device: for FLOP counts, no weights."""
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
    with torch.device("meta"):
        target = AutoModelForCausalLM.from_config(config)
        config.num_hidden_layers = draft_layers
        draft = AutoModelForCausalLM.from_config(config)
    return target, draft
