"""What every Triton kernel module needs from Triton itself: the optional import, the interpreter check and
the JIT wrapping that follows the mode Triton was imported in.

Why one module: Triton is optional (the torch paths serve every device without it), and it fixes
interpreter or compiled mode once, when first imported, from ``TRITON_INTERPRET``. Each kernel module must
agree with that mode, not with the environment at its own import, so they all ask here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    tl = None
    HAVE_TRITON = False

__all__ = ["HAVE_TRITON", "interpreter_enabled", "jit", "jit_helpers", "tl", "triton"]


def interpreter_enabled() -> bool:
    """Whether Triton runs in interpreter mode (CPU emulation) in this process.

    Triton fixes the mode when it is first imported, from ``TRITON_INTERPRET``: its own library
    functions (``tl.zeros``, ``tl.sum``...) are then either compiled or interpreted. So the mode is read
    off the imported library, not from the environment, which may have changed since.
    """
    if not HAVE_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def jit_helpers(namespace: dict[str, Any], names: tuple[str, ...]) -> None:
    """Replace the device functions ``names`` in a module's ``namespace`` by their JIT wrappers (compiled mode).

    Why: the compiler resolves a kernel's helper calls by name in the kernel's module globals, and needs
    them as ``JITFunction`` objects there; the interpreter calls them as plain Python. Already wrapped
    helpers are left alone, so a module may call this on every first launch.
    """
    from triton.runtime.jit import JITFunction

    for name in names:
        if not isinstance(namespace[name], JITFunction):
            namespace[name] = JITFunction(namespace[name])


@functools.cache
def jit(fn: Callable[..., Any]) -> Any:
    """``fn`` wrapped for the mode triton was imported in (compiled, or interpreted on CPU tensors).

    Why not ``@triton.jit`` at import: the decorator reads ``TRITON_INTERPRET`` when the kernel's module is
    imported, which can disagree with the mode triton itself was imported in.
    """
    if interpreter_enabled():
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn)
    from triton.runtime.jit import JITFunction

    return JITFunction(fn)
