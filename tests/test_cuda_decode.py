"""The NVRTC-compiled cp.async decode kernel (``cuda`` backend) against the torch backend.

CPU: the scope checks (what the kernel refuses, in one line, and that the backend hands it to the Triton
kernel), the configuration checks, and that the backend says why it is unavailable without CUDA. GPU
(skipped without CUDA): bf16 and fp16 over GQA groups 1-8, head dims 64/128/256, static-cache slices,
``kv_len``, soft-capping and nearly empty selections against the torch backend; a CUDA-graph replay after the
selection and cache change in place; calls outside the kernel's scope (several query rows, float32, a group
of 16) served by the Triton kernel through the same backend.
"""

from __future__ import annotations

import pytest
import torch
from test_triton_backend import GPU_SHAPES, check_graph_replay, gpu_case, rel_err, torch_backend

from sparsebench.errors import UsageError
from sparsebench.kernels.cuda_backend import CudaBackend
from sparsebench.kernels.cuda_decode import (
    CudaKernelConfig,
    cuda_unavailable_reason,
    sparse_decode_cuda,
    unsupported_reason,
)
from sparsebench.selection import Selection

HAVE_CUDA = torch.cuda.is_available()


def tensors(b: int = 1, hq: int = 8, hkv: int = 2, q_rows: int = 1, t: int = 64, d: int = 128,
            dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.zeros(b, hq, q_rows, d, dtype=dtype), torch.zeros(b, hkv, t, d, dtype=dtype),
            torch.zeros(b, hkv, t, d, dtype=dtype))


@pytest.mark.parametrize(("kwargs", "block", "per_row", "words"), [
    (dict(q_rows=3), 16, False, "3 query rows"),
    (dict(), 16, True, "query rows"),
    (dict(dtype=torch.float32), 16, False, "float16 or bfloat16"),
    (dict(hq=14, hkv=2), 16, False, "14 query heads over 2 kv heads"),
    (dict(hq=32, hkv=2), 16, False, "groups of"),
    (dict(d=96), 16, False, "head dim 96"),
    (dict(), 24, False, "block size 24"),
])
def test_out_of_scope_calls_say_why(kwargs: dict, block: int, per_row: bool, words: str) -> None:
    q, k, v = tensors(**kwargs)
    why = unsupported_reason(q, k, v, block_size=block, per_row=per_row)
    assert why is not None and words in why


def test_rows_too_long_for_the_kernel_say_why() -> None:
    from sparsebench.kernels.cuda_decode import MAX_IDS, MAX_SPLITS

    q = torch.zeros(1, 8, 1, 64, dtype=torch.bfloat16)
    kv = torch.zeros(1, 2, 1, 64, dtype=torch.bfloat16).expand(1, 2, 16 * MAX_SPLITS * MAX_IDS + 1, 64)
    why = unsupported_reason(q, kv, kv, block_size=16, per_row=False)
    assert why is not None and f"at most {MAX_SPLITS * MAX_IDS}" in why
    assert unsupported_reason(q, kv[:, :, :-1], kv[:, :, :-1], block_size=16, per_row=False) is None


def test_in_scope_and_layout_checks() -> None:
    q, k, v = tensors()
    assert unsupported_reason(q, k, v, block_size=16, per_row=False) is None
    kt = torch.zeros(1, 64, 2, 128, dtype=torch.bfloat16).transpose(1, 2)  # [B, T, H, D] storage: rows still aligned
    assert unsupported_reason(q, kt, kt, block_size=16, per_row=False) is None
    odd = torch.zeros(1, 2, 64, 130, dtype=torch.bfloat16)[..., :128]  # rows of 130 elements: not 16-byte aligned
    assert "multiples of 8" in unsupported_reason(q, odd, odd, block_size=16, per_row=False)
    strided = torch.zeros(1, 2, 64, 256, dtype=torch.bfloat16)[..., ::2]
    assert "contiguous in its last dim" in unsupported_reason(q, strided, strided, block_size=16, per_row=False)


@pytest.mark.skipif(HAVE_CUDA, reason="checks the message on a machine without CUDA")
def test_without_cuda_the_backend_says_why() -> None:
    assert "no CUDA device" in cuda_unavailable_reason()
    assert CudaBackend.unavailable_reason() is not None
    q, k, v = tensors()
    idx = torch.zeros(1, 2, 4, dtype=torch.int32)
    with pytest.raises(Exception, match="CUDA"):
        sparse_decode_cuda(q, k, v, idx, torch.zeros(1, 2, dtype=torch.int32), block_size=16, scaling=1.0)


