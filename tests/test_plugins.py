"""Plugin loading: built-ins through the entry point, broken plugins warn by package and are skipped."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from importlib import metadata

import pytest
import torch

from sparsebench import plugins
from sparsebench.hookspecs import hookimpl
from sparsebench.plugins import PluginWarning, load_registry
from sparsebench.policy import Policy, SelectionContext
from sparsebench.selection import Selection


def test_builtins_come_through_the_entry_point() -> None:
    eps = [ep for ep in metadata.entry_points(group="sparsebench") if ep.dist and ep.dist.name == "sparsebench"]
    assert [ep.value for ep in eps] == ["sparsebench.builtin"]
    reg = load_registry()
    assert {"dense", "streamingllm", "quest"} <= set(reg.policies)
    assert reg.sources["policy:quest"] == "sparsebench"
    assert "torch" in reg.backends


class _FakeDist:
    def __init__(self, name: str) -> None:
        self.name = name


class _FakeEntryPoint:
    def __init__(self, name: str, value: str, dist: str, loader) -> None:
        self.name, self.value, self.dist, self._loader = name, value, _FakeDist(dist), loader

    def load(self):
        return self._loader()


@dataclass
class _Good(Policy):
    name = "good_one"
    full_budget_params = {}  # noqa: RUF012

    def select(self, ctx: SelectionContext) -> Selection:
        return ctx.full()


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(mod, key, value)
    return mod


def test_broken_plugins_warn_and_others_keep_working(monkeypatch: pytest.MonkeyPatch) -> None:
    real = list(metadata.entry_points(group="sparsebench"))

    def boom():
        raise ImportError("no module named 'torch_scatter'")

    @hookimpl
    def sparsebench_policies(unexpected_arg):  # wrong signature
        return []

    @hookimpl
    def returns_junk():
        return [int]

    good = _module("good_plugin", sparsebench_policies=hookimpl(lambda: [_Good]))
    bad_sig = _module("bad_sig_plugin", sparsebench_policies=sparsebench_policies)
    junk = _module("junk_plugin", sparsebench_policies=hookimpl(lambda: [int, _Good]))
    fakes = [
        _FakeEntryPoint("broken", "broken_plugin", "pkg-broken", boom),
        _FakeEntryPoint("badsig", "bad_sig_plugin", "pkg-badsig", lambda: bad_sig),
        _FakeEntryPoint("good", "good_plugin", "pkg-good", lambda: good),
        _FakeEntryPoint("junk", "junk_plugin", "pkg-junk", lambda: junk),
    ]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: real + fakes)
    with pytest.warns(PluginWarning) as record:
        reg = load_registry()
    messages = [str(w.message) for w in record]
    assert any("pkg-broken" in m and "failed to import" in m for m in messages)
    assert any("pkg-badsig" in m and "invalid hook" in m for m in messages)
    assert any("pkg-junk" in m and "unusable" in m for m in messages)
    assert any("pkg-junk" in m and "already provided by 'pkg-good'" in m for m in messages)
    assert reg.sources["policy:good_one"] == "pkg-good"
    assert {"dense", "quest", "streamingllm"} <= set(reg.policies)


def test_policy_for_another_hook_spec_major_is_rejected() -> None:
    @dataclass
    class Future(_Good):
        name = "future"
        api_version = "2.0"

    plugin = _module("future_plugin", sparsebench_policies=hookimpl(lambda: [Future]))
    with pytest.warns(PluginWarning, match="hook spec 2.0"):
        reg = load_registry(extra=[plugin])
    assert "future" not in reg.policies


def test_unknown_policy_suggests_close_names() -> None:
    from sparsebench.errors import UsageError

    with pytest.raises(UsageError, match="did you mean 'quest'"):
        load_registry().policy_class("qeust")


def test_example_plugin_is_installed() -> None:
    """CI installs examples/sparsebench-random-blocks; it must register like any third-party package."""
    reg = load_registry()
    assert "random_blocks" in reg.policies, "pip install -e ./examples/sparsebench-random-blocks"
    assert reg.sources["policy:random_blocks"] == "sparsebench-random-blocks"
    assert "sparsebench_random_blocks" in sys.modules


def test_gpu_backends_explain_why_they_cannot_serve_the_cpu() -> None:
    """``--backend flashinfer`` on a CPU fails with the reason; ``auto`` falls back to torch."""
    from sparsebench.errors import UsageError
    from sparsebench.kernels import resolve_backend

    cfg = dict(device="cpu", dtype=torch.float32, head_dim=64)
    with pytest.raises(UsageError, match=r"backend .flashinfer. cannot serve this run: .*device .cpu. not supported"):
        resolve_backend("flashinfer", **cfg)
    assert resolve_backend("auto", **cfg).name == "torch"
