"""The full configuration of one evaluation run (every field goes into every results row)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sparsebench.errors import UsageError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

DEFAULT_MODEL = "smollm2-135m"
PAPER_SETUP = "--seq-len 2048 --prefill-frac 0.1 --docs 20 --block-size 16"


@dataclass
class RunConfig:
    policy: str
    policy_params: dict[str, Any] = field(default_factory=dict)
    model: str = DEFAULT_MODEL
    draft: str | None = None
    """Draft for policies that need one (``self:SPEC`` or a model); None: the model's default self-draft."""
    dataset: str = "pg19"
    data_dir: str | None = None
    data_source: str = "auto"
    seq_len: int = 768
    prefill_frac: float = 0.1
    docs: int = 1
    batch_size: int = 1
    """Documents decoded together (same length, so no padding); rows stay one per document."""
    block_size: int = 16
    dense_layers: int = 2
    device: str = "cpu"
    dtype: str | None = None
    backend: str = "auto"
    seed: int = 0
    out: str | None = None

    def __post_init__(self) -> None:
        if self.seq_len < 3:
            raise UsageError(f"--seq-len must be >= 3, got {self.seq_len}")
        if self.docs < 1:
            raise UsageError(f"--docs must be >= 1, got {self.docs}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype!r} unknown; choose one of {', '.join(DTYPES)}")

    def torch_dtype(self) -> torch.dtype:
        """``--dtype``, or fp32 on the CPU (exact) and bf16 on a GPU when not given."""
        if self.dtype is not None:
            return DTYPES[self.dtype]
        return torch.float32 if torch.device(self.device).type == "cpu" else torch.bfloat16

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """Parse ``--device`` and check it exists here, with an actionable error."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was given but CUDA is not available on this machine "
                             "(no GPU or a CPU-only torch build); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type not in {"cpu", "mps", "xpu"}:
        raise UsageError(f"--device {name!r} is not supported; use cpu or cuda")
    return device
