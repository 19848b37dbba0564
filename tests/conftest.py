"""Shared fixtures: tiny random models (built once per session) and a small text corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the hub
torch.set_num_threads(min(2, torch.get_num_threads()))

from sparsebench.models.tiny import TINY_ARCHS, tiny_model  # noqa: E402

_MODELS: dict[str, torch.nn.Module] = {}


def get_tiny(arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        _MODELS[arch] = tiny_model(arch)
    return _MODELS[arch]


@pytest.fixture(params=TINY_ARCHS)
def tiny_arch_model(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    return request.param, get_tiny(request.param)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A plain-text document long enough for a few hundred byte-level tokens."""
    path = tmp_path / "doc.txt"
    sentences = [f"Sentence number {i} talks about the sea, the ship and the {i % 7}th mate. " for i in range(60)]
    path.write_text("".join(sentences), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny matrices, where a second thread only adds synchronisation
    (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
