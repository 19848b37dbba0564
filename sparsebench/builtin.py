"""The built-in plugin. It registers through the ``sparsebench`` entry point exactly as a third-party
package does (see ``pyproject.toml``), so built-ins get no special path."""

from __future__ import annotations

from sparsebench.hookspecs import hookimpl


@hookimpl
def sparsebench_policies() -> list[type]:
    from sparsebench.policies import Dense, OracleTopP, Quest, SpecAttn, StreamingLLM

    return [Dense, StreamingLLM, Quest, SpecAttn, OracleTopP]


@hookimpl
def sparsebench_backends() -> list[type]:
    from sparsebench.kernels.cuda_backend import CudaBackend
    from sparsebench.kernels.flashinfer_backend import FlashInferBackend
    from sparsebench.kernels.torch_backend import TorchBackend
    from sparsebench.kernels.triton_backend import TritonBackend

    return [CudaBackend, FlashInferBackend, TorchBackend, TritonBackend]
