"""Tiny random decoder-only models built from configs.

Why: tests and CI need models that load in milliseconds with no weights on disk, yet exercise the
real Hugging Face modeling code (GQA, rotary embeddings, Gemma 3's sliding-window layers and its
``query_pre_attn_scalar`` scaling). ``tiny:llama``, ``tiny:qwen2`` and ``tiny:gemma3`` name them.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

TINY_VOCAB = 512


def tiny_config(arch: str, *, max_positions: int = 4096) -> PretrainedConfig:
    """Config of a 4-layer random model of architecture ``arch`` (llama, qwen2 or gemma3)."""
    common = dict(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    if arch == "gemma3":
        from transformers import Gemma3TextConfig

        # Gemma 3 alternates sliding-window and full-attention layers; its scaling is
        # query_pre_attn_scalar**-0.5, deliberately different from head_dim**-0.5 here.
        return Gemma3TextConfig(
            **common,
            sliding_window=24,
            layer_types=["sliding_attention", "full_attention"] * 2,
            query_pre_attn_scalar=32,
        )
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of: {', '.join(TINY_ARCHS)}")


TINY_ARCHS = ("llama", "qwen2", "gemma3")


def tiny_model(arch: str, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A randomly initialised tiny model; the same ``seed`` gives the same weights."""
    config = tiny_config(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random init gives near-uniform attention; scale up the q/k projections so that attention is
    # peaked like a trained model's and sparse policies actually change the result.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(4.0)
    return model.eval()