@pytest.mark.parametrize(("cfg", "words"), [
    (CudaKernelConfig(stages=1), "stages must be >= 2"),
    (CudaKernelConfig(tile_blocks=3), "power of two"),
    (CudaKernelConfig(tile_blocks=16, stages=8), "shared memory"),
])
def test_bad_configs_are_refused(cfg: CudaKernelConfig, words: str) -> None:
    from sparsebench.kernels.cuda_decode import _check_config, default_cuda_config

    base = default_cuda_config(128, 16)
    full = CudaKernelConfig(tile_blocks=cfg.tile_blocks or base.tile_blocks, stages=cfg.stages or base.stages)
    with pytest.raises(UsageError, match=words):
        _check_config(full, 4, 128, 16)


# ---------------------------------------------------------------------------------------------
# GPU


def cuda_attend(case: dict, config: CudaKernelConfig | None = None):
    return CudaBackend(config).attend(case["q"], case["k"], case["v"], Selection(case["mask"]), block_size=16,
                                      scaling=case["scaling"], softcap=case["softcap"], kv_len=case["kv_len"])


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=[f"T{s[0]}-B{s[1]}-H{s[2]}x{s[3]}-D{s[4]}" for s in GPU_SHAPES])
def test_gpu_matches_torch(shape: tuple[int, int, int, int, int]) -> None:
    n_tokens, b, hkv, group, d = shape
    gen = torch.Generator().manual_seed(n_tokens)
    for softcap, kv_len, keep, spare, dtype in ((None, False, 0.22, 0, torch.bfloat16),
                                                (50.0, True, 0.5, 64, torch.float16),
                                                (None, True, 1.0, 16, torch.bfloat16),
                                                (None, False, 0.02, 0, torch.bfloat16)):
        case = gpu_case(gen, n_tokens=n_tokens, b=b, hkv=hkv, group=group, d=d, keep=keep, kv_len=kv_len,
                        dtype=dtype, spare=spare)
        case["softcap"] = softcap
        ref = torch_backend(case)
        res = cuda_attend(case)
        ctx = f"{shape} softcap={softcap} kv_len={kv_len} keep={keep} spare={spare} {dtype}"
        assert res.out.dtype == dtype, ctx
        assert rel_err(res.out, ref.out) < 1e-2, f"{ctx}: rel err {rel_err(res.out, ref.out):.2e}"
        assert torch.equal(res.tokens_read, ref.tokens_read), ctx


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("cfg", [CudaKernelConfig(tile_blocks=1, stages=2, splits=1),
                                 CudaKernelConfig(tile_blocks=4, stages=3, programs_per_sm=4),
                                 CudaKernelConfig(tile_blocks=2, stages=6, splits=7)], ids=str)
def test_gpu_configs(cfg: CudaKernelConfig) -> None:
    gen = torch.Generator().manual_seed(1)
    case = gpu_case(gen, n_tokens=9000, b=2, hkv=8, group=4, d=128, keep=0.3, kv_len=True, dtype=torch.bfloat16)
    case["softcap"] = None
    ref = torch_backend(case)
    res = cuda_attend(case, cfg)
    assert rel_err(res.out, ref.out) < 1e-2 and torch.equal(res.tokens_read, ref.tokens_read)


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
def test_gpu_graph_replay() -> None:
    """plan + run captured once replay correctly after the cache, selection, kv_len and query change in place."""
    check_graph_replay(CudaBackend(), torch.Generator().manual_seed(2))


@pytest.mark.gpu
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(("dtype", "q_rows", "group"), [(torch.float32, 1, 4), (torch.bfloat16, 3, 4),
                                                        (torch.bfloat16, 1, 16)])
def test_gpu_out_of_scope_calls_run_on_triton(dtype: torch.dtype, q_rows: int, group: int) -> None:
    gen = torch.Generator().manual_seed(3)
    case = gpu_case(gen, n_tokens=3000, b=2, hkv=2, group=group, d=128, keep=0.4, kv_len=False, dtype=dtype,
                    q_rows=q_rows)
    case["softcap"] = None
    ref = torch_backend(case)
    res = cuda_attend(case)
    assert rel_err(res.out, ref.out) < (1e-4 if dtype == torch.float32 else 1e-2)
    assert torch.equal(res.tokens_read, ref.tokens_read)
