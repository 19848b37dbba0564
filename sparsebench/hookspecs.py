"""Pluggy hook specifications: how policies and backends enter sparsebench.

A plugin is any importable module or object with functions marked ``@hookimpl``; a package publishes
one by declaring an entry point in group ``sparsebench`` (see ``examples/``). The built-in policies
register through the very same entry point (``sparsebench.policies``).

The hooks are called once, when the plugin manager is built; they return classes. The per-step,
per-layer work happens in ``Policy.select`` and ``AttentionBackend.attend``, called directly, because a
pluggy dispatch on the hot path would cost more than a small policy's selection.

Versioning: ``HOOKSPEC_VERSION`` is ``MAJOR.MINOR``. A policy class may set ``api_version``; a policy
built for another MAJOR is rejected with a warning naming its package. MINOR bumps only add optional
fields to :class:`~sparsebench.policy.SelectionContext`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sparsebench.kernels.base import AttentionBackend
    from sparsebench.policy import Policy

PROJECT = "sparsebench"
HOOKSPEC_VERSION = "1.0"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class SparsebenchSpec:
    """The hooks a plugin may implement (all optional)."""

    @hookspec
    def sparsebench_policies(self) -> list[type[Policy]]:
        """Return the policy classes this plugin provides (subclasses of ``sparsebench.Policy``)."""

    @hookspec
    def sparsebench_backends(self) -> list[type[AttentionBackend]]:
        """Return the attention backend classes this plugin provides."""
