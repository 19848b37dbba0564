"""The plugin manager: built-in and third-party policies and backends, loaded the same way.

Every installed distribution that declares an entry point in group ``sparsebench`` is imported and
registered with pluggy. A plugin that fails to import, has a hook with a wrong signature, or returns
something that is not a policy class, produces one warning naming its package; every other plugin
keeps working.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType
from typing import Any

import pluggy

from sparsebench.errors import UsageError
from sparsebench.hookspecs import HOOKSPEC_VERSION, PROJECT, SparsebenchSpec
from sparsebench.policy import Policy

ENTRY_POINT_GROUP = "sparsebench"
BUILTIN_MODULE = "sparsebench.builtin"


class PluginWarning(UserWarning):
    """A plugin could not be loaded or returned something unusable."""


@dataclass
class Registry:
    """What the plugins provide: policy and backend classes by name, with their source package."""

    policies: dict[str, type[Policy]] = field(default_factory=dict)
    backends: dict[str, type] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    """``"policy:NAME"`` / ``"backend:NAME"`` -> distribution name (``sparsebench`` for built-ins)."""

    def policy_class(self, name: str) -> type[Policy]:
        try:
            return self.policies[name]
        except KeyError:
            raise UsageError(_unknown("policy", name, self.policies, "sparsebench policies")) from None

    def backend_class(self, name: str) -> type:
        try:
            return self.backends[name]
        except KeyError:
            raise UsageError(_unknown("backend", name, self.backends, "--backend auto")) from None


def _unknown(kind: str, name: str, known: dict[str, Any], hint: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    suggestion = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {kind} {name!r}; {suggestion}known: {', '.join(sorted(known))} (see `{hint}`)"


def _warn(package: str, what: str) -> None:
    warnings.warn(f"sparsebench plugin from package {package!r} {what}; skipping it", PluginWarning, stacklevel=3)


def build_plugin_manager(extra: list[ModuleType | object] | None = None) -> tuple[pluggy.PluginManager, dict]:
    """Register every entry-point plugin (and ``extra`` ones, for tests); return the manager and a map
    plugin -> distribution name."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(SparsebenchSpec)
    owners: dict[int, str] = {}
    candidates: list[tuple[str, str, Any]] = []
    seen_builtin = False
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        package = ep.dist.name if ep.dist is not None else ep.value
        seen_builtin |= ep.value == BUILTIN_MODULE
        candidates.append((package, ep.name, ep))
    if not seen_builtin:
        # Running from a source tree that was never installed: register the built-ins by module,
        # through the same hook path as any plugin.
        candidates.insert(0, ("sparsebench", "builtin", BUILTIN_MODULE))
    for package, ep_name, source in candidates:
        try:
            plugin = importlib.import_module(source) if isinstance(source, str) else source.load()
        except Exception as exc:  # a broken plugin must not take the others down
            _warn(package, f"failed to import (entry point {ep_name!r}: {type(exc).__name__}: {exc})")
            continue
        _register(pm, plugin, package, owners)
    for plugin in extra or []:
        _register(pm, plugin, getattr(plugin, "__name__", type(plugin).__name__), owners)
    return pm, owners


def _register(pm: pluggy.PluginManager, plugin: Any, package: str, owners: dict[int, str]) -> None:
    if pm.is_registered(plugin):
        return
    try:
        pm.register(plugin, name=f"{package}:{getattr(plugin, '__name__', id(plugin))}")
    except Exception as exc:  # pluggy.PluginValidationError: wrong hook signature, unknown hook
        _warn(package, f"has an invalid hook ({type(exc).__name__}: {exc})")
        return
    owners[id(plugin)] = package


def _collect(pm: pluggy.PluginManager, owners: dict[int, str]) -> Registry:
    registry = Registry()
    for hook_name, base, target, kind in (
        ("sparsebench_policies", Policy, registry.policies, "policy"),
        ("sparsebench_backends", None, registry.backends, "backend"),
    ):
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            package = owners.get(id(impl.plugin), impl.plugin_name)
            try:
                classes = impl.function()
            except Exception as exc:
                _warn(package, f"raised in {hook_name} ({type(exc).__name__}: {exc})")
                continue
            for cls in classes or []:
                problem = _check_class(cls, base)
                if problem:
                    _warn(package, f"returned an unusable {kind} {cls!r}: {problem}")
                    continue
                if cls.name in target:
                    _warn(package, f"registers {kind} {cls.name!r}, already provided by "
                                   f"{registry.sources[f'{kind}:{cls.name}']!r}")
                    continue
                target[cls.name] = cls
                registry.sources[f"{kind}:{cls.name}"] = package
    return registry


def _check_class(cls: Any, base: type | None) -> str | None:
    if not isinstance(cls, type):
        return "not a class"
    if base is not None and not issubclass(cls, base):
        return f"not a subclass of {base.__module__}.{base.__name__}"
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        return "no `name`"
    if base is Policy:
        major = str(getattr(cls, "api_version", HOOKSPEC_VERSION)).split(".")[0]
        if major != HOOKSPEC_VERSION.split(".")[0]:
            return f"built for hook spec {cls.api_version}, this sparsebench speaks {HOOKSPEC_VERSION}"
        try:
            cls.param_specs()
        except TypeError as exc:
            return str(exc)
    return None


def load_registry(extra: list[ModuleType | object] | None = None) -> Registry:
    """Build a fresh registry (tests pass ``extra`` plugin objects)."""
    pm, owners = build_plugin_manager(extra)
    return _collect(pm, owners)


@functools.cache
def registry() -> Registry:
    """The process-wide registry (plugins are loaded once)."""
    return load_registry()


def make_policy(name: str, params: dict[str, Any] | None = None) -> Policy:
    """Instantiate policy ``name`` with validated parameters."""
    return registry().policy_class(name).from_params(params or {})
