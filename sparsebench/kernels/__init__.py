"""Attention backends (the backend contract lives in :mod:`sparsebench.kernels.base`) and kernels."""

from __future__ import annotations

import torch

from sparsebench.errors import UsageError
from sparsebench.kernels.base import AttendResult, AttentionBackend, AttentionPlan, Capabilities

__all__ = ["AttendResult", "AttentionBackend", "AttentionPlan", "Capabilities", "resolve_backend"]

#: Preference order of ``--backend auto`` (fastest first, by ``sparsebench bench attention`` on an H200:
#: the Triton kernel reads its selection on the device, while FlashInfer's sparse path pays a host-side
#: ``plan()`` of 0.4-0.8 ms per call); names not registered are skipped.
AUTO_ORDER = ("triton", "flashinfer", "torch")


def resolve_backend(
    name: str, *, device: torch.device | str, dtype: torch.dtype, head_dim: int, softcap: bool = False
) -> AttentionBackend:
    """Instantiate backend ``name`` (or the first usable one for ``auto``) for this configuration."""
    from sparsebench.plugins import registry

    reg = registry()
    cfg = dict(device=device, dtype=dtype, head_dim=head_dim, softcap=softcap)
    if name != "auto":
        cls = reg.backend_class(name)
        reasons = cls.reasons_to_reject(**cfg)
        if reasons:
            raise UsageError(f"backend {name!r} cannot serve this run: {'; '.join(reasons)}; "
                             "use --backend auto or --backend torch")
        return cls()
    ordered = [reg.backends[n] for n in AUTO_ORDER if n in reg.backends]
    ordered += [c for n, c in sorted(reg.backends.items()) if n not in AUTO_ORDER]
    rejected = []
    for cls in ordered:
        reasons = cls.reasons_to_reject(**cfg)
        if not reasons:
            return cls()
        rejected.append(f"{cls.name}: {'; '.join(reasons)}")
    raise UsageError("no attention backend can serve this run (" + " | ".join(rejected) + ")")
